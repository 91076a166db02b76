// Product-key retrieval (Lample et al. 2019; PEER, He 2024): the exact top-k of the S² sums
// s1[i] + s2[j] (expert id i·S + j) from the top-k of each half. Exact because any pair in the
// overall top-k has both halves in their own half's top-k; ties go to the lower expert id, which
// is consistent with the halves' rule "ties → lower index" (a tied i' > i gives a higher id).
#pragma once
#include <algorithm>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace moe {

// The k best of s[0..S) by (score desc, index asc) into idx[0..k), best first: one scan keeping
// a sorted list of the best so far. Most elements lose to the current k-th and cost one
// comparison; a winner is inserted after every kept element that beats or ties it (ties: the
// kept one has the lower index, as the scan is in index order).
// (GCC 12 warns that _mm512_reduce_max_ps's internal _mm512_undefined "may be used
// uninitialized"; it is overwritten in full, so that warning is off for this function.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <typename T>
void topk_scan(int32_t* idx, T* val, const T* s, int S, int k) {
  int n = 0;
  auto offer = [&](int i) {
    const T x = s[i];
    if (n == k && !(x > val[k - 1])) return;
    int j = n < k ? n++ : k - 1;
    for (; j > 0 && x > val[j - 1]; --j) {
      val[j] = val[j - 1];
      idx[j] = idx[j - 1];
    }
    val[j] = x;
    idx[j] = i;
  };
  int i = 0;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    // A threshold first: the k-th largest of the maxima of the 16-score chunks. Those k chunks
    // each hold a score at least that high, so the k best all are too; then one compare per 16
    // scores keeps the few that reach it, offered in index order — the scalar scan's result,
    // without its ~k·ln(S/k) mispredicted insertions among all S scores.
    constexpr int kMaxChunks = 512;
    const int nch = S / 16;
    const float* f = reinterpret_cast<const float*>(s);
    if (nch >= k && nch <= kMaxChunks) {
      float mx[kMaxChunks];
      for (int c = 0; c < nch; ++c) mx[c] = _mm512_reduce_max_ps(_mm512_loadu_ps(f + 16 * c));
      std::nth_element(mx, mx + (k - 1), mx + nch, [](float a, float b) { return a > b; });
      const float tau = mx[k - 1];
      if (tau == tau) {  // not NaN
        const __m512 t = _mm512_set1_ps(tau);
        for (int c = 0; c < nch; ++c) {
          __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(f + 16 * c), t, _CMP_GE_OQ);
          while (m) {
            offer(16 * c + __builtin_ctz(m));
            m &= m - 1;
          }
        }
        for (i = 16 * nch; i < S; ++i)
          if (f[i] >= tau) offer(i);
        return;
      }
    }
  }
#endif
  for (; i < S; ++i) offer(i);
}
#pragma GCC diagnostic pop

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
