// stencil_solve (SPEC §11): the sparse system of noisy linear imputation, solved by conjugate
// gradients on the removed pixels of each plane, CPU.
//
//   s_i u_i - sum_{j in N(i), j removed} w_ij u_j = b_i   for every removed pixel i,
//
// N(i) the in-image 8-neighbours (w = 1/6 edge, 1/12 corner), s_i = sum_{j in N(i)} w_ij.
// rhs and out are [G, R, H, W] (R right-hand sides per mask plane), removed [G, H, W] uint8.
// With from_image, rhs is the image itself: b is built from its known pixels and out is the
// imputed image (linear_impute: the right-hand side, solve and write-back fused in one pass).
// One task per plane, split over OpenMP threads; the unknowns are compacted with their neighbour
// table, and SSOR-preconditioned CG runs in double on all R right-hand sides of the plane at once
// (R = 3 for an RGB image with one mask) until ||r|| <= tol ||b|| for each (or max_iter).
// A plane with no known pixel (singular system) and known pixels give zeros.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace fastattr {
namespace {

constexpr int kDy[8] = {-1, -1, -1, 0, 0, 1, 1, 1};
constexpr int kDx[8] = {-1, 0, 1, -1, 1, -1, 0, 1};
constexpr double kW[8] = {1.0 / 12, 1.0 / 6, 1.0 / 12, 1.0 / 6, 1.0 / 6, 1.0 / 12, 1.0 / 6, 1.0 / 12};

// The removed pixels of one plane in row-major order: their flat positions, diagonal s_i and
// removed neighbours (8 per unknown; index n, a slot that always holds 0, where the neighbour is
// known or outside). Neighbours 0-3 come before the pixel in row-major order, 4-7 after it.
struct System {
  std::vector<int64_t> pixel;
  std::vector<double> diag, relax;  // s_i and omega / s_i
  std::vector<int32_t> nb;
  double omega = 1.0;

  System(const uint8_t* removed, int64_t height, int64_t width) {
    const int64_t n_pix = height * width;
    std::vector<int32_t> column(n_pix, -1);
    for (int64_t p = 0; p < n_pix; ++p)
      if (removed[p]) {
        column[p] = static_cast<int32_t>(pixel.size());
        pixel.push_back(p);
      }
    const int64_t n = size();
    diag.assign(n, 0.0);
    nb.assign(n * 8, static_cast<int32_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      const int64_t y = pixel[k] / width, x = pixel[k] % width;
      for (int j = 0; j < 8; ++j) {
        const int64_t yy = y + kDy[j], xx = x + kDx[j];
        if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
        diag[k] += kW[j];
        if (column[yy * width + xx] >= 0) nb[k * 8 + j] = column[yy * width + xx];
      }
    }
    // SSOR relaxation from the widest hole: d = the largest chessboard distance from a removed
    // pixel to a known one (two-pass distance transform), omega = 2 / (1 + pi / (2 d)), the optimal
    // SOR factor of a Laplacian on a grid of d points (Young), kept in [1, 1.95].
    std::vector<int32_t> dist(n_pix);
    const int32_t far = static_cast<int32_t>(height + width);
    for (int64_t p = 0; p < n_pix; ++p) dist[p] = removed[p] ? far : 0;
    for (int64_t y = 0; y < height; ++y)  // row and column loops: no division per pixel
      for (int64_t x = 0; x < width; ++x) {
        int32_t& here = dist[y * width + x];
        if (here == 0) continue;
        for (int j = 0; j < 4; ++j) {
          const int64_t yy = y + kDy[j], xx = x + kDx[j];
          if (yy >= 0 && xx >= 0 && xx < width) here = std::min(here, dist[yy * width + xx] + 1);
        }
      }
    int32_t widest = 1;
    for (int64_t y = height - 1; y >= 0; --y)
      for (int64_t x = width - 1; x >= 0; --x) {
        int32_t& here = dist[y * width + x];
        if (here == 0) continue;
        for (int j = 4; j < 8; ++j) {
          const int64_t yy = y + kDy[j], xx = x + kDx[j];
          if (yy < height && xx >= 0 && xx < width) here = std::min(here, dist[yy * width + xx] + 1);
        }
        widest = std::max(widest, here < far ? here : 1);
      }
    omega = std::min(1.95, std::max(1.0, 2.0 / (1.0 + M_PI / (2.0 * widest))));
    relax.resize(n);
    for (int64_t k = 0; k < n; ++k) relax[k] = omega / diag[k];
  }

