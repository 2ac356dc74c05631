// SOP GroupGen's group selection (You et al., "Sum-of-Parts Models", §3 and App. B; SPEC §6), CPU kernel.
//
// Per example b, candidate rows r of logits [R, n] (one patch-attention row each) are ranked by the
// peak of sparsemax(row) (its largest probability, -tau relative to the row max, with the bits of the
// sparsemax kernel), then by the row max, then by index; the first G rows are kept (rows [G]). Each
// kept row becomes the bool mask of its K largest logits, ties by index (masks [G, n]). first[g] is
// the first kept group whose mask equals group g's (g itself if none before): the groups whose
// masked copies are one input. Returns the number of rows holding NaN or +-inf (then nothing is valid).
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "common.h"
#include "group_masks.h"
#include "sparsemax.h"

namespace fastattr {
namespace {

// Rows of at most this many entries rank their entries by counting (branch-free, vectorised);
// longer rows partially sort their indices.
constexpr int64_t kCountRow = 64;

// Marks the K largest entries of row (ties by index) in mask.
template <typename T>
FASTATTR_MULTIVERSION void top_mask(const T* row, uint8_t* mask, int64_t n, int64_t K, std::vector<int64_t>& idx) {
  if (n <= kCountRow) {
    for (int64_t j = 0; j < n; ++j) {
      const T v = row[j];
      int64_t above = 0;
#pragma omp simd reduction(+ : above)
      for (int64_t i = 0; i < n; ++i) above += (row[i] > v) | ((row[i] == v) & (i < j));
      mask[j] = above < K;
    }
    return;
  }
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t(0));
  std::nth_element(idx.begin(), idx.begin() + (K - 1), idx.end(), [&](int64_t a, int64_t c) {
    return row[a] != row[c] ? row[a] > row[c] : a < c;
  });
  std::memset(mask, 0, static_cast<size_t>(n));
  for (int64_t j = 0; j < K; ++j) mask[idx[j]] = 1;
}

}  // namespace

template <typename T>
int64_t select_example(const T* z, uint8_t* masks, int64_t* rows, int64_t* first, int64_t R, int64_t n, int64_t G,
                       int64_t K, GroupScratch<T>& s) {
  s.peak.resize(static_cast<size_t>(R));
  s.top.resize(static_cast<size_t>(R));
  s.order.resize(static_cast<size_t>(R));
  int64_t bad = 0;
  for (int64_t r = 0; r < R; ++r) {
    const T* row = z + r * n;
    T check = 0;
#pragma omp simd reduction(+ : check)
    for (int64_t i = 0; i < n; ++i) check += row[i] - row[i];  // NaN for a NaN or an infinite entry
    if (check != check) {
      ++bad;
      continue;
    }
    T m;
    s.peak[r] = -static_cast<T>(sparsemax_threshold(row, n, m, s.cand));
    s.top[r] = m;
  }
  if (bad) return bad;
  const T* peak = s.peak.data();
  const T* top = s.top.data();
  std::iota(s.order.begin(), s.order.end(), int64_t(0));
  std::partial_sort(s.order.begin(), s.order.begin() + G, s.order.end(), [&](int64_t a, int64_t c) {
    if (peak[a] != peak[c]) return peak[a] > peak[c];
    if (top[a] != top[c]) return top[a] > top[c];
    return a < c;
  });
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r = s.order[g];
    rows[g] = r;
    uint8_t* mask = masks + g * n;
    top_mask(z + r * n, mask, n, K, s.idx);
    first[g] = g;
    for (int64_t h = 0; h < g; ++h) {
      if (std::memcmp(masks + h * n, mask, static_cast<size_t>(n)) == 0) {
        first[g] = h;
        break;
      }
    }
  }
  return 0;
}

template int64_t select_example<float>(const float*, uint8_t*, int64_t*, int64_t*, int64_t, int64_t, int64_t,
                                       int64_t, GroupScratch<float>&);
template int64_t select_example<double>(const double*, uint8_t*, int64_t*, int64_t*, int64_t, int64_t, int64_t,
                                        int64_t, GroupScratch<double>&);

int64_t group_masks(std::uintptr_t logits, std::uintptr_t masks, std::uintptr_t rows, std::uintptr_t first,
                    int64_t batch, int64_t R, int64_t n, int64_t G, int64_t K, const std::string& dtype,
                    int n_threads) {
  int64_t bad = 0;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* z = as_ptr<const T>(logits);
    uint8_t* m = as_ptr<uint8_t>(masks);
    int64_t* rw = as_ptr<int64_t>(rows);
    int64_t* fi = as_ptr<int64_t>(first);
    std::vector<int64_t> per(static_cast<size_t>(batch), 0);
#ifdef FASTATTR_OPENMP
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) if (worth_parallel(batch, R * n * 8, n_threads))
#endif
    {
      GroupScratch<T> scratch;
#ifdef FASTATTR_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t b = 0; b < batch; ++b) {
        per[b] = select_example(z + b * R * n, m + b * G * n, rw + b * G, fi + b * G, R, n, G, K, scratch);
      }
    }
    for (int64_t b = 0; b < batch; ++b) bad += per[b];
  });
  return bad;
}

}  // namespace fastattr
