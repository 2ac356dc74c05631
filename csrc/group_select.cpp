// SOP GroupSelect (You et al., "Sum-of-Parts Models", §3; SPEC §6), CPU kernel, per example b:
//   y[g, c] = W[c] . z[slot[g]] + bias[c]        the partial logits of group g
//   s[c, g] = Q[c] . z[slot[g]]                  the group scores (Q: the class queries folded with W_k')
//   p[c, :] = sparsemax(s[c, :])                 over the groups, with the sparsemax kernel's threshold
//   logits[c] = sum_g p[c, g] y[g, c]
// Dot products accumulate in T (vectorised); the sum over groups in index order. Scores with NaN or +inf
// (or all -inf) give a NaN row, as sparsemax. Returns the number of slots outside [0, N) (then nothing is valid).
#include <limits>
#include <vector>

#include "common.h"
#include "sparsemax.h"

namespace fastattr {
namespace {

template <typename T>
inline __attribute__((always_inline)) T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += a[k] * b[k];
  return acc;
}

template <typename T>
FASTATTR_MULTIVERSION void select_example(const T* z, const int64_t* slot, const T* W, const T* bias, const T* Q,
                                          T* p, T* y, T* logits, int64_t G, int64_t C, int64_t h, std::vector<T>& s,
                                          std::vector<double>& cand) {
  s.resize(static_cast<size_t>(C * G));
  for (int64_t g = 0; g < G; ++g) {
    const T* row = z + slot[g] * h;
    for (int64_t c = 0; c < C; ++c) {
      y[g * C + c] = dot(W + c * h, row, h) + (bias ? bias[c] : T(0));
      s[c * G + g] = dot(Q + c * h, row, h);
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
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* zz = as_ptr<const T>(z);
    const T* W = as_ptr<const T>(weight);
    const T* bb = bias ? as_ptr<const T>(bias) : nullptr;
    const T* Q = as_ptr<const T>(query);
    T* pp = as_ptr<T>(p);
    T* yy = as_ptr<T>(y);
    T* ll = as_ptr<T>(logits);
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(batch, 2 * G * C * h, n_threads))
#endif
    {
      std::vector<T> s;
      std::vector<double> cand;
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t b = 0; b < batch; ++b) {
        select_example(zz, sl + b * G, W, bb, Q, pp + b * C * G, yy + b * G * C, ll + b * C, G, C, h, s, cand);
      }
    }
  });
  return 0;
}

}  // namespace fastattr
