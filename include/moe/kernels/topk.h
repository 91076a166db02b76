// Exact top-k of one row of scores in the order (score desc, index asc): ties go to the lower
// index. PEER's product-key retrieval runs topk_scan on each half's sub-key scores (2·N·heads
// rows of S scores per step, S up to 1024), so it is a hot loop; topk_reference beside it is the
// plain definition the tests hold it to.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace moe {

// idx [k], val [k] (written, best first); s [S]; k <= S. The definition: a stable sort of the
// indices by score, descending (equal scores keep index order), cut to k. O(S log S); allocates.
template <typename T>
void topk_reference(int32_t* idx, T* val, const T* s, int S, int k) {
  std::vector<int32_t> order(S);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
  for (int j = 0; j < k; ++j) {
    idx[j] = order[j];
    val[j] = s[order[j]];
  }
}

// The k best of s[0..S) by (score desc, index asc) into idx[0..k), best first: one scan keeping
// a sorted list of the best so far. Most elements lose to the current k-th and cost one
// comparison; a winner is inserted after every kept element that beats or ties it (ties: the
// kept one has the lower index, as the scan is in index order).
// On AVX-512 in float it first finds a threshold that the k best all reach and ranks only the
// few scores at or above it with vector compares (src/kernels/topk.cpp); the result is the same
// as the scan's. Instantiated for float and double.
template <typename T>
void topk_scan(int32_t* idx, T* val, const T* s, int S, int k);

}  // namespace moe