  int64_t size() const { return static_cast<int64_t>(pixel.size()); }
};

// Preconditioned CG (SSOR) on R right-hand sides of one plane at once (R = 1: a per-channel mask;
// R = 3: an RGB image with one mask), vectors stored interleaved ([n + 1][R], row n held at 0):
// b and u are [n][R] over the compacted unknowns; false when max_iter ran out before
// ||r|| <= tol ||b|| for all of them.
template <int R>
bool solve_plane(const System& sys, const double* b, double* u, double tol, int64_t max_iter) {
  const int64_t n = sys.size();
  std::vector<double> r(b, b + n * R), z((n + 1) * R, 0.0), d((n + 1) * R, 0.0), q(n * R);
  std::fill(u, u + n * R, 0.0);
  double rz[R], stop[R], alpha[R], beta[R];
  bool done[R];
  const int32_t* nb = sys.nb.data();
  const double* diag = sys.diag.data();
  const double* relax = sys.relax.data();
  double* rp = r.data();
  double* zp = z.data();
  double* dp = d.data();
  double* qp = q.data();
  double* up = u;
  for (int c = 0; c < R; ++c) {
    double bb = 0.0;
    for (int64_t k = 0; k < n; ++k) bb += rp[k * R + c] * rp[k * R + c];
    stop[c] = tol * tol * bb;
    done[c] = bb == 0.0;
  }
  // z = M^-1 r, M ∝ (D/ω + L)(D/ω)^-1(D/ω + L^T): a forward sweep, then z_k = y_k + ω/s_k Σ_upper;
  // returns r·z per right-hand side.
  auto precondition = [&](double* rz_out) {
    for (int64_t k = 0; k < n; ++k) {
      const int32_t* nk = nb + k * 8;
      for (int c = 0; c < R; ++c) {
        double acc = rp[k * R + c];
        for (int j = 0; j < 4; ++j) acc += kW[j] * zp[nk[j] * R + c];
        zp[k * R + c] = acc * relax[k];
      }
    }
    double sum[R] = {};
    for (int64_t k = n - 1; k >= 0; --k) {
      const int32_t* nk = nb + k * 8;
      for (int c = 0; c < R; ++c) {
        double acc = 0.0;
        for (int j = 4; j < 8; ++j) acc += kW[j] * zp[nk[j] * R + c];
        const double v = zp[k * R + c] + acc * relax[k];
        zp[k * R + c] = v;
        sum[c] += rp[k * R + c] * v;
      }
    }
    for (int c = 0; c < R; ++c) rz_out[c] = sum[c];
  };
  precondition(rz);
  for (int64_t i = 0; i < n * R; ++i) dp[i] = zp[i];
  for (int64_t it = 0; it < max_iter; ++it) {
    bool all_done = true;
    for (int c = 0; c < R; ++c) all_done = all_done && done[c];
    if (all_done) break;
    double dq[R] = {};
    for (int64_t k = 0; k < n; ++k) {
      const int32_t* nk = nb + k * 8;
      for (int c = 0; c < R; ++c) {
        double acc = 0.0;
        for (int j = 0; j < 8; ++j) acc += kW[j] * dp[nk[j] * R + c];
        const double v = diag[k] * dp[k * R + c] - acc;
        qp[k * R + c] = v;
        dq[c] += dp[k * R + c] * v;
      }
    }
    for (int c = 0; c < R; ++c) {
      if (!(dq[c] > 0.0)) done[c] = true;
      alpha[c] = done[c] ? 0.0 : rz[c] / dq[c];
    }
    double rr[R] = {};
    for (int64_t k = 0; k < n; ++k)
      for (int c = 0; c < R; ++c) {
        up[k * R + c] += alpha[c] * dp[k * R + c];
        const double v = rp[k * R + c] - alpha[c] * qp[k * R + c];
        rp[k * R + c] = v;
        rr[c] += v * v;
      }
    for (int c = 0; c < R; ++c) done[c] = done[c] || rr[c] <= stop[c];
    double rz_new[R];
    precondition(rz_new);
    for (int c = 0; c < R; ++c) {
      beta[c] = rz[c] > 0.0 ? rz_new[c] / rz[c] : 0.0;
      rz[c] = rz_new[c];
    }
    for (int64_t k = 0; k < n; ++k)
      for (int c = 0; c < R; ++c) dp[k * R + c] = zp[k * R + c] + beta[c] * dp[k * R + c];
  }
  bool all_done = true;
  for (int c = 0; c < R; ++c) all_done = all_done && done[c];
  return all_done;
}

// One plane with its R channels (rhs and out [R, n_pix]). from_image = false: rhs is b on the full
// plane, out gets u on the removed pixels and 0 elsewhere. from_image = true: rhs is the image x,
// b_i = sum over the known in-image neighbours j of w_ij x_j is built here, and out gets x on the
// known pixels and u on the removed ones (the imputed image, in one pass).
template <typename T, int R>
bool solve_channels(const System& sys, const T* rhs, T* out, int64_t height, int64_t width, bool from_image,
                    double tol, int64_t max_iter) {
  const int64_t n = sys.size(), n_pix = height * width;
  for (int64_t p = 0; p < n_pix * R; ++p) out[p] = from_image ? rhs[p] : T(0);
  if (n == 0) return true;
  std::vector<double> b(n * R, 0.0), u(n * R, 0.0);
  if (n < n_pix) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t p = sys.pixel[k];
      if (!from_image) {
        for (int c = 0; c < R; ++c) b[k * R + c] = static_cast<double>(rhs[c * n_pix + p]);
        continue;
      }
      const int64_t y = p / width, x = p % width;
      for (int j = 0; j < 8; ++j) {
        const int64_t yy = y + kDy[j], xx = x + kDx[j];
        if (yy < 0 || yy >= height || xx < 0 || xx >= width || sys.nb[k * 8 + j] != n) continue;
        for (int c = 0; c < R; ++c) b[k * R + c] += kW[j] * static_cast<double>(rhs[c * n_pix + yy * width + xx]);
      }
    }
  }
  const bool ok = n == n_pix || solve_plane<R>(sys, b.data(), u.data(), tol, max_iter);
  for (int64_t k = 0; k < n; ++k)
    for (int c = 0; c < R; ++c) out[c * n_pix + sys.pixel[k]] = static_cast<T>(u[k * R + c]);
  return ok;
}

}  // namespace

