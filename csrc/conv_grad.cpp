// The input gradient of a 2-D convolution, CPU kernels: a dense one for few input channels (first), and one
// for an output gradient that is mostly zero, as behind a max pool (conv2d_input_grad_sparse, below).
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
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"
#include "tile_matmul.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
#include <immintrin.h>
#endif

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

// The buffer reaches every tap of every output and the whole input: rows [0, padH) stand for input rows
// [−pH, padH − pH).
Geometry geometry(int64_t Co, int64_t Ci, int64_t OH, int64_t OW, int64_t H, int64_t W, int64_t KH, int64_t KW,
                  int64_t sH, int64_t sW, int64_t pH, int64_t pW, int64_t dH, int64_t dW) {
  return Geometry{Co, Ci, KH * KW, KW, OH * OW, OH, OW, H, W, sH, sW, pH, pW, dH, dW,
                  std::max((OH - 1) * sH + (KH - 1) * dH + 1, pH + H), std::max((OW - 1) * sW + (KW - 1) * dW + 1,
                                                                                pW + W)};
}

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
  const Geometry s = geometry(Co, Ci, OH, OW, H, W, KH, KW, sH, sW, pH, pW, dH, dW);
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

// The sparse-gradient algorithm. After a max pool's backward at most one output in each window has a gradient,
// and a ReLU's backward zeroes more, so most of grad is zero. Per example n and output position o:
//   the channels co with grad[n, co, o] != 0 (a compacted list), then
//   buf[oh·sH + kh·dH, ow·sW + kw·dW, ci] += Σ_{listed co} grad[n, co, o] · weight[co, ci, kh, kw]
// over a zeroed channels-last buffer that covers every tap's reach; its in-range part, transposed, is
// grad_x[n]. The sums for one o run over blocks of kBlock vectors of the flattened (tap, ci) axis held in
// registers, so the work is (nonzeros · Ci · K) multiply-adds instead of oneDNN's (Co · P · Ci · K).
namespace {

constexpr int kBlock = 9;

// acc[j] = Σ_t grad[list[t]] · wt[list[t], j0 + j] for kBlock (or fewer) vectors j, added into buf at dst[j].
template <typename T, int R>
__attribute__((always_inline)) inline void vector_block(const T* gq, int64_t P, const int32_t* list, int nz,
                                                        const T* wt, int64_t L, int64_t j0, T* base,
                                                        const int64_t* dst) {
  constexpr int kLanes = 32 / static_cast<int>(sizeof(T));
  typedef T V __attribute__((vector_size(32)));  // an alias template would drop the attribute
  V acc[R] = {};
  for (int t = 0; t < nz; ++t) {
    const V v = V{} + gq[list[t] * P];
    const T* w = wt + list[t] * L + j0 * kLanes;
#pragma GCC unroll 16
    for (int j = 0; j < R; ++j) {
      V wv;
      std::memcpy(&wv, w + j * kLanes, sizeof(wv));
      acc[j] += v * wv;
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < R; ++j) {
    T* d = base + dst[j0 + j];
    V dv;
    std::memcpy(&dv, d, sizeof(dv));
    dv += acc[j];
    std::memcpy(d, &dv, sizeof(dv));
  }
}

// The blocks of vectors 0..n_vec of the flattened (tap, ci) axis: kBlock at a time, then 3, then 1.
template <typename Block>
__attribute__((always_inline)) inline void vector_blocks(int64_t n_vec, Block&& block) {
  int64_t j0 = 0;
  for (; j0 + kBlock <= n_vec; j0 += kBlock) block(std::integral_constant<int, kBlock>{}, j0);
  for (; j0 + 3 <= n_vec; j0 += 3) block(std::integral_constant<int, 3>{}, j0);
  for (; j0 < n_vec; ++j0) block(std::integral_constant<int, 1>{}, j0);
}

// The buffer offset of output position o's origin (tap 0, channel 0).
inline int64_t origin(int64_t o, const Geometry& s) {
  return ((o / s.OW) * s.sH * s.padW + (o % s.OW) * s.sW) * s.Ci;
}

// One example: g [Co, P], wt [Co, K·Ci] (channels last), gx [Ci, H, W]; buf [padH·padW·Ci] and list [Co] scratch;
// dst[j] the buffer offset of vector j of the flattened (tap, ci) axis where Ci is a multiple of the vector's
// lanes, else of tap j.
template <typename T>
FASTATTR_FMA_CLONES void sparse_image(const T* g, const T* wt, T* gx, T* buf, int32_t* list, const int64_t* dst,
                                      const Geometry& s) {
  constexpr int kLanes = 32 / static_cast<int>(sizeof(T));
  const int64_t L = s.K * s.Ci;
  std::fill(buf, buf + s.padH * s.padW * s.Ci, T(0));
  for (int64_t o = 0; o < s.P; ++o) {
    const T* gq = g + o;
    int nz = 0;
    for (int32_t co = 0; co < s.Co; ++co) {
      list[nz] = co;
      nz += gq[co * s.P] != T(0);
    }
    if (nz == 0) continue;
    T* base = buf + origin(o, s);
    if (s.Ci % kLanes == 0) {
      vector_blocks(L / kLanes, [&](auto r, int64_t j0) {
        vector_block<T, decltype(r)::value>(gq, s.P, list, nz, wt, L, j0, base, dst);
      });
    } else {
      for (int64_t k = 0; k < s.K; ++k) {
        T* d = base + dst[k];
        for (int64_t ci = 0; ci < s.Ci; ++ci) {
          T acc = T(0);
          for (int t = 0; t < nz; ++t) acc += gq[list[t] * s.P] * wt[list[t] * L + k * s.Ci + ci];
          d[ci] += acc;
        }
      }
    }
  }
  for (int64_t ih = 0; ih < s.H; ++ih)
    for (int64_t iw = 0; iw < s.W; ++iw) {
      const T* src = buf + ((ih + s.pH) * s.padW + iw + s.pW) * s.Ci;
      T* out = gx + ih * s.W + iw;
      for (int64_t ci = 0; ci < s.Ci; ++ci) out[ci * s.H * s.W] = src[ci];
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
#define FASTATTR_CONV_AVX2 1
// The float32 path on AVX2 + FMA CPUs, for Co and Ci multiples of 8: the example's gradient transposed to
// [P, Co] in 8×8 blocks, each position's nonzero channels as bit masks (compare and movemask), the output
// transposed back in 8×8 blocks; the sums as in sparse_image.

// dst row j (stride dst_stride) = column j of the 8×8 block at src (row stride src_stride).
__attribute__((target("avx2,fma"))) inline void transpose8(const float* src, int64_t src_stride, float* dst,
                                                           int64_t dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

template <int R>
__attribute__((target("avx2,fma"), always_inline)) inline void mask_block(const float* gq, const uint64_t* masks,
                                                                          int64_t words, const float* wt, int64_t L,
                                                                          int64_t j0, float* base,
                                                                          const int64_t* dst) {
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t word = 0; word < words; ++word)
    for (uint64_t mask = masks[word]; mask; mask &= mask - 1) {
      const int64_t co = word * 64 + __builtin_ctzll(mask);
      const __m256 v = _mm256_broadcast_ss(gq + co);
      const float* w = wt + co * L + j0 * 8;
#pragma GCC unroll 16
      for (int j = 0; j < R; ++j) acc[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(w + 8 * j), acc[j]);
    }
#pragma GCC unroll 16
  for (int j = 0; j < R; ++j) {
    float* d = base + dst[j0 + j];
    _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[j]));
  }
}

__attribute__((target("avx2,fma"))) void sparse_image_avx2(const float* g, const float* wt, float* gx, float* buf,
                                                           float* gT, uint64_t* masks, const int64_t* dst,
                                                           const Geometry& s) {
  const int64_t L = s.K * s.Ci;
  std::fill(buf, buf + s.padH * s.padW * s.Ci, 0.f);
  const int64_t P8 = s.P - s.P % 8;
  for (int64_t co = 0; co < s.Co; co += 8) {
    for (int64_t o = 0; o < P8; o += 8) transpose8(g + co * s.P + o, s.P, gT + o * s.Co + co, s.Co);
    for (int64_t o = P8; o < s.P; ++o)
      for (int64_t c = co; c < co + 8; ++c) gT[o * s.Co + c] = g[c * s.P + o];
  }
  for (int64_t o = 0; o < s.P; ++o) {
    const float* gq = gT + o * s.Co;
    uint64_t any = 0;
    const int64_t words = (s.Co + 63) / 64;
    std::fill(masks, masks + words, uint64_t(0));
    for (int64_t co = 0; co < s.Co; co += 8) {
      const __m256 nz = _mm256_cmp_ps(_mm256_loadu_ps(gq + co), _mm256_setzero_ps(), _CMP_NEQ_UQ);
      const uint64_t bits = static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_ps(nz))) << (co % 64);
      masks[co / 64] |= bits;
      any |= bits;
    }
    if (any == 0) continue;
    float* base = buf + origin(o, s);
    vector_blocks(L / 8, [&](auto r, int64_t j0) __attribute__((target("avx2,fma"))) {
      mask_block<decltype(r)::value>(gq, masks, words, wt, L, j0, base, dst);
    });
  }
  const int64_t W8 = s.W - s.W % 8;
  for (int64_t ih = 0; ih < s.H; ++ih) {
    const float* row = buf + ((ih + s.pH) * s.padW + s.pW) * s.Ci;
    for (int64_t ci = 0; ci < s.Ci; ci += 8) {
      for (int64_t iw = 0; iw < W8; iw += 8)
        transpose8(row + iw * s.Ci + ci, s.Ci, gx + ci * s.H * s.W + ih * s.W + iw, s.H * s.W);
      for (int64_t iw = W8; iw < s.W; ++iw)
        for (int64_t c = ci; c < ci + 8; ++c) gx[(c * s.H + ih) * s.W + iw] = row[iw * s.Ci + c];
    }
  }
}
#endif

}  // namespace

