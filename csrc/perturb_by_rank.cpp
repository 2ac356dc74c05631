// perturb_by_rank (SPEC §3.1): a chunk of ranked perturbations written in one pass, CPU.
//
//   out[k*B + b, c, i] = ((rank[b, i] < counts[k]) == insert) ? x[b, c, i] : baseline[b, c, i]
//
// x and baseline are [B, C, F] (C channels share each of F features), rank [B, F] int64,
// counts [K] int64. No mask is materialised; rows (k, b) are split over OpenMP threads.
#include "common.h"

namespace fastattr {
namespace {

template <typename T>
FASTATTR_MULTIVERSION void perturb_row(const T* x, const T* base, const int64_t* rank, int64_t count,
                                       bool insert, T* out, int64_t channels, int64_t features) {
  for (int64_t c = 0; c < channels; ++c) {
    const T* xc = x + c * features;
    const T* bc = base + c * features;
    T* oc = out + c * features;
#pragma omp simd
    for (int64_t i = 0; i < features; ++i) {
      const bool from_x = (rank[i] < count) == insert;
      oc[i] = from_x ? xc[i] : bc[i];
    }
  }
}

}  // namespace

void perturb_by_rank(std::uintptr_t x, std::uintptr_t base, std::uintptr_t rank, std::uintptr_t counts,
                     std::uintptr_t out, int64_t steps, int64_t batch, int64_t channels, int64_t features,
                     bool insert, const std::string& dtype, int n_threads) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t per_example = channels * features;
    const int64_t* cnt = as_ptr<const int64_t>(counts);
    parallel_rows(steps * batch, per_example, n_threads, [&](int64_t r) {
      const int64_t k = r / batch, b = r % batch;
      perturb_row(as_ptr<const T>(x) + b * per_example, as_ptr<const T>(base) + b * per_example,
                  as_ptr<const int64_t>(rank) + b * features, cnt[k], insert, as_ptr<T>(out) + r * per_example,
                  channels, features);
    });
  });
}

}  // namespace fastattr
