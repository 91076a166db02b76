// Product-key retrieval (Lample et al. 2019; PEER, He 2024): the exact top-k of the S² sums
// s1[i] + s2[j] (expert id i·S + j) from the top-k of each half. Exact because any pair in the
// overall top-k has both halves in their own half's top-k; ties go to the lower expert id, which
// is consistent with the halves' rule "ties → lower index" (a tied i' > i gives a higher id).
#pragma once
#include <algorithm>
#include <cstdint>

namespace moe {

// ids [k], scores [k] (written, best first) for one query; s1, s2 [S]; k <= S.
// scratch: at least 2·S + 2·k·k int32; cand_scores: k·k T.
template <typename T>
void product_key_topk(int32_t* ids, T* scores, const T* s1, const T* s2, int S, int k,
                      int32_t* scratch, T* cand_scores) {
  int32_t* i1 = scratch;
  int32_t* i2 = scratch + S;
  int32_t* cand = scratch + 2 * S;
  for (int i = 0; i < S; ++i) i1[i] = i2[i] = i;
  auto by = [](const T* s) {
    return [s](int32_t a, int32_t b) { return s[a] != s[b] ? s[a] > s[b] : a < b; };
  };
  std::partial_sort(i1, i1 + k, i1 + S, by(s1));
  std::partial_sort(i2, i2 + k, i2 + S, by(s2));
  for (int a = 0; a < k; ++a)
    for (int b = 0; b < k; ++b) {
      cand[a * k + b] = i1[a] * S + i2[b];  // the real expert id, not the candidate position
      cand_scores[a * k + b] = s1[i1[a]] + s2[i2[b]];
    }
  // Order candidate positions by (score desc, id asc).
  int32_t* pos = scratch + 2 * S + k * k;
  for (int c = 0; c < k * k; ++c) pos[c] = c;
  std::partial_sort(pos, pos + k, pos + k * k, [&](int32_t x, int32_t y) {
    return cand_scores[x] != cand_scores[y] ? cand_scores[x] > cand_scores[y] : cand[x] < cand[y];
  });
  for (int s = 0; s < k; ++s) {
    ids[s] = cand[pos[s]];
    scores[s] = cand_scores[pos[s]];
  }
}

}  // namespace moe
