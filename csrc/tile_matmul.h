// A register-tiled small matmul shared by the kernels that multiply small dense blocks (greedy_gains' chunks of
// candidates, group_gen's patch attention), and the FMA-or-baseline clones their callers are built as.
#pragma once
#include <cstdint>
#include <cstring>

#include "common.h"

namespace fastattr {

// The matmul tile is built with FMA (which implies AVX; GCC contracts a * b + c) and for a baseline, picked
// at load by the CPU's features.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
#define FASTATTR_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define FASTATTR_FMA_CLONES FASTATTR_MULTIVERSION
#endif

// out[c][j] = sum_k in[c][k] W[k][j] for the rows c of in (rows a multiple of kRows, each n_in long), W
// [n_in][n_out]. Output tiles of two kBytes vectors outside, blocks of kRows rows inside: the W tile
// (n_in x tile) stays in L1 while every row block of the chunk passes over it, and a block's kRows x 2
// vector sums stay in registers (GCC's vector types, the row loop unrolled; scalar arrays were spilled).
// Inlined into each caller, so it is compiled for the caller's target (AVX-512, FMA or the baseline).
template <typename T, int kBytes, int kRows>
__attribute__((always_inline)) inline void tile_matmul(const T* W, int64_t n_in, int64_t n_out, const T* in,
                                                       int64_t rows, T* out) {
  int64_t j0 = 0;
#if defined(__GNUC__)
  typedef T V __attribute__((vector_size(kBytes)));
  constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  for (; j0 + 2 * kLanes <= n_out; j0 += 2 * kLanes) {
    for (int64_t r = 0; r < rows; r += kRows) {
      V a[kRows][2] = {};
      for (int64_t k = 0; k < n_in; ++k) {
        const T* w = W + k * n_out + j0;
        V w0, w1;
        std::memcpy(&w0, w, sizeof(V));
        std::memcpy(&w1, w + kLanes, sizeof(V));
#pragma GCC unroll 16
        for (int i = 0; i < kRows; ++i) {
          const V x = V{} + in[(r + i) * n_in + k];
          a[i][0] += w0 * x;
          a[i][1] += w1 * x;
        }
      }
#pragma GCC unroll 16
      for (int i = 0; i < kRows; ++i) {
        std::memcpy(out + (r + i) * n_out + j0, &a[i][0], sizeof(V));
        std::memcpy(out + (r + i) * n_out + j0 + kLanes, &a[i][1], sizeof(V));
      }
    }
  }
#endif
  for (int64_t j = j0; j < n_out; ++j)
    for (int64_t r = 0; r < rows; ++r) {
      T acc = 0;
      for (int64_t k = 0; k < n_in; ++k) acc += in[r * n_in + k] * W[k * n_out + j];
      out[r * n_out + j] = acc;
    }
}

}  // namespace fastattr
