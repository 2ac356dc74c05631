// Batched simplex QP (SPEC §5.1; AGG, "Optimized aggregation of attributions", §4), CPU kernel:
// per example  w* = argmin_{w >= 0, sum w = 1}  f(w) = w'Gw + c'w,  G [k, k] PSD, k <= 64.
//
// Exact primal active-set method (an inertia-controlling one, Gill & Murray / Nocedal & Wright
// §16.5) in double, on f(w) = 1/2 w'Hw + c'w with H = G + G' (only G's symmetric part matters).
// The free set F holds the variables allowed to be positive; the others are 0. On the face of F
// (sum_F w = 1) the reduced Hessian A = Z'H_FF Z, with Z eliminating the first free variable r
// (A_ab = H_ab - H_ar - H_rb + H_rr), is positive definite except right after a variable joins.
// Each iteration factors A (Cholesky, newest variable last) and either
//   - takes the Newton step to the face's minimiser, cut short by the first variable to hit 0
//     (which leaves F), or,
//   - where a pivot vanishes (zero curvature: rank-deficient G, duplicated methods), moves along
//     that null direction, downhill, until a variable hits 0 (the simplex is bounded), which
//     restores a positive definite A.
// At the face's minimiser, with multiplier nu = g_r (g = Hw + c), the most negative reduced cost
// g_j - nu joins F; when none is below -tol the KKT conditions hold and w is optimal. It starts at
// the best vertex and stops in finitely many steps (capped at 50 k + 50 iterations, reported).
// Convention: G = 0 is a linear problem; w is uniform over argmin c (over all k when c is absent).
// Examples run in parallel (OpenMP, torch's thread count); float32 data is computed in double.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace fastattr {
namespace {

// Per-thread scratch, sized for one example.
struct Work {
  std::vector<double> H, c, w, g, A, b, p, d;
  std::vector<int> free_set;
  std::vector<char> is_free;
  void resize(int64_t k) {
    const size_t n = static_cast<size_t>(k);
    H.resize(n * n);
    c.resize(n);
    w.resize(n);
    g.resize(n);
    A.resize(n * n);
    b.resize(n);
    p.resize(n);
    d.resize(n);
    free_set.reserve(n);
    is_free.resize(n);
  }
};

// In-place Cholesky of the leading rows of the m x m matrix A (row-major, lower triangle).
// Returns m when A is positive definite, else the first row q whose pivot is <= tol; rows < q
// then hold the factor L11 of the leading q x q block.
int cholesky(double* A, int m, double tol) {
  for (int q = 0; q < m; ++q) {
    double* Aq = A + q * m;
    for (int j = 0; j < q; ++j) {
      const double* Aj = A + j * m;
      double s = Aq[j];
      for (int i = 0; i < j; ++i) s -= Aq[i] * Aj[i];
      Aq[j] = s / Aj[j];
    }
    double s = Aq[q];
    for (int i = 0; i < q; ++i) s -= Aq[i] * Aq[i];
    if (!(s > tol)) return q;
    Aq[q] = std::sqrt(s);
  }
  return m;
}

// Solves L L' x = x in place with the factor in the first n rows of A (row stride m).
void cholesky_solve(const double* A, int m, int n, double* x) {
  for (int i = 0; i < n; ++i) {
    double s = x[i];
    for (int j = 0; j < i; ++j) s -= A[i * m + j] * x[j];
    x[i] = s / A[i * m + i];
  }
  for (int i = n - 1; i >= 0; --i) {
    double s = x[i];
    for (int j = i + 1; j < n; ++j) s -= A[j * m + i] * x[j];
    x[i] = s / A[i * m + i];
  }
}

// Solves one example; returns false when the iteration cap was reached.
template <typename T>
bool solve_one(const T* G_in, const T* c_in, T* w_out, int64_t k, Work& s) {
  const int n = static_cast<int>(k);
  double* H = s.H.data();
  double* c = s.c.data();
  double* w = s.w.data();
  double* g = s.g.data();
  double hmax = 0.0, cmax = 0.0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      H[i * n + j] = static_cast<double>(G_in[i * n + j]) + static_cast<double>(G_in[j * n + i]);
      hmax = std::max(hmax, std::fabs(H[i * n + j]));
    }
    c[i] = c_in ? static_cast<double>(c_in[i]) : 0.0;
    cmax = std::max(cmax, std::fabs(c[i]));
    w[i] = 0.0;
  }
  if (hmax == 0.0) {  // linear: uniform over the minimisers of c
    const double cmin = *std::min_element(c, c + n);
    int count = 0;
    for (int i = 0; i < n; ++i) count += c[i] == cmin;
    for (int i = 0; i < n; ++i) w_out[i] = static_cast<T>(c[i] == cmin ? 1.0 / count : 0.0);
    return true;
  }
  const double eps = std::numeric_limits<double>::epsilon();
  const double piv_tol = 8.0 * n * eps * hmax;
  const double kkt_tol = 8.0 * n * eps * (hmax + cmax);

  // Start at the best vertex: f(e_i) = H_ii / 2 + c_i.
  int start = 0;
  for (int i = 1; i < n; ++i) {
    if (0.5 * H[i * n + i] + c[i] < 0.5 * H[start * n + start] + c[start]) start = i;
  }
  std::vector<int>& F = s.free_set;
  F.assign(1, start);
  std::fill(s.is_free.begin(), s.is_free.end(), 0);
  s.is_free[start] = 1;
  w[start] = 1.0;
  bool stationary = true;
  bool converged = false;
  const int max_iter = 50 * n + 50;
  for (int iter = 0; iter < max_iter; ++iter) {
    for (int i = 0; i < n; ++i) {
      double gi = c[i];
      for (int f : F) gi += H[i * n + f] * w[f];
      g[i] = gi;
    }
    const int r = F[0];
    if (stationary) {
      int enter = -1;
      double best = -kkt_tol;
      for (int j = 0; j < n; ++j) {
        if (!s.is_free[j] && g[j] - g[r] < best) {
          best = g[j] - g[r];
          enter = j;
        }
      }
      if (enter < 0) {
        converged = true;
        break;
      }
      F.push_back(enter);
      s.is_free[enter] = 1;
    }
    // Reduced Hessian and gradient in the coordinates y_a = w_{F[a+1]}, w_r = 1 - sum_a y_a.
    const int m = static_cast<int>(F.size()) - 1;
    double* A = s.A.data();
    double* b = s.b.data();
    double* p = s.p.data();
    const double Hrr = H[r * n + r];
    for (int a = 0; a < m; ++a) {
      const int fa = F[a + 1];
      const double Har = H[fa * n + r];
      for (int e = 0; e <= a; ++e) {
        const int fe = F[e + 1];
        A[a * m + e] = H[fa * n + fe] - Har - H[r * n + fe] + Hrr;
      }
      b[a] = g[fa] - g[r];
    }
    const int q = cholesky(A, m, piv_tol);
    double full_step;
    if (q == m) {  // Newton step to the face's minimiser: A p = -b
      for (int a = 0; a < m; ++a) p[a] = -b[a];
      cholesky_solve(A, m, m, p);
      full_step = 1.0;
    } else {  // zero curvature along p = (-A11^{-1} a_q, 1, 0, ...), taken downhill
      for (int a = 0; a < q; ++a) {
        const int fa = F[a + 1], fq = F[q + 1];
        p[a] = -(H[fq * n + fa] - H[fq * n + r] - H[r * n + fa] + Hrr);
      }
      cholesky_solve(A, m, q, p);
      p[q] = 1.0;
      for (int a = q + 1; a < m; ++a) p[a] = 0.0;
      double slope = 0.0;
      for (int a = 0; a <= q; ++a) slope += b[a] * p[a];
      if (slope > 0.0) {
        for (int a = 0; a <= q; ++a) p[a] = -p[a];
      }
      full_step = std::numeric_limits<double>::infinity();
    }
    // The direction on F (d[0] for r) and the ratio test.
    double* d = s.d.data();
    double sum = 0.0;
    for (int a = 0; a < m; ++a) {
      d[a + 1] = p[a];
      sum += p[a];
    }
    d[0] = -sum;
    double step = full_step;
    int block = -1;
    for (int a = 0; a <= m; ++a) {
      if (d[a] < 0.0) {
        const double t = w[F[a]] / -d[a];
        if (t < step) {
          step = t;
          block = a;
        }
      }
    }
    if (block < 0 && !(step < std::numeric_limits<double>::infinity())) break;  // cannot happen: sum d = 0
    for (int a = 0; a <= m; ++a) w[F[a]] += step * d[a];
    if (block >= 0) w[F[block]] = 0.0;
    // Variables at (or, by rounding, below) 0 leave F; a cut-short step leaves the face unsolved.
    size_t kept = 0;
    for (size_t a = 0; a < F.size(); ++a) {
      const int f = F[a];
      if (w[f] > 0.0) {
        F[kept++] = f;
      } else {
        w[f] = 0.0;
        s.is_free[f] = 0;
      }
    }
    stationary = block < 0 && kept == F.size();
    F.resize(kept);
    if (F.empty()) {  // only rounding can empty F; restart from the best vertex
      F.push_back(start);
      s.is_free[start] = 1;
      w[start] = 1.0;
      stationary = true;
    }
  }
  double total = 0.0;
  for (int i = 0; i < n; ++i) total += w[i];
  for (int i = 0; i < n; ++i) w_out[i] = static_cast<T>(w[i] / total);
  return converged;
}

}  // namespace

int64_t simplex_qp(std::uintptr_t G, std::uintptr_t c, std::uintptr_t out, int64_t batch, int64_t k,
                   const std::string& dtype, int n_threads) {
  int64_t failed = 0;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* Gp = as_ptr<const T>(G);
    const T* cp = c ? as_ptr<const T>(c) : nullptr;
    T* wp = as_ptr<T>(out);
    int64_t bad = 0;
    // About 2 k^2 ns per example for AGG's G (a few active-set steps of O(k |F|) each).
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(batch, 2 * k * k, n_threads)) \
    reduction(+ : bad)
#endif
    {
      Work scratch;
      scratch.resize(k);
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
      for (int64_t e = 0; e < batch; ++e) {
        const bool ok = solve_one(Gp + e * k * k, cp ? cp + e * k : nullptr, wp + e * k, k, scratch);
        bad += ok ? 0 : 1;
      }
    }
    failed = bad;
  });
  return failed;
}

}  // namespace fastattr
