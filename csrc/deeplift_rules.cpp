// DeepLift's rescale multipliers (Shrikumar et al. 2017), CPU kernels: each one pass over a layer's input in
// place of torch's chain of elementwise ops, the same IEEE operations in the same order (bit for bit).
//
// Rows r of the inputs pair with baseline row r mod base_rows (one baseline row broadcast, or tiled).
//
// rescale:  out[i] = grad[i] · (y[i] − y'[i]) / (x[i] − x'[i]); where |x[i] − x'[i]| < eps, for a ReLU its own
//           gradient (0 where x[i] <= 0, else grad[i]), for others left to the caller with their count returned.
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
inline T nan_max(T a, T b) {
  return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : (a > b ? a : b);
}

template <typename T>
FASTATTR_MULTIVERSION int64_t rescale_row(const T* g, const T* x, const T* y, const T* xb, const T* yb, T* out,
                                          int64_t d, T eps, bool relu) {
  int64_t small = 0;
  for (int64_t i = 0; i < d; ++i) {
    const T dx = x[i] - xb[i];
    const T dy = y[i] - yb[i];
    out[i] = g[i] * dy / dx;
    small += std::abs(dx) < eps;
  }
  if (!relu || small == 0) return small;
  for (int64_t i = 0; i < d; ++i) {
    if (std::abs(x[i] - xb[i]) < eps) out[i] = x[i] <= T(0) ? T(0) : g[i];  // torch's threshold_backward, NaN too
  }
  return 0;
}

// One plane of the max-pool rule (see the header); false when an index lies outside the plane.
template <typename T>
FASTATTR_MULTIVERSION bool maxpool_plane(const T* g, const T* y, const T* yb, const int64_t* at, const int64_t* atb,
                                         const T* x, const T* xb, T* pooled, T* local, int64_t O, int64_t HW, T eps) {
  for (int64_t k = 0; k < O; ++k) {
    if (at[k] < 0 || at[k] >= HW || atb[k] < 0 || atb[k] >= HW) return false;
  }
  for (int64_t i = 0; i < HW; ++i) pooled[i] = T(0);
  for (int64_t k = 0; k < O; ++k) pooled[at[k]] += g[k] * (nan_max(y[k], yb[k]) - yb[k]);
  for (int64_t k = 0; k < O; ++k) pooled[atb[k]] += g[k] * (y[k] - nan_max(y[k], yb[k]));
  int64_t small = 0;
  for (int64_t i = 0; i < HW; ++i) {
    const T dx = x[i] - xb[i];
    small += std::abs(dx) < eps;
    pooled[i] = pooled[i] / dx;
  }
  if (small == 0) return true;
  for (int64_t i = 0; i < HW; ++i) local[i] = T(0);
  for (int64_t k = 0; k < O; ++k) local[at[k]] += g[k];
  for (int64_t i = 0; i < HW; ++i) {
    if (std::abs(x[i] - xb[i]) < eps) pooled[i] = local[i];
  }
  return true;
}

}  // namespace

int64_t deeplift_rescale(std::uintptr_t grad, std::uintptr_t x, std::uintptr_t y, std::uintptr_t xb,
                         std::uintptr_t yb, std::uintptr_t out, int64_t rows, int64_t per_row, int64_t base_rows,
                         double eps, bool relu, const std::string& dtype, int n_threads) {
  std::vector<int64_t> small(rows, 0);
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T *g = as_ptr<const T>(grad), *px = as_ptr<const T>(x), *py = as_ptr<const T>(y);
    const T *pxb = as_ptr<const T>(xb), *pyb = as_ptr<const T>(yb);
    T* o = as_ptr<T>(out);
    parallel_rows(rows, per_row, n_threads, [&](int64_t r) {
      const int64_t at = r * per_row, base = (r % base_rows) * per_row;
      small[r] = rescale_row(g + at, px + at, py + at, pxb + base, pyb + base, o + at, per_row, T(eps), relu);
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
      local.resize(HW);
      const int64_t bp = ((p / channels) % base_rows) * channels + p % channels;
      if (!maxpool_plane(g + p * O, py + p * O, pyb + bp * O, ix + p * O, ixb + bp * O, px + p * HW, pxb + bp * HW,
                         o + p * HW, local.data(), O, HW, T(eps))) {
        bad[p] = 1;
      }
    });
  });
  for (char b : bad) {
    if (b) return -1;
  }
  return 0;
}

}  // namespace fastattr
