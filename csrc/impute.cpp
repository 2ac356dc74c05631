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
// (R = 3 for an RGB image with one mask) until ||r|| <= tol ||b|| for each (or max_iter); the
// connected holes of at most kDirect pixels (all of them where a mask removes scattered pixels) are
// solved directly instead, by a dense Cholesky factorisation each.
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

// One thread's scratch for one call: buffers grown as needed and reused by every plane the thread
// solves (large per-plane vectors would otherwise be mapped, zeroed by page faults and unmapped plane
// after plane), freed when the call returns.
struct Workspace {
  std::vector<int32_t> column, dist, parent, count, slot, position;
  std::vector<double> cg, vectors, cg_vectors, dense;
};

template <typename V>
V* scratch(std::vector<V>& buffer, size_t count) {
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

// Components of at most this many removed pixels are solved directly (dense Cholesky: about s^3 / 6
// flops, less than the CG iterations their s unknowns would take); larger ones go to CG.
constexpr int64_t kDirect = 32;

// The unknowns CG runs on (the removed pixels of the large components, row-major): their removed
// neighbours (8 per unknown; index n, a slot that always holds 0, where the neighbour is known or
// outside; neighbours 0-3 come before the pixel in row-major order, 4-7 after it), s_i, omega / s_i
// and s_i / omega, and the SSOR factor omega.
struct Stencil {
  int64_t n = 0;
  std::vector<int32_t> nb;
  std::vector<double> diag, relax, scale;
  double omega = 1.0;

  // omega from the widest hole: d = the largest chessboard distance from a removed pixel to a known
  // one (a two-pass distance transform over the unknowns, through their neighbour table; has_known[k]
  // marks a known in-image neighbour), omega = 2 / (1 + pi / (2 d)), the optimal SOR factor of a
  // Laplacian on a grid of d points (Young), kept in [1, 1.95]. A hole with no known pixel counts as d = 1.
  void set_relaxation(const uint8_t* has_known, int32_t far, Workspace& ws) {
    int32_t* dist = scratch(ws.dist, n + 1);
    dist[n] = far;
    for (int64_t k = 0; k < n; ++k) {
      int32_t here = has_known[k] ? 1 : far;
      const int32_t* nk = nb.data() + k * 8;
      for (int j = 0; j < 4; ++j) here = std::min(here, dist[nk[j]] + 1);
      dist[k] = here;
    }
    int32_t widest = 1;
    for (int64_t k = n - 1; k >= 0; --k) {
      int32_t here = dist[k];
      const int32_t* nk = nb.data() + k * 8;
      for (int j = 4; j < 8; ++j) here = std::min(here, dist[nk[j]] + 1);
      dist[k] = here;
      widest = std::max(widest, here < far ? here : 1);
    }
    omega = std::min(1.95, std::max(1.0, 2.0 / (1.0 + M_PI / (2.0 * widest))));
    relax.resize(n);
    scale.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      relax[k] = omega / diag[k];
      scale[k] = diag[k] / omega;
    }
  }
};

// The removed pixels of one plane in row-major order: their flat positions, diagonal s_i, removed
// neighbours (as in Stencil, index n for none) and known in-image neighbours (bit j of known[k]),
// built in one pass over the plane (the unknowns away from the border take no bounds checks); then
// their 8-connected components (union-find): those of at most kDirect pixels listed for the direct
// solve (members grouped by component, starting at start[c]), the others compacted into cg; where
// the small components hold under a quarter of the unknowns, all of them go to cg uncompacted.
struct System {
  std::vector<int64_t> pixel;
  std::vector<double> diag;
  std::vector<int32_t> nb;
  std::vector<uint8_t> known;
  std::vector<int32_t> members, start;  // the small components
  std::vector<int32_t> big;              // cg's unknowns, as indices into pixel
  bool whole = false;                    // cg holds every unknown, in pixel's order (big unused)
  Stencil cg;

