// Sparsemax (Martins & Astudillo 2016, "From Softmax to Sparsemax"), CPU kernels.
//
// Forward, per row z of length n:  p_i = max(z_i - tau, 0) with sum_i p_i = 1.
// Sort-free threshold search, relative to m = max z: tau - m lies in [-1, 0), so only entries
// with z_i - m >= -1 can be in the support. Those candidates go into a small buffer, then
// Michelot's iteration runs on it: tau = (sum_{active} z - 1) / |active|, active <- {z > tau},
// until the active set stops shrinking. Every step keeps a superset of the support, tau only
// increases, and the fixed point is the exact tau of the sorted formula. Sums are in double.
// Kernel-level semantics: a row with NaN or +inf, or a row that is all -inf, becomes NaN
// (+inf shows up as the max; NaN, which never enters the candidates, in the write pass).
//
// Backward, with S = {i : p_i > 0}:  dz = (g - mean_{i in S} g_i) * 1_S.
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"
#include "sparsemax.h"

namespace fastattr {
namespace {

// `omp simd reduction` lets the compiler vectorize max / sum reductions without -ffast-math,
// which would break the NaN semantics (the NaN / +inf check is its own exact reduction).
// Per-thread scratch of the forward: the max of every block and the support candidates.
template <typename T>
struct Scratch {
  std::vector<T> block_max;
  std::vector<double> cand;
};

// The candidate bound m - 1, rounded down in T so that no candidate is lost at huge magnitudes.
template <typename T>
inline T candidate_bound(T m) {
  const double lo_d = static_cast<double>(m) - 1.0;
  T lo = static_cast<T>(lo_d);
  if (static_cast<double>(lo) > lo_d) lo = std::nextafter(lo, -std::numeric_limits<T>::infinity());
  return lo;
}

// Appends z[i] - m (exact for nearby values, so huge magnitudes keep their spacing) for every
// z[i] >= lo in [begin, end) to cand[k...], without branches: each entry is written and the count
// grows by the comparison (on short rows the branches of a compaction mispredict more than the
// arithmetic costs). NaN is never a candidate.
template <typename T>
inline int64_t append_candidates(const T* z, int64_t begin, int64_t end, T m, T lo, double* cand, int64_t k) {
  for (int64_t i = begin; i < end; ++i) {
    cand[k] = static_cast<double>(z[i] - m);
    k += z[i] >= lo;
  }
  return k;
}

// Michelot's iteration on k candidates, a superset of the support: tau = (sum of the active - 1) /
// |active|, active <- {v > tau}, until the active set stops shrinking; tau only increases, and the
// fixed point is the exact tau of the sorted formula. Sums in index order, compaction branch-free.
inline double michelot_tau(double* cand, int64_t k) {
  double sum = 0.0;
  for (int64_t j = 0; j < k; ++j) sum += cand[j];
  double tau = (sum - 1.0) / static_cast<double>(k);
  for (;;) {
    int64_t kept = 0;
    double kept_sum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const double v = cand[j];
      const bool in = v > tau;
      cand[kept] = v;
      kept_sum += in ? v : 0.0;
      kept += in;
    }
    if (kept == k || kept == 0) return tau;
    k = kept;
    tau = (kept_sum - 1.0) / static_cast<double>(k);
  }
}

// p = max(z - m - tau, 0); a row holding NaN becomes NaN.
template <typename T>
inline void write_row(const T* z, T* p, int64_t n, T m, double tau) {
  const T t = static_cast<T>(tau);
  int has_nan = 0;
#pragma omp simd reduction(| : has_nan)
  for (int64_t i = 0; i < n; ++i) {
    const T v = z[i];
    const T d = (v - m) - t;
    has_nan |= v != v;
    p[i] = d > T(0) ? d : T(0);
  }
  if (has_nan) {
    for (int64_t i = 0; i < n; ++i) p[i] = std::numeric_limits<T>::quiet_NaN();
  }
}

// The max of a row from an `omp simd reduction(max)`: clang starts each lane at the lowest finite value (GCC at
// -inf), so a row of nothing but -inf / NaN comes out as lowest(); such a max is taken again, exactly.
template <typename T>
inline T exact_max(T m, const T* z, int64_t n) {
  if (m > std::numeric_limits<T>::lowest()) return m;
  m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
  return m;
}

// A +inf entry, or nothing but -inf / NaN (the max is infinite): the row is NaN.
template <typename T>
inline bool nan_row_if_infinite(T m, T* p, int64_t n) {
  if (m != std::numeric_limits<T>::infinity() && m != -std::numeric_limits<T>::infinity()) return false;
  for (int64_t i = 0; i < n; ++i) p[i] = std::numeric_limits<T>::quiet_NaN();
  return true;
}

template <typename T>
FASTATTR_MULTIVERSION void forward_row(const T* z, T* p, int64_t n, Scratch<T>& s) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  constexpr int64_t B = 64 / sizeof(T);  // one cache line per block
  const int64_t full = n / B;
  s.block_max.resize(static_cast<size_t>(full + 1));
  // Pass 1: the max of every block (NaN never wins `v > m`; it is caught in the write pass).
  T m = -inf;
  for (int64_t b = 0; b < full; ++b) {
    T bm = -inf;
#pragma omp simd reduction(max : bm)
    for (int64_t j = 0; j < B; ++j) bm = z[b * B + j] > bm ? z[b * B + j] : bm;
    s.block_max[b] = bm;
    m = bm > m ? bm : m;
  }
  T tail_max = -inf;
  for (int64_t j = full * B; j < n; ++j) tail_max = z[j] > tail_max ? z[j] : tail_max;
  s.block_max[full] = tail_max;
  m = exact_max(tail_max > m ? tail_max : m, z, n);
  if (nan_row_if_infinite(m, p, n)) return;
  // Pass 2: the candidates, read only from blocks whose max reaches the bound.
  const T lo = candidate_bound(m);
  s.cand.resize(static_cast<size_t>(n));
  int64_t k = 0;
  for (int64_t b = 0; b <= full; ++b) {
    if (s.block_max[b] >= lo) k = append_candidates(z, b * B, b < full ? (b + 1) * B : n, m, lo, s.cand.data(), k);
  }
  write_row(z, p, n, m, michelot_tau(s.cand.data(), k));
}

