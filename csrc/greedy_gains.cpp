// Marginal gains of a batch of deep submodular functions (SPEC §7; SEA-NN, "Improving attribution
// methods by learning submodular functions", §3.2, Algorithm 1), CPU kernel.
//
// A DSF f = W_L g(... g(W_2 g(z_1) + b_2) ...) + b_L (W_l stored [h_{l-1}][h_l]) with first-layer
// state z_1(A) = W_1 1_A + b_1, weights >= 0 and g = sqrt or log1p. For candidate v,
// z_1(A + v) = z_1(A) + W_1[:, v] (rank-1), and the gain f(v | A) is propagated as a difference,
// layer by layer, never as f(A + v) - f(A):
//   d_1 = g(z_1 + W_1[:, v]) - g(z_1),   e_l = W_l d_{l-1},   d_l = g(z_l + e_l) - g(z_l),   gain = W_L d_{L-1},
// with g(z + e) - g(z) = e / (sqrt(z + e) + sqrt(z)) for sqrt and log1p(e / (1 + z)) for log1p. Every
// term is >= 0, so the gain keeps the working precision however large f is (f(A + v) - f(A) in float32
// cancels to 0 once f is ~1e4 and the gain ~1e-3). Work items are (DSF, chunk of 32 candidates), in
// parallel (OpenMP, torch's thread count).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "tile_matmul.h"

namespace fastattr {
namespace {

constexpr int64_t kChunk = 32;  // candidates per work item: their first-layer differences stay in L2

template <typename T>
inline T activation(T z, int kind) {
  return kind == 0 ? std::sqrt(z) : std::log1p(z);
}

// d[k] = g(z[k] + e[k]) - g(z[k]) for k < n, with root[k] = sqrt(z[k]) precomputed (sqrt) or unused
// (log1p); branch-free, so the sqrt loop vectorizes.
template <typename T>
FASTATTR_FMA_CLONES void differences(const T* z, const T* root, const T* e, int64_t n, int kind, T* d) {
  if (kind == 0) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const T den = std::sqrt(z[k] + e[k]) + root[k];
      d[k] = den > T(0) ? e[k] / den : T(0);
    }
  } else {
    for (int64_t k = 0; k < n; ++k) d[k] = std::log1p(e[k] / (T(1) + z[k]));
  }
}

template <typename T>
inline T activation_difference(T z, T e, int kind) {
  if (kind == 0) {
    const T s = std::sqrt(z + e) + std::sqrt(z);
    return s > T(0) ? e / s : T(0);
  }
  return std::log1p(e / (T(1) + z));
}

template <typename T>
FASTATTR_FMA_CLONES void chunk_matmul_256(const T* W, int64_t n_in, int64_t n_out, const T* in, int64_t rows,
                                          T* out) {
  tile_matmul<T, 32, 4>(W, n_in, n_out, in, rows, out);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
template <typename T>
__attribute__((target("avx512f"))) void chunk_matmul_512(const T* W, int64_t n_in, int64_t n_out, const T* in,
                                                          int64_t rows, T* out) {
  tile_matmul<T, 64, 8>(W, n_in, n_out, in, rows, out);
}

template <typename T>
void chunk_matmul(const T* W, int64_t n_in, int64_t n_out, const T* in, int64_t rows, T* out) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    chunk_matmul_512(W, n_in, n_out, in, rows, out);
  } else {
    chunk_matmul_256(W, n_in, n_out, in, rows, out);
  }
}
#else
template <typename T>
void chunk_matmul(const T* W, int64_t n_in, int64_t n_out, const T* in, int64_t rows, T* out) {
  chunk_matmul_256(W, n_in, n_out, in, rows, out);
}
#endif

}  // namespace

