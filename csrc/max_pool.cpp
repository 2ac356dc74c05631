// Max pooling over the last two axes of contiguous [planes, H, W] (NCHW) buffers, CPU kernel.
//
// out[p, oh, ow] = max over the window {(ih, iw) = (oh·sH − pH + a·dH, ow·sW − pW + b·dW)} ∩ [0, H) × [0, W)
// and idx[p, oh, ow] = ih·W + iw of that maximum: the first one in row-major window order, a NaN
// wins over every number and a later NaN over an earlier one (torch's max_pool2d_with_indices,
// bit for bit). An empty window gives −inf at the window's first in-range corner.
//
// The backward writes grad_x[p, i] = Σ grad[p, o] over the outputs o whose maximum is at i, plane by plane:
// the plane zeroed, then the outputs added in row-major order (torch's max_pool2d_with_indices_backward
// order, so the same sums bit for bit), without a pass over the whole tensor to zero it first. An index
// outside its plane (torch's forward gives one for a window with no element in range) is skipped: torch's
// backward writes it into the next plane or past the end of the tensor.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"

namespace fastattr {

namespace {

// One output: the window scanned row-major, as torch scans it.
template <typename T>
inline void pool_one(const T* in, T* out, int64_t* idx, int64_t W, int64_t ih0, int64_t ih1, int64_t iw0,
                     int64_t iw1, int64_t dH, int64_t dW) {
  int64_t best = ih0 * W + iw0;
  T value = -std::numeric_limits<T>::infinity();
  for (int64_t ih = ih0; ih < ih1; ih += dH) {
    for (int64_t iw = iw0; iw < iw1; iw += dW) {
      const int64_t i = ih * W + iw;
      const T v = in[i];
      const bool take = (v > value) | (v != v);
      value = take ? v : value;
      best = take ? i : best;
    }
  }
  *out = value;
  *idx = best;
}

// A plane [H, W] into [OH, OW]. Outputs whose window columns all lie inside [0, W) are updated together,
// one window element at a time (independent chains the compiler can vectorise, in the same row-major
// order per output); the few at the edges are scanned one by one.
template <typename T>
FASTATTR_MULTIVERSION void pool_plane(const T* in, T* out, int64_t* idx, int64_t H, int64_t W, int64_t OH,
                                      int64_t OW, int64_t kH, int64_t kW, int64_t sH, int64_t sW, int64_t pH,
                                      int64_t pW, int64_t dH, int64_t dW) {
  const int64_t span = (kW - 1) * dW + 1;
  int64_t lo = 0;
  while (lo < OW && lo * sW - pW < 0) ++lo;
  int64_t hi = lo;
  while (hi < OW && hi * sW - pW + span <= W) ++hi;
  for (int64_t oh = 0; oh < OH; ++oh) {
    int64_t ih0 = oh * sH - pH;
    const int64_t ih1 = std::min(ih0 + (kH - 1) * dH + 1, H);
    while (ih0 < 0) ih0 += dH;
    T* value = out + oh * OW;
    int64_t* best = idx + oh * OW;
    for (int64_t ow = 0; ow < OW; ++ow) {
      if (ow >= lo && ow < hi) continue;
      int64_t iw0 = ow * sW - pW;
      const int64_t iw1 = std::min(iw0 + span, W);
      while (iw0 < 0) iw0 += dW;
      pool_one(in, value + ow, best + ow, W, ih0, ih1, iw0, iw1, dH, dW);
    }
    for (int64_t ow = lo; ow < hi; ++ow) {
      value[ow] = -std::numeric_limits<T>::infinity();
      best[ow] = ih0 * W + ow * sW - pW;
    }
    for (int64_t ih = ih0; ih < ih1; ih += dH) {
      for (int64_t kw = 0; kw < kW; ++kw) {
        const int64_t base = ih * W + kw * dW - pW;
        const T* row = in + base;
#pragma omp simd
        for (int64_t ow = lo; ow < hi; ++ow) {
          const T v = row[ow * sW];
          const bool take = (v > value[ow]) | (v != v);
          value[ow] = take ? v : value[ow];
          best[ow] = take ? base + ow * sW : best[ow];
        }
      }
    }
  }
}

// The common 2×2 window of stride 2 without padding or dilation, unrolled (planes too narrow for the
// row-wise update to pay).
template <typename T>
FASTATTR_MULTIVERSION void pool_plane_2x2(const T* in, T* out, int64_t* idx, int64_t W, int64_t OH, int64_t OW) {
  for (int64_t oh = 0; oh < OH; ++oh) {
    const int64_t i0 = 2 * oh * W, i1 = i0 + W;
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t c = 2 * ow;
      const int64_t at[4] = {i0 + c, i0 + c + 1, i1 + c, i1 + c + 1};
      T value = in[at[0]];
      int64_t best = at[0];
      for (int j = 1; j < 4; ++j) {
        const T v = in[at[j]];
        const bool take = (v > value) | (v != v);
        value = take ? v : value;
        best = take ? at[j] : best;
      }
      out[oh * OW + ow] = value;
      idx[oh * OW + ow] = best;
    }
  }
}

}  // namespace

void max_pool2d(std::uintptr_t x, std::uintptr_t out, std::uintptr_t indices, int64_t planes, int64_t H, int64_t W,
                int64_t OH, int64_t OW, int64_t kH, int64_t kW, int64_t sH, int64_t sW, int64_t pH, int64_t pW,
                int64_t dH, int64_t dW, const std::string& dtype, int n_threads) {
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* in = as_ptr<const T>(x);
    T* o = as_ptr<T>(out);
    int64_t* ix = as_ptr<int64_t>(indices);
    const bool two = kH == 2 && kW == 2 && sH == 2 && sW == 2 && pH == 0 && pW == 0 && dH == 1 && dW == 1 &&
                     2 * OH <= H && 2 * OW <= W;
    parallel_rows(planes, OH * OW * kH * kW, n_threads, [&](int64_t p) {
      if (two) {
        pool_plane_2x2(in + p * H * W, o + p * OH * OW, ix + p * OH * OW, W, OH, OW);
        return;
      }
      pool_plane(in + p * H * W, o + p * OH * OW, ix + p * OH * OW, H, W, OH, OW, kH, kW, sH, sW, pH, pW, dH, dW);
    });
  });
}

void max_pool2d_backward(std::uintptr_t grad, std::uintptr_t indices, std::uintptr_t grad_x, int64_t planes,
                         int64_t H, int64_t W, int64_t OH, int64_t OW, const std::string& dtype, int n_threads) {
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* g = as_ptr<const T>(grad);
    const int64_t* ix = as_ptr<const int64_t>(indices);
    T* gx = as_ptr<T>(grad_x);
    parallel_rows(planes, H * W + OH * OW, n_threads, [&](int64_t p) {
      T* dst = gx + p * H * W;
      const T* src = g + p * OH * OW;
      const int64_t* at = ix + p * OH * OW;
      std::fill(dst, dst + H * W, T(0));
      for (int64_t o = 0; o < OH * OW; ++o) {
        const int64_t i = at[o];
        if (i >= 0 && i < H * W) dst[i] += src[o];
      }
    });
  });
}

}  // namespace fastattr