int64_t stencil_solve(std::uintptr_t rhs, std::uintptr_t removed, std::uintptr_t out, int64_t groups,
                      int64_t n_rhs, int64_t height, int64_t width, bool from_image, double tol,
                      int64_t max_iter, const std::string& dtype, int n_threads) {
  int64_t failed = 0;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n_pix = height * width;
    const int64_t tasks = groups;
    auto run = [&](int64_t g) {
      const System sys(as_ptr<const uint8_t>(removed) + g * n_pix, height, width);
      const T* b = as_ptr<const T>(rhs) + g * n_rhs * n_pix;
      T* u = as_ptr<T>(out) + g * n_rhs * n_pix;
      if (n_rhs == 3) return solve_channels<T, 3>(sys, b, u, height, width, from_image, tol, max_iter);
      bool ok = true;
      for (int64_t c = 0; c < n_rhs; ++c)
        ok = solve_channels<T, 1>(sys, b + c * n_pix, u + c * n_pix, height, width, from_image, tol, max_iter) && ok;
      return ok;
    };
#ifdef FASTATTR_OPENMP
    if (worth_parallel(tasks, n_pix, n_threads)) {
      int64_t missed = 0;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) reduction(+ : missed)
      for (int64_t t = 0; t < tasks; ++t) missed += run(t) ? 0 : 1;
      failed = missed;
      return;
    }
#endif
    for (int64_t t = 0; t < tasks; ++t) failed += run(t) ? 0 : 1;
  });
  return failed;
}

}  // namespace fastattr
