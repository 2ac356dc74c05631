// bottleneck (SPEC §9; Schulz et al. 2020): the per-sample information bottleneck of IBA, CPU.
//
//   s = sigmoid(alpha),  lam = G * s  (depthwise Gaussian of std smooth_sigma, reflect padding),
//   Z_j = lam R + (1 - lam)(sigma eps_j + mu)                      for each of the S noise draws j,
//   cap = -log(1 - lam) + (1 - lam)^2 / 2 + lam^2 ((R - mu) / sigma)^2 / 2 - 1/2   (KL to N(mu, sigma^2)),
// with 1 - lam computed as G * sigmoid(-alpha).
//
// R, alpha, cap [B, C, H, W]; mu, sigma [C, H, W]; eps, Z [B, S, C, H, W]. One task per (b, c) plane,
// split over OpenMP threads. The backward recomputes lam and returns dR and dalpha:
//   g_lam = sum_j gZ_j (R - sigma eps_j - mu) + gcap (1 / (1 - lam) - (1 - lam) + lam r^2),
//   dR = lam sum_j gZ_j + gcap lam^2 (R - mu) / sigma^2,   dalpha = s (1 - s) G^T g_lam.
#include <cmath>
#include <vector>

#include "common.h"

namespace fastattr {
namespace {

inline int64_t reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
  return i;
}

// The normalised 2D Gaussian of IBA's smoothing: (2 round(2 sigma) + 1)^2 taps; one tap when sigma = 0.
std::vector<double> gaussian(double sigma, int64_t& radius) {
  radius = sigma > 0 ? static_cast<int64_t>(std::lround(2 * sigma)) : 0;
  const int64_t k = 2 * radius + 1;
  std::vector<double> w(k * k);
  double total = 0.0;
  for (int64_t dy = -radius; dy <= radius; ++dy)
    for (int64_t dx = -radius; dx <= radius; ++dx) {
      const double v = sigma > 0 ? std::exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)) : 1.0;
      w[(dy + radius) * k + dx + radius] = v;
      total += v;
    }
  for (double& v : w) v /= total;
  return w;
}

// lam = G * sigmoid(alpha) and rest = 1 - lam = G * sigmoid(-alpha) (accurate as lam -> 1) on one
// H x W plane (double), and s = sigmoid(alpha).
template <typename T>
void mask_plane(const T* alpha, const std::vector<double>& w, int64_t radius, int64_t height, int64_t width,
                double* s, double* lam, double* rest) {
  const int64_t n = height * width, k = 2 * radius + 1;
  std::vector<double> s_neg(n);
  for (int64_t p = 0; p < n; ++p) {
    s[p] = 1.0 / (1.0 + std::exp(-static_cast<double>(alpha[p])));
    s_neg[p] = 1.0 / (1.0 + std::exp(static_cast<double>(alpha[p])));
  }
  for (int64_t y = 0; y < height; ++y)
    for (int64_t x = 0; x < width; ++x) {
      double acc = 0.0, acc_neg = 0.0;
      for (int64_t dy = -radius; dy <= radius; ++dy) {
        const int64_t yy = reflect(y + dy, height);
        for (int64_t dx = -radius; dx <= radius; ++dx) {
          const double wk = w[(dy + radius) * k + dx + radius];
          const int64_t q = yy * width + reflect(x + dx, width);
          acc += wk * s[q];
          acc_neg += wk * s_neg[q];
        }
      }
      lam[y * width + x] = acc;
      rest[y * width + x] = acc_neg;
    }
}

}  // namespace

