// SOP GroupGen's group selection (You et al., "Sum-of-Parts Models", §3 and App. B; SPEC §6), CPU kernel.
//
// Per example b, candidate rows r of logits [R, n] (one patch-attention row each) are ranked by the
// peak of sparsemax(row) (its largest probability, -tau relative to the row max, with the bits of the
// sparsemax kernel), then by the row max, then by index; the first G rows are kept (rows [G]). Each
// kept row becomes the bool mask of its K largest logits, ties by index (masks [G, n]). first[g] is
// the first kept group whose mask equals group g's (g itself if none before): the groups whose
// masked copies are one input. Returns the number of rows holding NaN or +-inf (then nothing is valid).
//
// group_gen: the whole of GroupGen in one call. The logits come from the patches first: per example,
// e = X Wp^T + bp + pos ([P, d]), A_j = Wq_j^T Wk_j / sqrt(d) per head j (the head's [d, d] blocks of the
// query and key weights [h d, d]) and logits[j P + p, q] = (e_p A_j) . e_q ([h P, P]), then the selection
// above on them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "common.h"
#include "sparsemax.h"
#include "tile_matmul.h"

namespace fastattr {
namespace {

// Rows of at most this many entries rank their entries by counting (branch-free, vectorised);
// longer rows partially sort their indices.
constexpr int64_t kCountRow = 64;

template <typename T>
struct Scratch {
  std::vector<double> cand;
  std::vector<T> peak, top;
  std::vector<int64_t> order, idx;
};

// Marks the K largest entries of row (ties by index) in mask.
template <typename T>
FASTATTR_MULTIVERSION void top_mask(const T* row, uint8_t* mask, int64_t n, int64_t K, std::vector<int64_t>& idx) {
  if (n <= kCountRow) {
    for (int64_t j = 0; j < n; ++j) {
      const T v = row[j];
      int64_t above = 0;
#pragma omp simd reduction(+ : above)
      for (int64_t i = 0; i < n; ++i) above += (row[i] > v) | ((row[i] == v) & (i < j));
      mask[j] = above < K;
    }
    return;
  }
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t(0));
  std::nth_element(idx.begin(), idx.begin() + (K - 1), idx.end(), [&](int64_t a, int64_t c) {
    return row[a] != row[c] ? row[a] > row[c] : a < c;
  });
  std::memset(mask, 0, static_cast<size_t>(n));
  for (int64_t j = 0; j < K; ++j) mask[idx[j]] = 1;
}

template <typename T>
int64_t select_example(const T* z, uint8_t* masks, int64_t* rows, int64_t* first, int64_t R, int64_t n, int64_t G,
                       int64_t K, Scratch<T>& s) {
  s.peak.resize(static_cast<size_t>(R));
  s.top.resize(static_cast<size_t>(R));
  s.order.resize(static_cast<size_t>(R));
  int64_t bad = 0;
  for (int64_t r = 0; r < R; ++r) {
    const T* row = z + r * n;
    T check = 0;
#pragma omp simd reduction(+ : check)
    for (int64_t i = 0; i < n; ++i) check += row[i] - row[i];  // NaN for a NaN or an infinite entry
    if (check != check) {
      ++bad;
      continue;
    }
    T m;
    s.peak[r] = -static_cast<T>(sparsemax_threshold(row, n, m, s.cand));
    s.top[r] = m;
  }
  if (bad) return bad;
  const T* peak = s.peak.data();
  const T* top = s.top.data();
  std::iota(s.order.begin(), s.order.end(), int64_t(0));
  std::partial_sort(s.order.begin(), s.order.begin() + G, s.order.end(), [&](int64_t a, int64_t c) {
    if (peak[a] != peak[c]) return peak[a] > peak[c];
    if (top[a] != top[c]) return top[a] > top[c];
    return a < c;
  });
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r = s.order[g];
    rows[g] = r;
    uint8_t* mask = masks + g * n;
    top_mask(z + r * n, mask, n, K, s.idx);
    first[g] = g;
    for (int64_t h = 0; h < g; ++h) {
      if (std::memcmp(masks + h * n, mask, static_cast<size_t>(n)) == 0) {
        first[g] = h;
        break;
      }
    }
  }
  return 0;
}

constexpr int64_t kTileRows = 4;  // tile_matmul's row block

// The logits [h P, P] of one example, every product on tile_matmul over Pr = P rounded up to whole row blocks
// (the scratch rows past P hold zeros or what they give): e = X Wp^T + offset ([Pr, d]; Wp^T [D, d], offset =
// bp + pos [P, d]), its transpose eT [d, P], per head Q = e A_j ([Pr, d]; A [h, d, d]) and Q eT ([Pr, P]),
// whose first P rows are the head's logits. x, e, eT, Q and L are scratch.
template <typename T>
FASTATTR_FMA_CLONES void example_logits(const T* X, const T* WpT, const T* offset, const T* A, T* x, T* e, T* eT,
                                        T* Q, T* L, T* logits, int64_t P, int64_t Pr, int64_t D, int64_t d,
                                        int64_t h) {
  std::memcpy(x, X, static_cast<size_t>(P * D) * sizeof(T));
  tile_matmul<T, 32, kTileRows>(WpT, D, d, x, Pr, e);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t k = 0; k < d; ++k) {
      e[p * d + k] += offset[p * d + k];
      eT[k * P + p] = e[p * d + k];
    }
  for (int64_t j = 0; j < h; ++j) {
    tile_matmul<T, 32, kTileRows>(A + j * d * d, d, d, e, Pr, Q);
    tile_matmul<T, 32, kTileRows>(eT, d, P, Q, Pr, L);
    std::memcpy(logits + j * P * P, L, static_cast<size_t>(P * P) * sizeof(T));
  }
}

}  // namespace

