// SOP GroupGen's selection of one example (group_masks.cpp), shared with group_gen.cpp, which ranks the logits
// it makes with it.
#pragma once
#include <cstdint>
#include <vector>

namespace fastattr {

template <typename T>
struct GroupScratch {
  std::vector<double> cand;
  std::vector<T> peak, top;
  std::vector<int64_t> order, idx;
};

// The selection of group_masks for one example's logits z [R, n]: masks [G, n], rows [G] and first [G];
// returns the number of rows of z holding NaN or +-inf (then nothing is written). float and double.
template <typename T>
int64_t select_example(const T* z, uint8_t* masks, int64_t* rows, int64_t* first, int64_t R, int64_t n, int64_t G,
                       int64_t K, GroupScratch<T>& s);

}  // namespace fastattr