void bottleneck_forward(std::uintptr_t R, std::uintptr_t alpha, std::uintptr_t mu, std::uintptr_t sigma,
                        std::uintptr_t eps, std::uintptr_t Z, std::uintptr_t cap, int64_t batch, int64_t samples,
                        int64_t channels, int64_t height, int64_t width, double smooth_sigma,
                        const std::string& dtype, int n_threads) {
  int64_t radius = 0;
  const std::vector<double> w = gaussian(smooth_sigma, radius);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = height * width, plane = channels * n;
    parallel_rows(batch * channels, n * (samples + 2) * (2 * radius + 1) , n_threads, [&](int64_t bc) {
      const int64_t b = bc / channels, c = bc % channels;
      std::vector<double> s(n), lam(n), rest(n);
      mask_plane(as_ptr<const T>(alpha) + bc * n, w, radius, height, width, s.data(), lam.data(), rest.data());
      const T* r = as_ptr<const T>(R) + bc * n;
      const T* m = as_ptr<const T>(mu) + c * n;
      const T* sd = as_ptr<const T>(sigma) + c * n;
      T* cp = as_ptr<T>(cap) + bc * n;
      for (int64_t p = 0; p < n; ++p) {
        const double l = lam[p], z = (static_cast<double>(r[p]) - m[p]) / static_cast<double>(sd[p]);
        cp[p] = static_cast<T>(-std::log(rest[p]) + 0.5 * rest[p] * rest[p] + 0.5 * l * l * z * z - 0.5);
      }
      for (int64_t j = 0; j < samples; ++j) {
        const T* e = as_ptr<const T>(eps) + (b * samples + j) * plane + c * n;
        T* out = as_ptr<T>(Z) + (b * samples + j) * plane + c * n;
        for (int64_t p = 0; p < n; ++p) {
          const double l = lam[p];
          out[p] = static_cast<T>(l * r[p] + rest[p] * (static_cast<double>(sd[p]) * e[p] + m[p]));
        }
      }
    });
  });
}

void bottleneck_backward(std::uintptr_t R, std::uintptr_t alpha, std::uintptr_t mu, std::uintptr_t sigma,
                         std::uintptr_t eps, std::uintptr_t gZ, std::uintptr_t gcap, std::uintptr_t dR,
                         std::uintptr_t dalpha, int64_t batch, int64_t samples, int64_t channels, int64_t height,
                         int64_t width, double smooth_sigma, const std::string& dtype, int n_threads) {
  int64_t radius = 0;
  const std::vector<double> w = gaussian(smooth_sigma, radius);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = height * width, plane = channels * n, k = 2 * radius + 1;
    parallel_rows(batch * channels, n * (samples + 2) * k, n_threads, [&](int64_t bc) {
      const int64_t b = bc / channels, c = bc % channels;
      std::vector<double> s(n), lam(n), rest(n), glam(n), gs(n, 0.0);
      mask_plane(as_ptr<const T>(alpha) + bc * n, w, radius, height, width, s.data(), lam.data(), rest.data());
      const T* r = as_ptr<const T>(R) + bc * n;
      const T* m = as_ptr<const T>(mu) + c * n;
      const T* sd = as_ptr<const T>(sigma) + c * n;
      const T* gc = as_ptr<const T>(gcap) + bc * n;
      T* out_r = as_ptr<T>(dR) + bc * n;
      for (int64_t p = 0; p < n; ++p) {
        const double l = lam[p], sig = sd[p], diff = static_cast<double>(r[p]) - m[p], z = diff / sig;
        double gl = gc[p] * (1.0 / rest[p] - rest[p] + l * z * z), gsum = 0.0;
        for (int64_t j = 0; j < samples; ++j) {
          const int64_t at = (b * samples + j) * plane + c * n + p;
          const double g = as_ptr<const T>(gZ)[at];
          gl += g * (diff - sig * static_cast<double>(as_ptr<const T>(eps)[at]));
          gsum += g;
        }
        glam[p] = gl;
        out_r[p] = static_cast<T>(l * gsum + gc[p] * l * l * diff / (sig * sig));
      }
      for (int64_t y = 0; y < height; ++y)  // the adjoint of the reflect-padded smoothing
        for (int64_t x = 0; x < width; ++x) {
          const double g = glam[y * width + x];
          for (int64_t dy = -radius; dy <= radius; ++dy) {
            const int64_t yy = reflect(y + dy, height);
            for (int64_t dx = -radius; dx <= radius; ++dx)
              gs[yy * width + reflect(x + dx, width)] += w[(dy + radius) * k + dx + radius] * g;
          }
        }
      T* out_a = as_ptr<T>(dalpha) + bc * n;
      for (int64_t p = 0; p < n; ++p) out_a[p] = static_cast<T>(gs[p] * s[p] * (1.0 - s[p]));
    });
  });
}

}  // namespace fastattr
