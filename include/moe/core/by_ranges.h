// Splitting a loop over outputs into one contiguous range per thread, for sums whose order must
// not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>

#include "moe/core/threading.h"

namespace moe {

// Runs fn(j0, j1) on contiguous ranges of [0, n), one per thread and at least min_len long: for
// sums that each thread forms over its own range of outputs (features, sub-keys) in one fixed
// order, so the result does not depend on the thread count.
template <typename F>
void by_ranges(int n, int min_len, F&& fn) {
  const int nt = std::max(1, std::min(max_threads(), n / min_len));
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int t = thread_index(), team = team_size();
    fn(int(int64_t(n) * t / team), int(int64_t(n) * (t + 1) / team));
  }
}

}  // namespace moe
