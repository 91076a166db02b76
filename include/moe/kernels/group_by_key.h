// Grouping by key: a stable sort of the items a < n by keys[a], written as a list of the items
// in that order and the distinct keys with the range of the list each owns (a CSR of items per
// key). PEER's backward groups its N·heads·k retrievals by expert id (up to 2^20 ids) so each
// expert's gradient row is summed by one task in token order: no atomics, a fixed sum order.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

// The digit counters group_by_key needs for keys < num_keys on up to `threads` threads, in ints.
std::size_t group_by_key_counter_ints(int64_t num_keys, int threads);

// keys [n] (each < num_keys); writes list [n] (the items, grouped, each group in item order),
// keys_out [≤ n] (the distinct keys, ascending) and off [groups + 1] (keys_out[i]'s items are
// list[off[i] .. off[i+1])); returns the number of groups. Scratch: kv [2·n], counters
// [group_by_key_counter_ints(num_keys, threads)] where threads >= max_threads() of the caller.
// A stable LSD radix sort of (key, item) pairs packed in 64 bits, one pass per digit of ≤ 11
// bits: O(n) per pass whatever num_keys. Each pass counts every thread's contiguous slice, then
// scatters it after the slices before it, so the order, and the result, is the same for any
// thread count.
int group_by_key(const int32_t* keys, int n, int64_t num_keys, uint64_t* kv, int* counters,
                 int32_t* list, int32_t* keys_out, int32_t* off);

// The definition group_by_key is tested against: std::stable_sort of the items by key, then one
// scan for the group boundaries. Same outputs; no scratch.
int group_by_key_reference(const int32_t* keys, int n, int32_t* list, int32_t* keys_out,
                           int32_t* off);

}  // namespace moe