void greedy_gains(std::uintptr_t z1, std::uintptr_t columns, std::uintptr_t layers, std::uintptr_t dims,
                  int64_t n_layers, std::uintptr_t selected, std::uintptr_t candidates, std::uintptr_t bounds,
                  std::uintptr_t out,
                  int64_t batch, int64_t n, int64_t n_candidates, int64_t kind, const std::string& dtype,
                  int n_threads) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* zp = as_ptr<const T>(z1);
    const T* colp = as_ptr<const T>(columns);
    const int64_t* layer_addresses = as_ptr<const int64_t>(layers);  // W_2, b_2, ..., W_L, b_L
    const int64_t* h = as_ptr<const int64_t>(dims);                    // h_1, ..., h_L (h_L = 1)
    const bool* sel = as_ptr<const bool>(selected);
    const int64_t* cand = candidates ? as_ptr<const int64_t>(candidates) : nullptr;
    T* gp = as_ptr<T>(out);
    const int64_t h1 = h[0];
    int64_t widest = h1, state_size = h1;
    for (int64_t l = 1; l < n_layers; ++l) {  // the hidden layers after the first: h_2 .. h_{L-1}
      widest = std::max(widest, h[l]);
      state_size += h[l];
    }
    auto weight = [&](int64_t l) { return as_ptr<const T>(static_cast<std::uintptr_t>(layer_addresses[2 * l])); };
    auto bias = [&](int64_t l) { return as_ptr<const T>(static_cast<std::uintptr_t>(layer_addresses[2 * l + 1])); };
    // z_l(A) of every DSF, h_1 .. h_{L-1} pre-activations one after the other.
    std::vector<T> state(static_cast<size_t>(batch * state_size)), roots(static_cast<size_t>(batch * state_size));
    parallel_rows(batch, state_size * widest, n_threads, [&](int64_t b) {
      T* s = state.data() + b * state_size;
      std::copy(zp + b * h1, zp + (b + 1) * h1, s);
      std::vector<T> u(static_cast<size_t>(widest));
      int64_t offset = 0;
      for (int64_t l = 0; l + 1 < n_layers; ++l) {
        const int64_t n_in = h[l], n_out = h[l + 1];
        for (int64_t k = 0; k < n_in; ++k) u[k] = activation(s[offset + k], static_cast<int>(kind));
        const T* W = weight(l) + b * n_in * n_out;
        const T* bb = bias(l) + b * n_out;
        T* next = s + offset + n_in;
        std::copy(bb, bb + n_out, next);
        for (int64_t k = 0; k < n_in; ++k)
          for (int64_t j = 0; j < n_out; ++j) next[j] += u[k] * W[k * n_out + j];
        offset += n_in;
      }
      for (int64_t k = 0; k < state_size; ++k) roots[b * state_size + k] = std::sqrt(s[k]);
    });
    const int64_t chunks = (n_candidates + kChunk - 1) / kChunk;
    int64_t flops = 0;
    for (int64_t l = 0; l < n_layers; ++l) flops += h[l] * h[l + 1];
    // The gains of candidates first .. first + count - 1 of DSF b into gp (d, e: per-thread scratch).
    auto evaluate = [&](int64_t b, int64_t first, int64_t count, std::vector<T>& d, std::vector<T>& e) {
      const int64_t rows = (count + 7) / 8 * 8;  // padded to whole blocks of eight (the pad repeats the last)
      const T* s = state.data() + b * state_size;
      const T* sr = roots.data() + b * state_size;
      int64_t v[kChunk];
      for (int64_t c = 0; c < rows; ++c) {
        const int64_t slot = first + std::min(c, count - 1);
        v[c] = cand ? cand[b * n_candidates + slot] : slot;
      }
      for (int64_t c = 0; c < rows; ++c)
        differences(s, sr, colp + (b * n + v[c]) * h1, h1, static_cast<int>(kind), d.data() + c * h1);
      int64_t offset = 0;
      for (int64_t l = 0; l < n_layers; ++l) {
        const int64_t n_in = h[l], n_out = h[l + 1];
        chunk_matmul(weight(l) + b * n_in * n_out, n_in, n_out, d.data(), rows, e.data());
        if (l + 1 == n_layers) break;  // e holds W_L d_{L-1}: the gains
        offset += n_in;
        for (int64_t c = 0; c < rows; ++c)
          differences(s + offset, sr + offset, e.data() + c * n_out, n_out, static_cast<int>(kind),
                      d.data() + c * n_out);
      }
      for (int64_t c = 0; c < count; ++c) gp[b * n_candidates + first + c] = sel[b * n + v[c]] ? T(0) : e[c];
    };
    if (bounds) {
      // Lazy: each DSF's candidates come sorted by their bounds (stale gains, upper bounds by
      // submodularity), best first; chunks are evaluated while the next bound could still reach the best
      // gain found, and the others keep their bounds.
      const T* bp = as_ptr<const T>(bounds);
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(batch, kChunk * flops, n_threads))
#endif
      {
        std::vector<T> d(static_cast<size_t>(kChunk * widest)), e(static_cast<size_t>(kChunk * widest));
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t b = 0; b < batch; ++b) {
          T best = -std::numeric_limits<T>::infinity();
          int64_t first = 0;
          for (; first < n_candidates && !(bp[b * n_candidates + first] < best); first += kChunk) {
            const int64_t count = std::min(kChunk, n_candidates - first);
            evaluate(b, first, count, d, e);
            for (int64_t c = 0; c < count; ++c) best = std::max(best, gp[b * n_candidates + first + c]);
          }
          for (int64_t c = first; c < n_candidates; ++c) gp[b * n_candidates + c] = bp[b * n_candidates + c];
        }
      }
      return;
    }
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(batch * chunks, kChunk * flops, n_threads))
#endif
    {
      std::vector<T> d(static_cast<size_t>(kChunk * widest)), e(static_cast<size_t>(kChunk * widest));
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t item = 0; item < batch * chunks; ++item) {
        const int64_t b = item / chunks, first = (item % chunks) * kChunk;
        evaluate(b, first, std::min(kChunk, n_candidates - first), d, e);
      }
    }
  });
}

}  // namespace fastattr
