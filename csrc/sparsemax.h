// The sparsemax threshold of one row, shared by the kernels that need it (sparsemax.cpp defines it).
#pragma once
#include <cstdint>
#include <vector>

namespace fastattr {

// For a row z of n finite entries: its max m (written to `m`) and tau relative to m, so that
// sparsemax(z)_i = max((z_i - m) - T(tau), 0) bit for bit as the sparsemax kernel writes it; the
// row's largest probability is -T(tau). `cand` is scratch (resized to n).
template <typename T>
double sparsemax_threshold(const T* z, int64_t n, T& m, std::vector<double>& cand);

}  // namespace fastattr
