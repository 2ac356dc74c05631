// SOP GroupSelect (You et al., "Sum-of-Parts Models", §3; SPEC §6), CPU kernel, per example b:
//   y[g, c] = W[c] . z[slot[g]] + bias[c]        the partial logits of group g
//   s[c, g] = Q[c] . z[slot[g]]                  the group scores (Q: the class queries folded with W_k')
//   p[c, :] = sparsemax(s[c, :])                 over the groups, with the sparsemax kernel's threshold
//   logits[c] = sum_g p[c, g] y[g, c]
// The products are made once per row of z that a group reads (groups may share rows), four dot products at
// a time, accumulated in T (vectorised); the sum over groups in index order. Scores with NaN or +inf
// (or all -inf) give a NaN row, as sparsemax. Returns the number of slots outside [0, N) (then nothing is valid).
#include <algorithm>
#include <limits>
#include <vector>

#include "common.h"
#include "sparsemax.h"

namespace fastattr {
namespace {

// out[j] = A[j] . v for the `count` rows of A (each n long): four dot products per pass over v, so their
// four accumulations run side by side instead of one after another.
template <typename T>
inline __attribute__((always_inline)) void dots(const T* A, const T* v, T* out, int64_t count, int64_t n) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const T* a0 = A + j * n;
    const T* a1 = a0 + n;
    const T* a2 = a1 + n;
    const T* a3 = a2 + n;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t k = 0; k < n; ++k) {
      s0 += a0[k] * v[k];
      s1 += a1[k] * v[k];
      s2 += a2[k] * v[k];
      s3 += a3[k] * v[k];
    }
    out[j] = s0;
    out[j + 1] = s1;
    out[j + 2] = s2;
    out[j + 3] = s3;
  }
  for (; j < count; ++j) {
    const T* a = A + j * n;
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < n; ++k) acc += a[k] * v[k];
    out[j] = acc;
  }
}

// The partial logits and the scores of one row of z: ys[0, C) = W z + bias, ys[C, 2C) = Q z.
template <typename T>
FASTATTR_MULTIVERSION void row_products(const T* row, const T* W, const T* bias, const T* Q, T* ys, int64_t C,
                                        int64_t h) {
  dots(W, row, ys, C, h);
  if (bias) {
    for (int64_t c = 0; c < C; ++c) ys[c] += bias[c];
  }
  dots(Q, row, ys + C, C, h);
}

// Per example: the groups' products gathered from ys (2C per used row, the groups' rows at[g]), sparsemax
// over the groups, logits.
template <typename T>
FASTATTR_MULTIVERSION void select_example(const T* ys, const int64_t* at, T* p, T* y, T* logits, int64_t G,
                                          int64_t C, std::vector<T>& s, std::vector<double>& cand) {
  s.resize(static_cast<size_t>(C * G));
  for (int64_t g = 0; g < G; ++g) {
    const T* row = ys + at[g] * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      y[g * C + c] = row[c];
      s[c * G + g] = row[C + c];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const T* sc = s.data() + c * G;
    T m;
    const T t = static_cast<T>(sparsemax_threshold(sc, G, m, cand));
    bool nan_row = m == std::numeric_limits<T>::infinity() || m == -std::numeric_limits<T>::infinity();
    for (int64_t g = 0; g < G; ++g) nan_row |= sc[g] != sc[g];
    if (nan_row) {  // as the sparsemax kernel: scores with NaN or +inf, or all -inf, give a NaN row
      for (int64_t g = 0; g < G; ++g) p[c * G + g] = std::numeric_limits<T>::quiet_NaN();
      logits[c] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    T total = 0;
    for (int64_t g = 0; g < G; ++g) {
      const T d = (sc[g] - m) - t;
      const T pg = d > T(0) ? d : T(0);
      p[c * G + g] = pg;
      total += pg * y[g * C + c];
    }
    logits[c] = total;
  }
}

}  // namespace

int64_t group_select(std::uintptr_t z, std::uintptr_t slot, std::uintptr_t weight, std::uintptr_t bias,
                     std::uintptr_t query, std::uintptr_t p, std::uintptr_t y, std::uintptr_t logits, int64_t batch,
                     int64_t N, int64_t G, int64_t C, int64_t h, const std::string& dtype, int n_threads) {
  const int64_t* sl = as_ptr<const int64_t>(slot);
  int64_t bad = 0;
  for (int64_t i = 0; i < batch * G; ++i) bad += sl[i] < 0 || sl[i] >= N;
  if (bad) return bad;
  // The rows of z some group reads, each multiplied once however many groups share it: used[r] is the
  // r-th of them and at[b * G + g] the index r of the row group g of example b reads.
  // A table over z's rows when z is not much longer than the slots; otherwise (few groups reading a long z)
  // the sorted distinct slots, found by binary search, so the cost follows the groups, not z.
  std::vector<int64_t> used, at(static_cast<size_t>(batch * G));
  if (N <= 4 * batch * G) {
    std::vector<int64_t> index(static_cast<size_t>(N), -1);
    for (int64_t i = 0; i < batch * G; ++i) {
      int64_t& r = index[sl[i]];
      if (r < 0) {
        r = static_cast<int64_t>(used.size());
        used.push_back(sl[i]);
      }
      at[i] = r;
    }
  } else {
    used.assign(sl, sl + batch * G);
    std::sort(used.begin(), used.end());
    used.erase(std::unique(used.begin(), used.end()), used.end());
    for (int64_t i = 0; i < batch * G; ++i) at[i] = std::lower_bound(used.begin(), used.end(), sl[i]) - used.begin();
  }
  const int64_t rows = static_cast<int64_t>(used.size());
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* zz = as_ptr<const T>(z);
    const T* W = as_ptr<const T>(weight);
    const T* bb = bias ? as_ptr<const T>(bias) : nullptr;
    const T* Q = as_ptr<const T>(query);
    T* pp = as_ptr<T>(p);
    T* yy = as_ptr<T>(y);
    T* ll = as_ptr<T>(logits);
    std::vector<T> ys(static_cast<size_t>(rows * 2 * C));
    parallel_rows(rows, 2 * C * h, n_threads, [&](int64_t r) {
      row_products(zz + used[r] * h, W, bb, Q, ys.data() + r * 2 * C, C, h);
    });
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(batch, G * C * 8, n_threads))
#endif
    {
      std::vector<T> s;
      std::vector<double> cand;
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t b = 0; b < batch; ++b) {
        select_example(ys.data(), at.data() + b * G, pp + b * C * G, yy + b * G * C, ll + b * C, G, C, s, cand);
      }
    }
  });
  return 0;
}

}  // namespace fastattr
