// Product-key retrieval (Lample et al. 2019; PEER, He 2024): the exact top-k of the S² sums
// s1[i] + s2[j] (expert id i·S + j) from the top-k of each half. Exact because any pair in the
// overall top-k has both halves in their own half's top-k; ties go to the lower expert id, which
// is consistent with the halves' rule "ties → lower index" (a tied i' > i gives a higher id).
#pragma once
#include <cmath>
#include <cstdint>

#include "moe/kernels/topk.h"

namespace moe {

// ids [k], scores [k] (written, best first) for one query; s1, s2 [S]; k <= S.
// scratch: at least k·k + 2·k int32; cand_scores: at least k·k + 2·k T.
template <typename T>
void product_key_topk(int32_t* ids, T* scores, const T* s1, const T* s2, int S, int k,
                      int32_t* scratch, T* cand_scores) {
  int32_t* i1 = scratch;
  int32_t* i2 = scratch + k;
  T* v1 = cand_scores;  // k values each, used before the candidates are formed
  T* v2 = cand_scores + k;
  topk_scan(i1, v1, s1, S, k);
  topk_scan(i2, v2, s2, S, k);
  // Candidate (a, b) = (a-th best of half 1, b-th best of half 2). Every (a', b') with a' <= a,
  // b' <= b is at least as good in the order (score desc, id asc) — its score is no lower and on
  // a tie its id is lower, because each half is ordered with ties to the lower index and the id
  // is i1·S + i2 — so (a, b) is in the top-k only if (a + 1)(b + 1) <= k: about k·ln k
  // candidates instead of k².
  int32_t* cand = scratch + 2 * k;
  T* cs = cand_scores + 2 * k;
  int nc = 0;
  for (int a = 0; a < k; ++a)
    for (int b = 0; (a + 1) * (b + 1) <= k; ++b) {
      cand[nc] = i1[a] * S + i2[b];  // the real expert id, not the candidate position
      cs[nc] = v1[a] + v2[b];
      ++nc;
    }
  // The k best candidates by (score desc, id asc): insertion, comparing ids on ties.
  int n = 0;
  for (int c = 0; c < nc; ++c) {
    const T x = cs[c];
    const int32_t id = cand[c];
    auto better = [&](int j) { return x > scores[j] || (x == scores[j] && id < ids[j]); };
    if (n == k && !better(k - 1)) continue;
    int j = n < k ? n++ : k - 1;
    for (; j > 0 && better(j - 1); --j) {
      scores[j] = scores[j - 1];
      ids[j] = ids[j - 1];
    }
    scores[j] = x;
    ids[j] = id;
  }
}

}  // namespace moe
