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

// IBA's smoothing on H x W planes: the normalised 2D Gaussian of std sigma on (2 round(2 sigma) + 1)^2
// taps with reflect padding (one tap when sigma = 0), applied as its two 1D factors
// (exp(-(dy^2 + dx^2) / 2 sigma^2) / sum = g(dy) g(dx) / (sum g)^2) through tables of the reflected
// rows and columns of each output pixel.
struct Smoother {
  int64_t radius = 0, k = 1, height, width;
  std::vector<double> g;
  std::vector<int64_t> row, col;  // row[y * k + t]: the input row of tap t for output row y

  Smoother(double sigma, int64_t h, int64_t w) : height(h), width(w) {
    radius = sigma > 0 ? static_cast<int64_t>(std::lround(2 * sigma)) : 0;
    k = 2 * radius + 1;
    g.resize(k);
    double total = 0.0;
    for (int64_t t = 0; t < k; ++t) {
      const double d = static_cast<double>(t - radius);
      g[t] = sigma > 0 ? std::exp(-d * d / (2 * sigma * sigma)) : 1.0;
      total += g[t];
    }
    for (double& v : g) v /= total;
    row.resize(height * k);
    col.resize(width * k);
    for (int64_t y = 0; y < height; ++y)
      for (int64_t t = 0; t < k; ++t) row[y * k + t] = reflect(y + t - radius, height);
    for (int64_t x = 0; x < width; ++x)
      for (int64_t t = 0; t < k; ++t) col[x * k + t] = reflect(x + t - radius, width);
  }

  // out = G * in (tmp: H W doubles).
  void apply(const double* in, double* out, double* tmp) const {
    for (int64_t y = 0; y < height; ++y)
      for (int64_t x = 0; x < width; ++x) {
        double acc = 0.0;
        for (int64_t t = 0; t < k; ++t) acc += g[t] * in[y * width + col[x * k + t]];
        tmp[y * width + x] = acc;
      }
    for (int64_t y = 0; y < height; ++y) {
      double* o = out + y * width;
      for (int64_t x = 0; x < width; ++x) o[x] = 0.0;
      for (int64_t t = 0; t < k; ++t) {
        const double* src = tmp + row[y * k + t] * width;
        for (int64_t x = 0; x < width; ++x) o[x] += g[t] * src[x];
      }
    }
  }

  // out = G^T in, the adjoint (tmp: H W doubles).
  void adjoint(const double* in, double* out, double* tmp) const {
    for (int64_t p = 0; p < height * width; ++p) tmp[p] = out[p] = 0.0;
    for (int64_t y = 0; y < height; ++y)
      for (int64_t t = 0; t < k; ++t) {
        double* dst = tmp + row[y * k + t] * width;
        for (int64_t x = 0; x < width; ++x) dst[x] += g[t] * in[y * width + x];
      }
    for (int64_t y = 0; y < height; ++y)
      for (int64_t x = 0; x < width; ++x) {
        const double v = tmp[y * width + x];
        for (int64_t t = 0; t < k; ++t) out[y * width + col[x * k + t]] += g[t] * v;
      }
  }
};

// s = sigmoid(alpha), lam = G * s and rest = 1 - lam = G * sigmoid(-alpha) (accurate as lam -> 1) on one
// plane (double); one exp per element (of -|alpha|).
template <typename T>
void mask_plane(const T* alpha, const Smoother& smooth, double* s, double* s_neg, double* lam, double* rest,
                double* tmp) {
  const int64_t n = smooth.height * smooth.width;
  for (int64_t p = 0; p < n; ++p) {
    const double a = static_cast<double>(alpha[p]), e = std::exp(-std::fabs(a)), small = e / (1.0 + e);
    s[p] = a >= 0 ? 1.0 - small : small;
    s_neg[p] = a >= 0 ? small : 1.0 - small;
  }
  smooth.apply(s, lam, tmp);
  smooth.apply(s_neg, rest, tmp);
}

}  // namespace

void bottleneck_forward(std::uintptr_t R, std::uintptr_t alpha, std::uintptr_t mu, std::uintptr_t sigma,
                        std::uintptr_t eps, std::uintptr_t Z, std::uintptr_t cap, int64_t batch, int64_t samples,
                        int64_t channels, int64_t height, int64_t width, double smooth_sigma,
                        const std::string& dtype, int n_threads) {
  const Smoother smooth(smooth_sigma, height, width);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = height * width, plane = channels * n;
    parallel_rows(batch * channels, n * (samples + 2 * smooth.k), n_threads, [&](int64_t bc) {
      const int64_t b = bc / channels, c = bc % channels;
      std::vector<double> buffer(5 * n);  // s, 1 - s, lam, rest, tmp
      double* s = buffer.data();
      double *s_neg = s + n, *lam = s + 2 * n, *rest = s + 3 * n;
      mask_plane(as_ptr<const T>(alpha) + bc * n, smooth, s, s_neg, lam, rest, s + 4 * n);
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
  const Smoother smooth(smooth_sigma, height, width);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = height * width, plane = channels * n;
    parallel_rows(batch * channels, n * (samples + 4 * smooth.k), n_threads, [&](int64_t bc) {
      const int64_t b = bc / channels, c = bc % channels;
      std::vector<double> buffer(7 * n);  // s, 1 - s, lam, rest, tmp, g_lam, G^T g_lam
      double* s = buffer.data();
      double *s_neg = s + n, *lam = s + 2 * n, *rest = s + 3 * n, *tmp = s + 4 * n, *glam = s + 5 * n,
             *gs = s + 6 * n;
      mask_plane(as_ptr<const T>(alpha) + bc * n, smooth, s, s_neg, lam, rest, tmp);
      const T* r = as_ptr<const T>(R) + bc * n;
      const T* m = as_ptr<const T>(mu) + c * n;
      const T* sd = as_ptr<const T>(sigma) + c * n;
      const T* gc = as_ptr<const T>(gcap) + bc * n;
      T* out_r = as_ptr<T>(dR) + bc * n;
      double* gsum = gs;  // sum_j gZ_j, until the adjoint overwrites it
      for (int64_t p = 0; p < n; ++p) {
        const double l = lam[p], z = (static_cast<double>(r[p]) - m[p]) / static_cast<double>(sd[p]);
        glam[p] = gc[p] * (1.0 / rest[p] - rest[p] + l * z * z);
        gsum[p] = 0.0;
      }
      for (int64_t j = 0; j < samples; ++j) {  // plane by plane: contiguous reads of gZ_j and eps_j
        const T* g = as_ptr<const T>(gZ) + (b * samples + j) * plane + c * n;
        const T* e = as_ptr<const T>(eps) + (b * samples + j) * plane + c * n;
        for (int64_t p = 0; p < n; ++p) {
          const double gj = g[p];
          glam[p] += gj * (static_cast<double>(r[p]) - m[p] - static_cast<double>(sd[p]) * e[p]);
          gsum[p] += gj;
        }
      }
      for (int64_t p = 0; p < n; ++p) {
        const double l = lam[p], sig = sd[p], diff = static_cast<double>(r[p]) - m[p];
        out_r[p] = static_cast<T>(l * gsum[p] + gc[p] * l * l * diff / (sig * sig));
      }
      smooth.adjoint(glam, gs, tmp);  // the adjoint of the reflect-padded smoothing
      T* out_a = as_ptr<T>(dalpha) + bc * n;
      for (int64_t p = 0; p < n; ++p) out_a[p] = static_cast<T>(gs[p] * s[p] * s_neg[p]);
    });
  });
}

}  // namespace fastattr
