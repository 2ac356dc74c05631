// The input gradient of a 2-D convolution with few input channels, CPU kernel.
//
// For grad [N, Co, OH, OW] and weight [Co, Ci, KH, KW] (groups 1), per example n and input channel ci:
//   cols[k, o] = Σ_co weight[co, ci, k] · grad[n, co, o]                     (k = kh·KW + kw, o = oh·OW + ow)
//   grad_x[n, ci, ih, iw] = Σ_k cols[k, oh, ow] over the (k, oh, ow) with ih = oh·sH − pH + kh·dH and
//                          iw = ow·sW − pW + kw·dW, added tap by tap (k ascending) into a zeroed buffer that
//                          covers every tap's reach, whose in-range part is then copied out.
// The channel sums run over blocks of outputs held in registers (one weight broadcast per channel), the
// column-to-image step adds whole rows without bounds checks. oneDNN's kernel for a one-channel input (the
// first layer of a grayscale CNN) spends about 3× longer on the same sums (`fastattr bench agg --tables conv`).
#include <algorithm>
#include <vector>

#include "common.h"

namespace fastattr {

namespace {

template <int B, typename T>
inline void channel_sums(const T* g, const T* w, T* c, int64_t Co, int64_t P, int64_t o0, int64_t wstride) {
  T acc[B];
  for (int j = 0; j < B; ++j) acc[j] = T(0);
  for (int64_t co = 0; co < Co; ++co) {
    const T wv = w[co * wstride];
    const T* gp = g + co * P + o0;
    for (int j = 0; j < B; ++j) acc[j] += wv * gp[j];
  }
  for (int j = 0; j < B; ++j) c[o0 + j] = acc[j];
}

struct Geometry {
  int64_t Co, Ci, K, KW, P, OH, OW, H, W, sH, sW, pH, pW, dH, dW, padH, padW;
};

// One example's gradient for one input channel; cols [K, P] and pad [padH, padW] are scratch.
template <typename T>
FASTATTR_MULTIVERSION void input_grad_plane(const T* g, const T* w, T* gx, T* cols, T* pad, const Geometry& s) {
  constexpr int B = 64;
  for (int64_t k = 0; k < s.K; ++k) {
    T* c = cols + k * s.P;
    int64_t o0 = 0;
    for (; o0 + B <= s.P; o0 += B) channel_sums<B>(g, w + k, c, s.Co, s.P, o0, s.Ci * s.K);
    for (; o0 + 8 <= s.P; o0 += 8) channel_sums<8>(g, w + k, c, s.Co, s.P, o0, s.Ci * s.K);
    for (; o0 < s.P; ++o0) channel_sums<1>(g, w + k, c, s.Co, s.P, o0, s.Ci * s.K);
  }
  std::fill(pad, pad + s.padH * s.padW, T(0));
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t kh = k / s.KW, kw = k % s.KW;
    const T* c = cols + k * s.P;
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      T* dst = pad + (oh * s.sH + kh * s.dH) * s.padW + kw * s.dW;
      const T* src = c + oh * s.OW;
      if (s.sW == 1) {
        for (int64_t ow = 0; ow < s.OW; ++ow) dst[ow] += src[ow];
      } else {
        for (int64_t ow = 0; ow < s.OW; ++ow) dst[ow * s.sW] += src[ow];
      }
    }
  }
  for (int64_t ih = 0; ih < s.H; ++ih) {
    const T* src = pad + (ih + s.pH) * s.padW + s.pW;
    std::copy(src, src + s.W, gx + ih * s.W);
  }
}

}  // namespace

void conv2d_input_grad(std::uintptr_t grad, std::uintptr_t weight, std::uintptr_t grad_x, int64_t N, int64_t Co,
                       int64_t Ci, int64_t OH, int64_t OW, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sH,
                       int64_t sW, int64_t pH, int64_t pW, int64_t dH, int64_t dW, const std::string& dtype,
                       int n_threads) {
  // The buffer reaches every tap of every output and the whole input: rows [0, padH) stand for input rows
  // [−pH, padH − pH).
  const Geometry s{Co, Ci, KH * KW, KW, OH * OW, OH, OW, H, W, sH, sW, pH, pW, dH, dW,
                   std::max((OH - 1) * sH + (KH - 1) * dH + 1, pH + H), std::max((OW - 1) * sW + (KW - 1) * dW + 1,
                                                                                 pW + W)};
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* g = as_ptr<const T>(grad);
    const T* w = as_ptr<const T>(weight);
    T* gx = as_ptr<T>(grad_x);
    parallel_rows(N * Ci, Co * s.P * s.K, n_threads, [&](int64_t row) {
      thread_local std::vector<T> cols, pad;
      cols.resize(s.K * s.P);
      pad.resize(s.padH * s.padW);
      const int64_t n = row / Ci, ci = row % Ci;
      input_grad_plane(g + n * Co * s.P, w + ci * s.K, gx + row * H * W, cols.data(), pad.data(), s);
    });
  });
}

}  // namespace fastattr
