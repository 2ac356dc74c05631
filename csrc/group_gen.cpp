// SOP's GroupGen in one call (You et al., "Sum-of-Parts Models", §3 and App. B; SPEC §6), CPU kernel.
//
// Per example: e = X Wp^T + bp + pos ([P, d]), A_j = Wq_j^T Wk_j / sqrt(d) per head j (the head's [d, d]
// blocks of the query and key weights [h d, d]) and logits[j P + p, q] = (e_p A_j) . e_q ([h P, P]), then
// group_masks' selection on them (group_masks.h). Returns the number of logit rows holding NaN or +-inf.
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "group_masks.h"
#include "tile_matmul.h"

namespace fastattr {
namespace {

constexpr int64_t kTileRows = 4;  // tile_matmul's row block

// The logits [h P, P] of one example, every product on tile_matmul over Pr = P rounded up to whole row blocks
// (the scratch rows past P hold zeros or what they give): e = X Wp^T + offset ([Pr, d]; Wp^T [D, d], offset =
// bp + pos [P, d]), its transpose eT [d, P], per head Q = e A_j ([Pr, d]; A [h, d, d]) and Q eT ([Pr, P]),
// whose first P rows are the head's logits. x (X padded to Pr rows, used when P < Pr), e, eT, Q and L are
// scratch.
template <typename T>
FASTATTR_FMA_CLONES void example_logits(const T* X, const T* WpT, const T* offset, const T* A, T* x, T* e, T* eT,
                                        T* Q, T* L, T* logits, int64_t P, int64_t Pr, int64_t D, int64_t d,
                                        int64_t h) {
  if (Pr > P) std::memcpy(x, X, static_cast<size_t>(P * D) * sizeof(T));
  tile_matmul<T, 32, kTileRows>(WpT, D, d, Pr > P ? x : X, Pr, e);
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
      GroupScratch<T> scratch;
      std::vector<T> x(static_cast<size_t>(Pr > P ? Pr * D : 0), T(0)), e(static_cast<size_t>(Pr * d)), eT(static_cast<size_t>(d * P)),
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

}  // namespace fastattr
