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
    // A threshold first: tau = the k-th largest of the maxima of the 16-score chunks. Those k
    // chunks each hold a score at least that high, so the k best all are too. Then one compare
    // per 16 scores keeps the few that reach tau (~18 of 1024 for k = 16), compressed in index
    // order into a short list, and each kept score's rank among them by (score desc, index asc)
    // — the scalar scan's order — is counted with two 16-wide compares: no insertion sort and no
    // data-dependent branches, which had cost ~2/3 of the scan.
    constexpr int kMaxChunks = 512, kMaxKept = 32;
    const int nch = S / 16;
    const float* f = reinterpret_cast<const float*>(s);
    if (nch >= k && nch <= kMaxChunks) {
      alignas(64) float mx[kMaxChunks];
      for (int c = 0; c < nch; ++c) mx[c] = _mm512_reduce_max_ps(_mm512_loadu_ps(f + 16 * c));
      // tau = the smallest chunk maximum that fewer than k maxima exceed.
      const int nv = (nch + 15) / 16;
      const __m512i one = _mm512_set1_epi32(1), kv = _mm512_set1_epi32(k);
      __m512 tmin = _mm512_set1_ps(__builtin_inff());
      for (int b = 0; b < nv; ++b) {
        const int lanes = std::min(16, nch - 16 * b);
        const __mmask16 valid = __mmask16((1u << lanes) - 1);
        const __m512 vb = _mm512_maskz_loadu_ps(valid, mx + 16 * b);
        __m512i cnt = _mm512_setzero_si512();
        for (int j = 0; j < nch; ++j) {
          const __mmask16 gt = _mm512_cmp_ps_mask(_mm512_set1_ps(mx[j]), vb, _CMP_GT_OQ);
          cnt = _mm512_mask_add_epi32(cnt, gt, cnt, one);
        }
        const __mmask16 in = valid & _mm512_cmp_epi32_mask(cnt, kv, _MM_CMPINT_LT);
        tmin = _mm512_mask_min_ps(tmin, in, tmin, vb);
      }
      const float tau = _mm512_reduce_min_ps(tmin);
      if (tau == tau) {  // not NaN
        // The scores >= tau and their indices, in index order (+16: a full vector is stored).
        alignas(64) float kept_v[kMaxChunks * 16 + 16];
        alignas(64) int32_t kept_i[kMaxChunks * 16 + 16];
        int n_kept = 0;
        const __m512 t = _mm512_set1_ps(tau);
        __m512i iv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i sixteen = _mm512_set1_epi32(16);
        for (int c = 0; c < nch; ++c) {
          const __m512 x = _mm512_loadu_ps(f + 16 * c);
          const __mmask16 m = _mm512_cmp_ps_mask(x, t, _CMP_GE_OQ);
          // Compress in registers, then store whole vectors (the masked compress-to-memory
          // form is several times slower on this core).
          _mm512_storeu_ps(kept_v + n_kept, _mm512_maskz_compress_ps(m, x));
          _mm512_storeu_si512(kept_i + n_kept, _mm512_maskz_compress_epi32(m, iv));
          n_kept += __builtin_popcount(m);
          iv = _mm512_add_epi32(iv, sixteen);
        }
        for (i = 16 * nch; i < S; ++i)
          if (f[i] >= tau) {
            kept_v[n_kept] = f[i];
            kept_i[n_kept++] = i;
          }
        if (n_kept >= k && n_kept <= kMaxKept) {
          for (int j = n_kept; j < kMaxKept; ++j) {  // padding that never beats a kept score
            kept_v[j] = -__builtin_inff();
            kept_i[j] = S;
          }
          const __m512 v0 = _mm512_load_ps(kept_v), v1 = _mm512_load_ps(kept_v + 16);
          const __m512i i0 = _mm512_load_si512(kept_i), i1 = _mm512_load_si512(kept_i + 16);
          for (int j = 0; j < n_kept; ++j) {
            const __m512 x = _mm512_set1_ps(kept_v[j]);
            const __m512i xi = _mm512_set1_epi32(kept_i[j]);
            // Kept scores that come before this one: higher, or equal with a lower index.
            const __mmask16 b0 = _mm512_cmp_ps_mask(v0, x, _CMP_GT_OQ) |
                                 (_mm512_cmp_ps_mask(v0, x, _CMP_EQ_OQ) &
                                  _mm512_cmp_epi32_mask(i0, xi, _MM_CMPINT_LT));
            const __mmask16 b1 = _mm512_cmp_ps_mask(v1, x, _CMP_GT_OQ) |
                                 (_mm512_cmp_ps_mask(v1, x, _CMP_EQ_OQ) &
                                  _mm512_cmp_epi32_mask(i1, xi, _MM_CMPINT_LT));
            const int r = __builtin_popcount(b0) + __builtin_popcount(b1);
            if (r < k) {
              val[r] = T(kept_v[j]);
              idx[r] = kept_i[j];
            }
          }
          return;
        }
        if (n_kept >= k) {  // many ties at tau: the insertion scan over the kept scores only
          for (int j = 0; j < n_kept; ++j) offer(kept_i[j]);
          return;
        }
      }
      i = 0;  // NaNs among the maxima left too few scores at tau: the plain scan below
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
