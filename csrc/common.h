// Shared helpers for fastattr's CPU kernels: row-parallel loops and dtype dispatch.
// Kernels take raw pointers to contiguous buffers so the extension never links libtorch.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef FASTATTR_OPENMP
#include <omp.h>
#endif

// Row kernels built twice on x86-64 GCC (AVX2 and baseline), picked at load time; clang (14) rejects
// target_clones on function templates, so there they are built once, for the compiler's target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__APPLE__)
#define FASTATTR_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define FASTATTR_MULTIVERSION
#endif

namespace fastattr {

// Below this many elements of work a parallel region costs more than it saves (waking the team,
// and on a busy machine waiting for descheduled threads), so the loop runs on the calling thread.
constexpr int64_t kMinParallelWork = int64_t(1) << 15;

inline bool worth_parallel(int64_t rows, int64_t work_per_row, int n_threads) {
  return n_threads > 1 && rows > 1 && rows * work_per_row >= kMinParallelWork;
}

// Calls fn(row) for row in [0, rows), on up to n_threads OpenMP threads (static schedule) when the
// total work (rows * work_per_row elements) is large enough to pay for it.
template <typename Fn>
inline void parallel_rows(int64_t rows, int64_t work_per_row, int n_threads, Fn&& fn) {
#ifdef FASTATTR_OPENMP
  if (worth_parallel(rows, work_per_row, n_threads)) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) fn(r);
    return;
  }
#endif
  for (int64_t r = 0; r < rows; ++r) fn(r);
}

// Calls fn(T{}) with T = float or double according to the dtype name.
template <typename Fn>
inline void dispatch_float(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32") {
    fn(float{});
  } else if (dtype == "float64") {
    fn(double{});
  } else {
    throw std::invalid_argument("fastattr._C: unsupported dtype '" + dtype +
                                "' (expected float32 or float64)");
  }
}

template <typename T>
inline T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace fastattr