int64_t group_gen(std::uintptr_t patches, std::uintptr_t proj_weight, std::uintptr_t proj_bias,
                  std::uintptr_t position, std::uintptr_t query_weight, std::uintptr_t key_weight,
                  std::uintptr_t logits, std::uintptr_t masks, std::uintptr_t rows, std::uintptr_t first,
                  int64_t batch, int64_t P, int64_t D, int64_t d, int64_t h, int64_t G, int64_t K,
                  const std::string& dtype, int n_threads) {
  int64_t bad = 0;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* X = as_ptr<const T>(patches);
    const T* Wp = as_ptr<const T>(proj_weight);
    const T* bp = proj_bias ? as_ptr<const T>(proj_bias) : nullptr;
    const T* pos = as_ptr<const T>(position);
    const T* Wq = as_ptr<const T>(query_weight);
    const T* Wk = as_ptr<const T>(key_weight);
    T* z = as_ptr<T>(logits);
    uint8_t* m = as_ptr<uint8_t>(masks);
    int64_t* rw = as_ptr<int64_t>(rows);
    int64_t* fi = as_ptr<int64_t>(first);
    const T scale = T(1) / static_cast<T>(std::sqrt(static_cast<double>(d)));
    const int64_t Pr = (P + kTileRows - 1) / kTileRows * kTileRows;
    std::vector<T> WpT(static_cast<size_t>(D * d));
    for (int64_t k = 0; k < d; ++k)
      for (int64_t i = 0; i < D; ++i) WpT[i * d + k] = Wp[k * D + i];
    std::vector<T> offset(static_cast<size_t>(P * d));  // bp + pos
    for (int64_t p = 0; p < P; ++p)
      for (int64_t k = 0; k < d; ++k) offset[p * d + k] = bp ? bp[k] + pos[p * d + k] : pos[p * d + k];
    std::vector<T> A(static_cast<size_t>(h * d * d), T(0));  // A_j[k, l] = sum_m Wq[j d + m, k] Wk[j d + m, l] / sqrt(d)
    for (int64_t j = 0; j < h; ++j) {
      T* Aj = A.data() + j * d * d;
      for (int64_t mm = 0; mm < d; ++mm) {
        const T* wq = Wq + (j * d + mm) * d;
        const T* wk = Wk + (j * d + mm) * d;
        for (int64_t k = 0; k < d; ++k)
          for (int64_t l = 0; l < d; ++l) Aj[k * d + l] += wq[k] * wk[l];
      }
      for (int64_t i = 0; i < d * d; ++i) Aj[i] *= scale;
    }
    const int64_t R = h * P;
    std::vector<int64_t> per(static_cast<size_t>(batch), 0);
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) \
    if (worth_parallel(batch, P * d * (D + h * d) + R * P * (d + 8), n_threads))
#endif
    {
      Scratch<T> scratch;
      std::vector<T> x(static_cast<size_t>(Pr * D), T(0)), e(static_cast<size_t>(Pr * d)), eT(static_cast<size_t>(d * P)),
          Q(static_cast<size_t>(Pr * d)), L(static_cast<size_t>(Pr * P));
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t b = 0; b < batch; ++b) {
        T* zb = z + b * R * P;
        example_logits(X + b * P * D, WpT.data(), offset.data(), A.data(), x.data(), e.data(), eT.data(), Q.data(),
                       L.data(), zb, P, Pr, D, d, h);
        per[b] = select_example(zb, m + b * G * P, rw + b * G, fi + b * G, R, P, G, K, scratch);
      }
    }
    for (int64_t b = 0; b < batch; ++b) bad += per[b];
  });
  return bad;
}

int64_t group_masks(std::uintptr_t logits, std::uintptr_t masks, std::uintptr_t rows, std::uintptr_t first,
                    int64_t batch, int64_t R, int64_t n, int64_t G, int64_t K, const std::string& dtype,
                    int n_threads) {
  int64_t bad = 0;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* z = as_ptr<const T>(logits);
    uint8_t* m = as_ptr<uint8_t>(masks);
    int64_t* rw = as_ptr<int64_t>(rows);
    int64_t* fi = as_ptr<int64_t>(first);
    std::vector<int64_t> per(static_cast<size_t>(batch), 0);
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(batch, R * n * 8, n_threads))
#endif
    {
      Scratch<T> scratch;
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t b = 0; b < batch; ++b) {
        per[b] = select_example(z + b * R * n, m + b * G * n, rw + b * G, fi + b * G, R, n, G, K, scratch);
      }
    }
    for (int64_t b = 0; b < batch; ++b) bad += per[b];
  });
  return bad;
}

}  // namespace fastattr