  System(const uint8_t* removed, int64_t height, int64_t width, Workspace& ws) {
    const int64_t n_pix = height * width;
    int32_t* column = scratch(ws.column, n_pix);
    int64_t n = 0;
    for (int64_t p = 0; p < n_pix; ++p) n += removed[p] != 0;
    pixel.resize(n + 1);
    for (int64_t p = 0, k = 0; p < n_pix; ++p) {  // branch-free: the mask's pattern is unpredictable
      const bool hole = removed[p] != 0;
      column[p] = hole ? static_cast<int32_t>(k) : -1;
      pixel[k] = p;
      k += hole;
    }
    pixel.resize(n);
    diag.assign(n, 1.0);  // 4 / 6 + 4 / 12: every neighbour in the image
    nb.resize(n * 8);
    known.assign(n, 0);
    int64_t offset[8];
    for (int j = 0; j < 8; ++j) offset[j] = kDy[j] * width + kDx[j];
    for (int64_t k = 0; k < n; ++k) {
      const int64_t p = pixel[k], y = p / width, x = p - y * width;
      int32_t* nk = nb.data() + k * 8;
      uint8_t bits = 0;
      if (y > 0 && y < height - 1 && x > 0 && x < width - 1) {
        for (int j = 0; j < 8; ++j) {
          const int32_t c = column[p + offset[j]];
          nk[j] = c >= 0 ? c : static_cast<int32_t>(n);
          bits |= static_cast<uint8_t>((c < 0) << j);
        }
      } else {
        double s = 0.0;
        for (int j = 0; j < 8; ++j) {
          nk[j] = static_cast<int32_t>(n);
          const int64_t yy = y + kDy[j], xx = x + kDx[j];
          if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
          s += kW[j];
          const int32_t c = column[p + offset[j]];
          if (c >= 0) nk[j] = c;
          else bits |= static_cast<uint8_t>(1 << j);
        }
        diag[k] = s;
      }
      known[k] = bits;
    }
    split(n, static_cast<int32_t>(height + width), ws);
  }

  int64_t size() const { return static_cast<int64_t>(pixel.size()); }

 private:
  void split(int64_t n, int32_t far, Workspace& ws) {
    int32_t* parent = scratch(ws.parent, n);
    auto root = [parent](int32_t k) {
      while (parent[k] != k) k = parent[k] = parent[parent[k]];
      return k;
    };
    // One raster pass joining each pixel to its earlier neighbours (0-3; roots are the smallest
    // index of their set). The pixel above (1) touches the other three, which were joined to it when
    // they were visited: alone it suffices; without it, upper-left (0) and left (3) touch each other,
    // so one of them and the upper-right (2) do.
    for (int64_t k = 0; k < n; ++k) {
      const int32_t* nk = nb.data() + k * 8;
      const int32_t side = nk[3] != n ? nk[3] : nk[0];
      parent[k] = static_cast<int32_t>(k);
      if (nk[1] != n) {
        parent[k] = root(nk[1]);
        continue;
      }
      if (side != n) parent[k] = root(side);
      if (nk[2] != n) {
        const int32_t a = root(nk[2]), b = root(static_cast<int32_t>(k));
        if (a != b) parent[std::max(a, b)] = std::min(a, b);
      }
    }
    int32_t* count = scratch(ws.count, n);
    std::fill(count, count + n, 0);
    for (int64_t k = 0; k < n; ++k) ++count[parent[k] = root(static_cast<int32_t>(k))];
    // Small components: members grouped by component (in order of their first pixel), row-major
    // within; slot[root] is the component's next free place while filling.
    int32_t* slot = scratch(ws.slot, n + 1);
    int32_t n_small = 0;
    start.clear();
    for (int64_t k = 0; k < n; ++k)
      if (parent[k] == k && count[k] <= kDirect) {
        start.push_back(n_small);
        slot[k] = n_small;
        n_small += count[k];
      }
    start.push_back(n_small);
    big.clear();
    if (4 * static_cast<int64_t>(n_small) < n) {  // mostly large holes: every unknown to CG, as it is
      start.assign(1, 0);
      whole = true;
      cg.n = n;
      cg.nb.swap(nb);
      cg.diag = diag;
      std::vector<uint8_t> has_known(n);
      for (int64_t k = 0; k < n; ++k) has_known[k] = known[k] != 0;
      cg.set_relaxation(has_known.data(), far, ws);
      return;
    }
    members.resize(n_small);
    for (int64_t k = 0; k < n; ++k) {
      const int32_t r = parent[k];
      if (count[r] <= kDirect) members[slot[r]++] = static_cast<int32_t>(k);
      else big.push_back(static_cast<int32_t>(k));
    }
    cg.n = static_cast<int64_t>(big.size());
    if (cg.n == 0) return;
    int32_t* index = scratch(ws.slot, n + 1);  // reused: the cg index of each big unknown
    for (int64_t i = 0; i < cg.n; ++i) index[big[i]] = static_cast<int32_t>(i);
    index[n] = static_cast<int32_t>(cg.n);  // "no removed neighbour" maps to cg's own zero slot
    cg.nb.resize(cg.n * 8);
    cg.diag.resize(cg.n);
    std::vector<uint8_t> has_known(cg.n);
    for (int64_t i = 0; i < cg.n; ++i) {
      const int32_t k = big[i];
      for (int j = 0; j < 8; ++j)  // a removed neighbour of a big unknown is in its component
        cg.nb[i * 8 + j] = index[nb[k * 8 + j]];
      cg.diag[i] = diag[k];
      has_known[i] = known[k] != 0;
    }
    cg.set_relaxation(has_known.data(), far, ws);
  }
};

