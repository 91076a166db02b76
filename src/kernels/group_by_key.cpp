// group_by_key (include/moe/kernels/group_by_key.h): a parallel stable LSD radix sort.
#include "moe/kernels/group_by_key.h"

#include <algorithm>
#include <numeric>

#include "moe/core/threading.h"

namespace moe {

// One pass per digit of <= 11 bits (2 passes of 10 bits at 2^20 keys), O(n) each: a counting
// sort over all keys had spent ~6 ms per PEER step at 2^20 experts clearing and scanning its
// counters.
namespace {

struct Digits {
  int passes, width, buckets;
};

Digits digits(int64_t num_keys) {
  int bits = 1;
  while (bits < 62 && (int64_t(1) << bits) < num_keys) ++bits;
  const int passes = (bits + 10) / 11, w = (bits + passes - 1) / passes;
  return {passes, w, 1 << w};
}

}  // namespace

std::size_t group_by_key_counter_ints(int64_t num_keys, int threads) {
  return std::size_t(std::max(1, threads)) * digits(num_keys).buckets;  // 2 × 1024 at 2^20
}

int group_by_key(const int32_t* keys, int n, int64_t num_keys, uint64_t* kv, int* counters,
                 int32_t* list, int32_t* keys_out, int32_t* off) {
  const int A = n;  // items
  const Digits dg = digits(num_keys);
  const int passes = dg.passes, w = dg.width, nb = dg.buckets;
  const int nt = std::max(1, std::min(max_threads(), A / 4096));
  int* cnt = counters;  // [nt, nb]
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    uint64_t *src = kv, *dst = kv + A;  // this thread's view of which buffer is which
    const int t = thread_index(), team = team_size();  // team <= nt
    const int a0 = int(int64_t(A) * t / team), a1 = int(int64_t(A) * (t + 1) / team);
    for (int a = a0; a < a1; ++a) src[a] = uint64_t(uint32_t(keys[a])) << 32 | uint32_t(a);
    for (int pass = 0, shift = 32; pass < passes; ++pass, shift += w) {
      int* c = cnt + std::size_t(t) * nb;
      std::fill(c, c + nb, 0);
      for (int a = a0; a < a1; ++a) ++c[(src[a] >> shift) & (nb - 1)];
#pragma omp barrier
#pragma omp single
      {
        // Slot (digit d, thread u) starts after all smaller digits and d's earlier slices.
        int at = 0;
        for (int d = 0; d < nb; ++d)
          for (int u = 0; u < team; ++u) {
            int& cu = cnt[std::size_t(u) * nb + d];
            const int count = cu;
            cu = at;
            at += count;
          }
      }  // implicit barrier
      for (int a = a0; a < a1; ++a) dst[c[(src[a] >> shift) & (nb - 1)]++] = src[a];
#pragma omp barrier
      std::swap(src, dst);
    }
    for (int j = a0; j < a1; ++j) list[j] = int32_t(src[j] & 0xffffffffu);
  }
  const uint64_t* src = passes % 2 ? kv + A : kv;
  int groups = 0;
  for (int j = 0; j < A; ++j) {
    const int32_t id = int32_t(src[j] >> 32);
    if (j == 0 || id != int32_t(src[j - 1] >> 32)) {
      keys_out[groups] = id;
      off[groups++] = j;
    }
  }
  off[groups] = A;
  return groups;
}

int group_by_key_reference(const int32_t* keys, int n, int32_t* list, int32_t* keys_out,
                           int32_t* off) {
  std::iota(list, list + n, 0);
  std::stable_sort(list, list + n, [&](int32_t a, int32_t b) { return keys[a] < keys[b]; });
  int groups = 0;
  for (int j = 0; j < n; ++j)
    if (j == 0 || keys[list[j]] != keys[list[j - 1]]) {
      keys_out[groups] = keys[list[j]];
      off[groups++] = j;
    }
  off[groups] = n;
  return groups;
}

}  // namespace moe
