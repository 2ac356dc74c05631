// Contextual decomposition's beta-only bias split (Murdoch et al. 2018; Singh et al. 2019, SPEC 4.2),
// CPU.
//
// y holds n_ref reference rows z_b = W a_b followed by n_ref * k rows u_{b,k} = W beta_{b,k}
// (row n_ref + b * k + j belongs to reference row b), each [channels, positions]:
//   out[b]        = z_b + bias                                        (the ordinary activation)
//   out[b, k]     = u + bias * (|u| + eps) / (|u| + |z_b - u| + 2 eps) (eps = 1e-20: 0/0 splits 50/50)
// then ReLU on every row when relu is set (NaN propagates, as torch's clamp_min). Rows are independent
// and split over OpenMP threads.
#include <cmath>

#include "common.h"

namespace fastattr {
namespace {

template <typename T>
FASTATTR_MULTIVERSION void ref_row(const T* z, const T* bias, T* out, int64_t channels, int64_t positions,
                                   bool relu) {
  for (int64_t c = 0; c < channels; ++c) {
    const T b = bias[c];
    const T* zc = z + c * positions;
    T* oc = out + c * positions;
#pragma omp simd
    for (int64_t p = 0; p < positions; ++p) {
      const T v = zc[p] + b;
      oc[p] = relu ? (v < T(0) ? T(0) : v) : v;  // NaN propagates
    }
  }
}

template <typename T>
FASTATTR_MULTIVERSION void split_row(const T* u, const T* z, const T* bias, T* out, int64_t channels,
                                     int64_t positions, bool relu) {
  const T eps = T(1e-20);
  for (int64_t c = 0; c < channels; ++c) {
    const T b = bias[c];
    const T* uc = u + c * positions;
    const T* zc = z + c * positions;
    T* oc = out + c * positions;
#pragma omp simd
    for (int64_t p = 0; p < positions; ++p) {
      const T pu = std::abs(uc[p]) + eps;
      const T pg = std::abs(zc[p] - uc[p]) + eps;
      const T v = uc[p] + b * pu / (pu + pg);
      oc[p] = relu ? (v < T(0) ? T(0) : v) : v;  // NaN propagates
    }
  }
}

}  // namespace

void cd_bias_split(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t out, int64_t n_ref, int64_t k,
                   int64_t channels, int64_t positions, bool relu, const std::string& dtype, int n_threads) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* yp = as_ptr<const T>(y);
    const T* bp = as_ptr<const T>(bias);
    T* op = as_ptr<T>(out);
    const int64_t len = channels * positions;
    parallel_rows(n_ref * (1 + k), len, n_threads, [&](int64_t r) {
      if (r < n_ref) {
        ref_row(yp + r * len, bp, op + r * len, channels, positions, relu);
      } else {
        split_row(yp + r * len, yp + ((r - n_ref) / k) * len, bp, op + r * len, channels, positions, relu);
      }
    });
  });
}

}  // namespace fastattr