// u = A^-1 b on one small component (members m[0 .. s), R right-hand sides interleaved in b and u,
// indexed by unknown): A's dense s x s matrix (s_i on the diagonal, -w_ij between removed neighbours;
// symmetric, irreducibly diagonally dominant, so positive definite) factored by Cholesky; one and two
// unknowns in closed form. work holds kDirect * (kDirect + R) doubles, position one int per unknown.
template <int R>
void solve_small(const System& sys, const int32_t* m, int64_t s, const double* b, double* u, double* work,
                 int32_t* position) {
  const int64_t n = sys.size();
  const double* diag = sys.diag.data();
  if (s == 1) {
    for (int c = 0; c < R; ++c) u[m[0] * R + c] = b[m[0] * R + c] / diag[m[0]];
    return;
  }
  if (s == 2) {
    const int32_t* n0 = sys.nb.data() + static_cast<int64_t>(m[0]) * 8;
    double w = 0.0;
    for (int j = 0; j < 8; ++j) w += n0[j] == m[1] ? kW[j] : 0.0;
    const double d0 = diag[m[0]], d1 = diag[m[1]], det = d0 * d1 - w * w;
    for (int c = 0; c < R; ++c) {
      const double b0 = b[m[0] * R + c], b1 = b[m[1] * R + c];
      u[m[0] * R + c] = (d1 * b0 + w * b1) / det;
      u[m[1] * R + c] = (w * b0 + d0 * b1) / det;
    }
    return;
  }
  double* a = work;
  double* x = a + s * s;
  std::fill(a, a + s * s, 0.0);
  for (int64_t i = 0; i < s; ++i) position[m[i]] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < s; ++i) {
    a[i * s + i] = diag[m[i]];
    const int32_t* nk = sys.nb.data() + static_cast<int64_t>(m[i]) * 8;
    for (int j = 0; j < 8; ++j)
      if (nk[j] != n) a[i * s + position[nk[j]]] = -kW[j];
    for (int c = 0; c < R; ++c) x[i * R + c] = b[m[i] * R + c];
  }
  for (int64_t j = 0; j < s; ++j) {  // A = L L^T, L in the lower triangle of a
    double d = a[j * s + j];
    for (int64_t k = 0; k < j; ++k) d -= a[j * s + k] * a[j * s + k];
    d = std::sqrt(d);
    a[j * s + j] = d;
    for (int64_t i = j + 1; i < s; ++i) {
      double v = a[i * s + j];
      for (int64_t k = 0; k < j; ++k) v -= a[i * s + k] * a[j * s + k];
      a[i * s + j] = v / d;
    }
  }
  for (int64_t i = 0; i < s; ++i)  // L y = b
    for (int c = 0; c < R; ++c) {
      double v = x[i * R + c];
      for (int64_t k = 0; k < i; ++k) v -= a[i * s + k] * x[k * R + c];
      x[i * R + c] = v / a[i * s + i];
    }
  for (int64_t i = s - 1; i >= 0; --i)  // L^T u = y
    for (int c = 0; c < R; ++c) {
      double v = x[i * R + c];
      for (int64_t k = i + 1; k < s; ++k) v -= a[k * s + i] * x[k * R + c];
      x[i * R + c] = v / a[i * s + i];
    }
  for (int64_t i = 0; i < s; ++i)
    for (int c = 0; c < R; ++c) u[m[i] * R + c] = x[i * R + c];
}

