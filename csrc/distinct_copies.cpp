// SOP's distinct masked copies (You et al., "Sum-of-Parts Models", §3; SPEC §6), CPU kernels.
//
// distinct_slots: given first [B, G] (each group's first group of the same input with the same mask), the
// distinct groups (first[b, g] == g) are numbered example-major: slot[b, g] is the copy a group reads and
// rows[n] the flat group (b * G + g) of copy n. Returns N, or minus the number of entries of first that do
// not point at a distinct group at or before their own.
// distinct_copies: copies[n, c, l] = x[b, c, l] * masks[rows[n], unit_patch[l]] for copy n of example b
// (the mask as 0 or 1 of x's type, a product, so the bits are those of S ⊙ x). Returns the number of
// unit_patch entries outside [0, P) (then nothing is written).
#include <vector>

#include "common.h"

namespace fastattr {

int64_t distinct_slots(std::uintptr_t first, std::uintptr_t slot, std::uintptr_t rows, int64_t batch, int64_t G) {
  const int64_t* f = as_ptr<const int64_t>(first);
  int64_t* s = as_ptr<int64_t>(slot);
  int64_t* r = as_ptr<int64_t>(rows);
  int64_t bad = 0;
  for (int64_t i = 0; i < batch * G; ++i) {
    const int64_t g = i % G, fg = f[i];
    bad += fg < 0 || fg > g || f[i - g + fg] != fg;
  }
  if (bad) return -bad;
  int64_t n = 0;
  for (int64_t i = 0; i < batch * G; ++i) {
    const int64_t g = i % G, fg = f[i];
    if (fg == g) {
      r[n] = i;
      s[i] = n++;
    } else {
      s[i] = s[i - g + fg];
    }
  }
  return n;
}

namespace {

template <typename T>
FASTATTR_MULTIVERSION void copy_row(const T* x, const bool* mask, const int64_t* unit_patch, T* out, int64_t C,
                                    int64_t L) {
  for (int64_t c = 0; c < C; ++c) {
    const T* xs = x + c * L;
    T* os = out + c * L;
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) os[l] = xs[l] * (mask[unit_patch[l]] ? T(1) : T(0));
  }
}

}  // namespace

int64_t distinct_copies(std::uintptr_t x, std::uintptr_t masks, std::uintptr_t rows, std::uintptr_t unit_patch,
                        std::uintptr_t out, int64_t N, int64_t G, int64_t C, int64_t L, int64_t P,
                        const std::string& dtype, int n_threads) {
  const int64_t* up = as_ptr<const int64_t>(unit_patch);
  int64_t bad = 0;
  for (int64_t l = 0; l < L; ++l) bad += up[l] < 0 || up[l] >= P;
  if (bad) return bad;
  const int64_t* r = as_ptr<const int64_t>(rows);
  const bool* m = as_ptr<const bool>(masks);
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xx = as_ptr<const T>(x);
    T* oo = as_ptr<T>(out);
    parallel_rows(N, C * L, n_threads, [&](int64_t n) {
      copy_row(xx + (r[n] / G) * C * L, m + r[n] * P, up, oo + n * C * L, C, L);
    });
  });
  return 0;
}

}  // namespace fastattr