// Rows of at most kSmallRow entries: the candidates on the stack and no block maxima, which on short
// rows (SOP's patch attention, group scores) cost more than the search. The same candidates in the
// same order as forward_row, so the same bits.
constexpr int64_t kSmallRow = 64;

template <typename T>
FASTATTR_MULTIVERSION void forward_row_small(const T* z, T* p, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
  m = exact_max(m, z, n);
  if (nan_row_if_infinite(m, p, n)) return;
  double cand[kSmallRow];
  const int64_t k = append_candidates(z, 0, n, m, candidate_bound(m), cand, 0);
  write_row(z, p, n, m, michelot_tau(cand, k));
}

}  // namespace

template <typename T>
double sparsemax_threshold(const T* z, int64_t n, T& m, std::vector<double>& cand) {
  m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
  cand.resize(static_cast<size_t>(n));
  const int64_t k = append_candidates(z, 0, n, m, candidate_bound(m), cand.data(), 0);
  return michelot_tau(cand.data(), k);
}

template double sparsemax_threshold<float>(const float*, int64_t, float&, std::vector<double>&);
template double sparsemax_threshold<double>(const double*, int64_t, double&, std::vector<double>&);

namespace {

template <typename T>
FASTATTR_MULTIVERSION void backward_row(const T* p, const T* g, T* dz, int64_t n) {
  T sum = 0;
  T count = 0;
#pragma omp simd reduction(+ : sum, count)
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i];
    const bool in = p[i] > T(0);
    sum += in ? gi : T(0);
    count += in ? T(1) : T(0);
  }
  const T mean = count > T(0) ? sum / count : T(0);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i] - mean;
    dz[i] = p[i] > T(0) ? gi : T(0);
  }
}

}  // namespace

void sparsemax_forward(std::uintptr_t x, std::uintptr_t out, int64_t rows, int64_t cols,
                       const std::string& dtype, int n_threads) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* z = as_ptr<const T>(x);
    T* p = as_ptr<T>(out);
    if (cols <= kSmallRow) {
      parallel_rows(rows, cols, n_threads, [&](int64_t r) { forward_row_small(z + r * cols, p + r * cols, cols); });
      return;
    }
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(rows, cols, n_threads))
#endif
    {
      Scratch<T> scratch;
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t r = 0; r < rows; ++r) forward_row(z + r * cols, p + r * cols, cols, scratch);
    }
  });
}

void sparsemax_backward(std::uintptr_t p, std::uintptr_t g, std::uintptr_t out, int64_t rows,
                        int64_t cols, const std::string& dtype, int n_threads) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* pp = as_ptr<const T>(p);
    const T* gg = as_ptr<const T>(g);
    T* dz = as_ptr<T>(out);
    parallel_rows(rows, cols, n_threads, [&](int64_t r) {
      backward_row(pp + r * cols, gg + r * cols, dz + r * cols, cols);
    });
  });
}

}  // namespace fastattr
