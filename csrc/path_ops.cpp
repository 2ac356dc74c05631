// Integrated-gradient path kernels (Sundararajan et al. 2017, "Axiomatic Attribution for Deep
// Networks"), CPU.
//
// path_interpolate:  out[s, b, :] = x'[b', :] + alpha_s * (x[b, :] - x'[b', :]),
//                    b' = b for per-example baselines, 0 for one shared baseline.
// path_accumulate:   out[b, :] = (acc[b, :] + sum_s w_s * g[s, b, :]) * diff[b, :]   (diff optional).
// Rows (s, b) / examples b are independent and split over OpenMP threads.
#include <vector>

#include "common.h"

namespace fastattr {
namespace {

template <typename T>
FASTATTR_MULTIVERSION void interpolate_row(const T* x, const T* base, T alpha, T* out, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) out[i] = base[i] + alpha * (x[i] - base[i]);
}

template <typename T>
FASTATTR_MULTIVERSION void accumulate_span(const T* acc, const T* g, const T* w, const T* diff,
                                           T* out, int64_t steps, int64_t step_stride, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) out[i] = acc[i];
  for (int64_t s = 0; s < steps; ++s) {
    const T ws = w[s];
    const T* gs = g + s * step_stride;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] += ws * gs[i];
  }
  if (diff != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] *= diff[i];
  }
}

}  // namespace

void path_interpolate(std::uintptr_t x, std::uintptr_t base, std::uintptr_t alphas, std::uintptr_t out,
                      int64_t steps, int64_t batch, int64_t d, bool shared_base, const std::string& dtype,
                      int n_threads) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = as_ptr<const T>(x);
    const T* bp = as_ptr<const T>(base);
    const T* ap = as_ptr<const T>(alphas);
    T* op = as_ptr<T>(out);
    parallel_rows(steps * batch, d, n_threads, [&](int64_t r) {
      const int64_t s = r / batch, b = r % batch;
      interpolate_row(xp + b * d, bp + (shared_base ? 0 : b * d), ap[s], op + r * d, d);
    });
  });
}

void path_accumulate(std::uintptr_t acc, std::uintptr_t grads, std::uintptr_t weights, std::uintptr_t diff,
                     std::uintptr_t out, int64_t steps, int64_t batch, int64_t d, const std::string& dtype,
                     int n_threads) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    // Split each example's features into spans so small batches still use every thread; a span
    // of 16K elements keeps the running sum in L1/L2 while the steps stream through.
    constexpr int64_t span = 16384;
    const int64_t spans = (d + span - 1) / span;
    const T* dp = diff ? as_ptr<const T>(diff) : nullptr;
    parallel_rows(batch * spans, (steps + 1) * (d < span ? d : span), n_threads, [&](int64_t r) {
      const int64_t b = r / spans, lo = (r % spans) * span;
      const int64_t len = d - lo < span ? d - lo : span;
      const int64_t off = b * d + lo;
      accumulate_span(as_ptr<const T>(acc) + off, as_ptr<const T>(grads) + off, as_ptr<const T>(weights),
                      dp ? dp + off : nullptr, as_ptr<T>(out) + off, steps, batch * d, len);
    });
  });
}

}  // namespace fastattr