bool conv2d_input_grad_sparse(std::uintptr_t grad, std::uintptr_t weight, std::uintptr_t grad_x, int64_t N,
                              int64_t Co, int64_t Ci, int64_t OH, int64_t OW, int64_t H, int64_t W, int64_t KH,
                              int64_t KW, int64_t sH, int64_t sW, int64_t pH, int64_t pW, int64_t dH, int64_t dW,
                              const std::string& dtype, int n_threads) {
  bool finite = true;
  const Geometry s = geometry(Co, Ci, OH, OW, H, W, KH, KW, sH, sW, pH, pW, dH, dW);
  const int64_t K = s.K, P = s.P;
  dispatch_float(dtype, [&](auto zero) {
    using T = decltype(zero);
    constexpr int64_t kLanes = 32 / static_cast<int64_t>(sizeof(T));
    const T* g = as_ptr<const T>(grad);
    const T* w = as_ptr<const T>(weight);
    T* gx = as_ptr<T>(grad_x);
    // A skipped zero times an infinite or NaN weight would be NaN in the dense sum.
    for (int64_t i = 0; i < Co * Ci * K; ++i) finite &= std::isfinite(w[i]);
    if (!finite) return;
    std::vector<T> wt(Co * K * Ci);
    for (int64_t co = 0; co < Co; ++co)
      for (int64_t ci = 0; ci < Ci; ++ci)
        for (int64_t k = 0; k < K; ++k) wt[(co * K + k) * Ci + ci] = w[(co * Ci + ci) * K + k];
    // Whole vectors of the (tap, ci) axis where Ci is a multiple of the lanes, else whole taps.
    const int64_t step = Ci % kLanes == 0 ? kLanes : Ci;
    std::vector<int64_t> dst;
    for (int64_t e = 0; e < K * Ci; e += step) {
      const int64_t k = e / Ci;
      dst.push_back(((k / KW) * dH * s.padW + (k % KW) * dW) * Ci + e % Ci);
    }
    bool avx2 = false;
#ifdef FASTATTR_CONV_AVX2
    avx2 = std::is_same<T, float>::value && Ci % 8 == 0 && Co % 8 == 0 &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    parallel_rows(N, Co * P * Ci * K / 8, n_threads, [&](int64_t n) {
      thread_local std::vector<T> buf, scratch;
      thread_local std::vector<int32_t> list;
      thread_local std::vector<uint64_t> masks;
      buf.resize(s.padH * s.padW * Ci);
#ifdef FASTATTR_CONV_AVX2
      if constexpr (std::is_same<T, float>::value) {
        if (avx2) {
          scratch.resize(Co * P);
          masks.resize((Co + 63) / 64);
          sparse_image_avx2(g + n * Co * P, wt.data(), gx + n * Ci * H * W, buf.data(), scratch.data(), masks.data(),
                            dst.data(), s);
          return;
        }
      }
#endif
      list.resize(Co);
      sparse_image<T>(g + n * Co * P, wt.data(), gx + n * Ci * H * W, buf.data(), list.data(), dst.data(), s);
    });
  });
  return finite;
}

}  // namespace fastattr
