// DeepLift's rescale multipliers (Shrikumar et al. 2017), CPU kernels: each one pass over a layer's input in
// place of torch's chain of elementwise ops, the same IEEE operations in the same order (bit for bit).
//
// Rows r of the inputs pair with baseline row r mod base_rows (one baseline row broadcast, or tiled).
//
// rescale:  out[i] = grad[i] · (y[i] − y'[i]) / (x[i] − x'[i]); returns the count of |x[i] − x'[i]| < eps, where
//           the caller puts the module's own gradient.
// max pool: per plane, with m = max(y, y') per window, grad · (m − y') added at the input's argmax, then
//           grad · (y − m) at the baseline's argmax (torch's scatter_add_ order), divided by Δx; where
//           |Δx| < eps, the pool's own gradient (grad summed at the input's argmax). Returns −1 (nothing
//           written that the caller keeps) when an index lies outside its plane.
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace fastattr {

namespace {

template <typename T>
FASTATTR_MULTIVERSION int64_t rescale_row(const T* g, const T* x, const T* y, const T* xb, const T* yb, T* out,
                                          int64_t d, T eps) {
  int64_t small = 0;
  for (int64_t i = 0; i < d; ++i) {
    const T dx = x[i] - xb[i];
    const T dy = y[i] - yb[i];
    out[i] = g[i] * dy / dx;
    small += std::abs(dx) < eps;
  }
  return small;
}

template <typename T>
inline T nan_max(T a, T b) {
  return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : (a > b ? a : b);
}

}  // namespace

int64_t deeplift_rescale(std::uintptr_t grad, std::uintptr_t x, std::uintptr_t y, std::uintptr_t xb,
                         std::uintptr_t yb, std::uintptr_t out, int64_t rows, int64_t per_row, int64_t base_rows,
                         double eps, const std::string& dtype, int n_threads) {
  std::vector<int64_t> small(rows, 0);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T *g = as_ptr<const T>(grad), *px = as_ptr<const T>(x), *py = as_ptr<const T>(y);
    const T *pxb = as_ptr<const T>(xb), *pyb = as_ptr<const T>(yb);
    T* o = as_ptr<T>(out);
    parallel_rows(rows, per_row, n_threads, [&](int64_t r) {
      const int64_t at = r * per_row, base = (r % base_rows) * per_row;
      small[r] = rescale_row(g + at, px + at, py + at, pxb + base, pyb + base, o + at, per_row, T(eps));
    });
  });
  int64_t total = 0;
  for (int64_t s : small) total += s;
  return total;
}

int64_t deeplift_maxpool(std::uintptr_t grad, std::uintptr_t y, std::uintptr_t yb, std::uintptr_t index,
                         std::uintptr_t index_b, std::uintptr_t x, std::uintptr_t xb, std::uintptr_t out,
                         int64_t planes, int64_t channels, int64_t base_rows, int64_t O, int64_t HW, double eps,
                         const std::string& dtype, int n_threads) {
  std::vector<char> bad(planes, 0);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T *g = as_ptr<const T>(grad), *py = as_ptr<const T>(y), *pyb = as_ptr<const T>(yb);
    const T *px = as_ptr<const T>(x), *pxb = as_ptr<const T>(xb);
    const int64_t *ix = as_ptr<const int64_t>(index), *ixb = as_ptr<const int64_t>(index_b);
    T* o = as_ptr<T>(out);
    parallel_rows(planes, HW + 3 * O, n_threads, [&](int64_t p) {
      thread_local std::vector<T> local;
      const int64_t bp = ((p / channels) % base_rows) * channels + p % channels;
      const T *gp = g + p * O, *yp = py + p * O, *ybp = pyb + bp * O;
      const int64_t *at = ix + p * O, *atb = ixb + bp * O;
      T* pooled = o + p * HW;
      for (int64_t i = 0; i < HW; ++i) pooled[i] = T(0);
      for (int64_t k = 0; k < O; ++k) {
        if (at[k] < 0 || at[k] >= HW || atb[k] < 0 || atb[k] >= HW) {
          bad[p] = 1;
          return;
        }
      }
      for (int64_t k = 0; k < O; ++k) pooled[at[k]] += gp[k] * (nan_max(yp[k], ybp[k]) - ybp[k]);
      for (int64_t k = 0; k < O; ++k) pooled[atb[k]] += gp[k] * (yp[k] - nan_max(yp[k], ybp[k]));
      const T *xp = px + p * HW, *xbp = pxb + bp * HW;
      bool any_small = false;
      for (int64_t i = 0; i < HW; ++i) {
        const T dx = xp[i] - xbp[i];
        any_small |= std::abs(dx) < T(eps);
        pooled[i] = pooled[i] / dx;
      }
      if (!any_small) return;
      local.assign(HW, T(0));
      for (int64_t k = 0; k < O; ++k) local[at[k]] += gp[k];
      for (int64_t i = 0; i < HW; ++i) {
        if (std::abs(xp[i] - xbp[i]) < T(eps)) pooled[i] = local[i];
      }
    });
  });
  for (char b : bad) {
    if (b) return -1;
  }
  return 0;
}

}  // namespace fastattr