// Preconditioned CG (SSOR) on R right-hand sides of one plane at once (R = 1: a per-channel mask;
// R = 3: an RGB image with one mask), vectors stored interleaved ([n (+ 1)][R], row n held at 0):
// b and u are [n][R] over the compacted unknowns; false when max_iter ran out before
// ||r|| <= tol ||b|| for all of them.
//
// With A = D + L + L^T (L the removed neighbours' -w_ij below the diagonal) and P = D/omega + L, the
// SSOR preconditioner is M = P (D/omega)^-1 P^T. Eisenstat's form of the same iteration: CG on
// A^ = P^-1 A P^-T (x = P^-T x^, b^ = P^-1 b) preconditioned by (D/omega)^-1, where, since
// A = P + P^T - K with K = (2/omega - 1) D,
//   A^ d = t + P^-1 (d - K t),  t = P^-T d:
// one backward and one forward sweep per iteration, no product with A (the iterates are those of
// SSOR-preconditioned CG on A). The true residual r = P r^ is summed in the update sweep.
template <int R>
bool solve_plane(const Stencil& sys, const double* b, double* u, double tol, int64_t max_iter, Workspace& ws) {
  const int64_t n = sys.n;
  const int32_t* nb = sys.nb.data();
  const double* diag = sys.diag.data();
  const double* relax = sys.relax.data();
  const double* scale = sys.scale.data();
  const double shrink = 2.0 / sys.omega - 1.0;
  double* rh = scratch(ws.cg, (5 * n + 3) * R);  // r^, t and y with a zero row n; d and q
  double* t = rh + (n + 1) * R;
  double* y = t + (n + 1) * R;
  double* d = y + (n + 1) * R;
  double* q = d + n * R;
  double* xh = u;  // x^ accumulates in u, mapped back to x = P^-T x^ at the end
  std::fill(rh + n * R, rh + (n + 1) * R, 0.0);
  std::fill(t + n * R, t + (n + 1) * R, 0.0);
  std::fill(y + n * R, y + (n + 1) * R, 0.0);
  std::fill(xh, xh + n * R, 0.0);
  double rz[R] = {}, stop[R], alpha[R], beta[R];
  bool done[R];
  for (int c = 0; c < R; ++c) {
    double bb = 0.0;
    for (int64_t k = 0; k < n; ++k) bb += b[k * R + c] * b[k * R + c];
    stop[c] = tol * tol * bb;
    done[c] = bb == 0.0;
  }
  // r^ = P^-1 b (forward sweep); z = (D/omega) r^ = r^ / relax; d = z.
  for (int64_t k = 0; k < n; ++k) {
    const int32_t* nk = nb + k * 8;
    for (int c = 0; c < R; ++c) {
      double acc = b[k * R + c];
      for (int j = 0; j < 4; ++j) acc += kW[j] * rh[nk[j] * R + c];
      const double v = acc * relax[k];
      rh[k * R + c] = v;
      d[k * R + c] = v * scale[k];
      rz[c] += v * v * scale[k];
    }
  }
  for (int64_t it = 0; it < max_iter; ++it) {
    bool all_done = true;
    for (int c = 0; c < R; ++c) all_done = all_done && done[c];
    if (all_done) break;
    for (int64_t k = n - 1; k >= 0; --k) {  // t = P^-T d
      const int32_t* nk = nb + k * 8;
      for (int c = 0; c < R; ++c) {
        double acc = d[k * R + c];
        for (int j = 4; j < 8; ++j) acc += kW[j] * t[nk[j] * R + c];
        t[k * R + c] = acc * relax[k];
      }
    }
    double dq[R] = {};
    for (int64_t k = 0; k < n; ++k) {  // y = P^-1 (d - K t), q = t + y
      const int32_t* nk = nb + k * 8;
      for (int c = 0; c < R; ++c) {
        double acc = d[k * R + c] - shrink * diag[k] * t[k * R + c];
        for (int j = 0; j < 4; ++j) acc += kW[j] * y[nk[j] * R + c];
        const double v = acc * relax[k];
        y[k * R + c] = v;
        q[k * R + c] = t[k * R + c] + v;
        dq[c] += d[k * R + c] * q[k * R + c];
      }
    }
    for (int c = 0; c < R; ++c) {
      if (!(dq[c] > 0.0)) done[c] = true;
      alpha[c] = done[c] ? 0.0 : rz[c] / dq[c];
    }
    double rr[R] = {}, rz_new[R] = {};
    for (int64_t k = 0; k < n; ++k) {  // x^ += alpha d, r^ -= alpha q, r = P r^, z = r^ / relax
      const int32_t* nk = nb + k * 8;
      for (int c = 0; c < R; ++c) {
        xh[k * R + c] += alpha[c] * d[k * R + c];
        const double v = rh[k * R + c] - alpha[c] * q[k * R + c];
        rh[k * R + c] = v;
        double acc = v * scale[k];
        for (int j = 0; j < 4; ++j) acc -= kW[j] * rh[nk[j] * R + c];
        rr[c] += acc * acc;
        rz_new[c] += v * v * scale[k];
      }
    }
    for (int c = 0; c < R; ++c) {
      done[c] = done[c] || rr[c] <= stop[c];
      beta[c] = rz[c] > 0.0 ? rz_new[c] / rz[c] : 0.0;
      rz[c] = rz_new[c];
    }
    for (int64_t k = 0; k < n; ++k)
      for (int c = 0; c < R; ++c) d[k * R + c] = rh[k * R + c] * scale[k] + beta[c] * d[k * R + c];
  }
  for (int64_t k = n - 1; k >= 0; --k) {  // x = P^-T x^, through t (whose row n is 0)
    const int32_t* nk = nb + k * 8;
    for (int c = 0; c < R; ++c) {
      double acc = xh[k * R + c];
      for (int j = 4; j < 8; ++j) acc += kW[j] * t[nk[j] * R + c];
      t[k * R + c] = acc * relax[k];
    }
  }
  std::copy(t, t + n * R, u);
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
                    double tol, int64_t max_iter, Workspace& ws) {
  const int64_t n = sys.size(), n_pix = height * width;
  if (from_image) std::copy(rhs, rhs + n_pix * R, out);
  else std::fill(out, out + n_pix * R, T(0));
  if (n == 0) return true;
  double* b = scratch(ws.vectors, 2 * n * R);
  double* u = b + n * R;
  if (!from_image) {
    for (int64_t k = 0; k < n; ++k)
      for (int c = 0; c < R; ++c) b[k * R + c] = static_cast<double>(rhs[c * n_pix + sys.pixel[k]]);
  } else {
    int64_t offset[8];
    for (int j = 0; j < 8; ++j) offset[j] = kDy[j] * width + kDx[j];
    for (int64_t k = 0; k < n; ++k) {
      const int64_t p = sys.pixel[k], y = p / width, x = p - y * width;
      const uint8_t bits = sys.known[k];
      double acc[R] = {};
      if (y > 0 && y < height - 1 && x > 0 && x < width - 1) {  // no branch on the (random) known bits
        for (int j = 0; j < 8; ++j) {
          const double w = (bits >> j & 1) ? kW[j] : 0.0;
          for (int c = 0; c < R; ++c) acc[c] += w * static_cast<double>(rhs[c * n_pix + p + offset[j]]);
        }
      } else {
        for (int j = 0; j < 8; ++j) {
          if (!(bits >> j & 1)) continue;
          for (int c = 0; c < R; ++c) acc[c] += kW[j] * static_cast<double>(rhs[c * n_pix + p + offset[j]]);
        }
      }
      for (int c = 0; c < R; ++c) b[k * R + c] = acc[c];
    }
  }
  bool ok = true;
  if (n == n_pix) {
    std::fill(u, u + n_pix * R, 0.0);  // no known pixel: the singular system gives zeros
  } else {
    if (sys.start.size() > 1) {
      double* work = scratch(ws.dense, kDirect * (kDirect + R));
      int32_t* position = scratch(ws.position, n);
      for (size_t c = 0; c + 1 < sys.start.size(); ++c)
        solve_small<R>(sys, sys.members.data() + sys.start[c], sys.start[c + 1] - sys.start[c], b, u, work,
                       position);
    }
    const int64_t n_cg = sys.cg.n;
    if (sys.whole) {
      ok = solve_plane<R>(sys.cg, b, u, tol, max_iter, ws);
    } else if (n_cg > 0) {
      double* b_cg = scratch(ws.cg_vectors, 2 * n_cg * R);
      double* u_cg = b_cg + n_cg * R;
      for (int64_t i = 0; i < n_cg; ++i)
        for (int c = 0; c < R; ++c) b_cg[i * R + c] = b[sys.big[i] * R + c];
      ok = solve_plane<R>(sys.cg, b_cg, u_cg, tol, max_iter, ws);
      for (int64_t i = 0; i < n_cg; ++i)
        for (int c = 0; c < R; ++c) u[sys.big[i] * R + c] = u_cg[i * R + c];
    }
  }
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
    std::vector<Workspace> spaces(std::max(1, n_threads));
    auto run = [&](int64_t g, Workspace& ws) {
      const System sys(as_ptr<const uint8_t>(removed) + g * n_pix, height, width, ws);
      const T* b = as_ptr<const T>(rhs) + g * n_rhs * n_pix;
      T* u = as_ptr<T>(out) + g * n_rhs * n_pix;
      if (n_rhs == 3) return solve_channels<T, 3>(sys, b, u, height, width, from_image, tol, max_iter, ws);
      bool ok = true;
      for (int64_t c = 0; c < n_rhs; ++c)
        ok = solve_channels<T, 1>(sys, b + c * n_pix, u + c * n_pix, height, width, from_image, tol, max_iter, ws)
             && ok;
      return ok;
    };
#ifdef FASTATTR_OPENMP
    if (worth_parallel(tasks, n_pix, n_threads)) {
      int64_t missed = 0;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) reduction(+ : missed)
      for (int64_t t = 0; t < tasks; ++t) missed += run(t, spaces[omp_get_thread_num()]) ? 0 : 1;
      failed = missed;
      return;
    }
#endif
    for (int64_t t = 0; t < tasks; ++t) failed += run(t, spaces[0]) ? 0 : 1;
  });
  return failed;
}

}  // namespace fastattr
