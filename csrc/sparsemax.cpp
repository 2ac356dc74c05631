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

namespace fastattr {
namespace {

// `omp simd reduction` lets the compiler vectorize max / sum reductions without -ffast-math,
// which would break the NaN semantics (the NaN / +inf check is its own exact reduction).
template <typename T>
FASTATTR_MULTIVERSION void forward_row(const T* z, T* p, int64_t n, std::vector<double>& cand) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  T m = -inf;  // NaN never wins `v > m`; a NaN is caught in the write pass instead
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
  if (m == inf || m == -inf) {  // a +inf entry, or nothing but -inf / NaN
    for (int64_t i = 0; i < n; ++i) p[i] = nan;
    return;
  }
  // Work relative to the max (exact for nearby values), so huge magnitudes keep their spacing.
  // Candidates: z - max >= -1, the only entries that can be in the support.
  constexpr int64_t B = 64 / sizeof(T);
  cand.clear();
  double sum = 0.0;
  for (int64_t i = 0; i < n; i += B) {
    const int64_t stop = i + B < n ? i + B : n;
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t j = i; j < stop; ++j) any |= (z[j] - m) >= T(-1);
    if (!any) continue;
    for (int64_t j = i; j < stop; ++j) {
      const T v = z[j] - m;
      if (v >= T(-1)) {
        cand.push_back(static_cast<double>(v));
        sum += static_cast<double>(v);
      }
    }
  }
  // Michelot's iteration on the candidates: a superset of the support gives tau <= tau*.
  size_t k = cand.size();
  double tau = (sum - 1.0) / static_cast<double>(k);
  for (;;) {
    size_t kept = 0;
    double kept_sum = 0.0;
    for (size_t j = 0; j < k; ++j) {
      const double v = cand[j];
      if (v > tau) {
        cand[kept++] = v;
        kept_sum += v;
      }
    }
    if (kept == k || kept == 0) break;
    k = kept;
    tau = (kept_sum - 1.0) / static_cast<double>(k);
  }
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
    for (int64_t i = 0; i < n; ++i) p[i] = nan;
  }
}

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
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (n_threads > 1 && rows > 1)
#endif
    {
      std::vector<double> cand;
      cand.reserve(static_cast<size_t>(cols < 4096 ? cols : 4096));
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t r = 0; r < rows; ++r) forward_row(z + r * cols, p + r * cols, cols, cand);
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
    parallel_rows(rows, n_threads, [&](int64_t r) {
      backward_row(pp + r * cols, gg + r * cols, dz + r * cols, cols);
    });
  });
}

}  // namespace fastattr
