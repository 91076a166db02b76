// topk_scan (include/moe/kernels/topk.h): the scalar insertion scan, and on AVX-512 in float a
// threshold filter with vector ranking in front of it.
#include "moe/kernels/topk.h"

#include <algorithm>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace moe {

namespace {
#if defined(__AVX512F__)
// The k best of n kept scores (kv, ki: NV·16 entries, padded with -inf and an index past the
// end) into idx, val, by rank: a score's rank is how many kept ones come before it in the order
// (score desc, index asc), counted 16 at a time.
template <int NV, typename T>
inline void rank_kept(int32_t* idx, T* val, const float* kv, const int32_t* ki, int n, int k) {
  __m512 v[NV];
  __m512i iv[NV];
  for (int q = 0; q < NV; ++q) {
    v[q] = _mm512_load_ps(kv + 16 * q);
    iv[q] = _mm512_load_si512(ki + 16 * q);
  }
  for (int j = 0; j < n; ++j) {
    const __m512 x = _mm512_set1_ps(kv[j]);
    const __m512i xi = _mm512_set1_epi32(ki[j]);
    int r = 0;
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q)  // kept scores before this one: higher, or equal, lower index
      r += __builtin_popcount(_mm512_cmp_ps_mask(v[q], x, _CMP_GT_OQ) |
                              (_mm512_cmp_ps_mask(v[q], x, _CMP_EQ_OQ) &
                               _mm512_cmp_epi32_mask(iv[q], xi, _MM_CMPINT_LT)));
    if (r < k) {
      val[r] = T(kv[j]);
      idx[r] = ki[j];
    }
  }
}
#endif

}  // namespace

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
    // A threshold first: tau = the k-th largest of a set of maxima, each the maximum of its own
    // group of scores (the groups disjoint), so at least k scores reach tau and the k best all
    // do. For k <= 32 the groups are the 32 lanes of two running vector maxima over alternate
    // 16-score chunks (32 plain max instructions at S = 1024); otherwise the maxima of the
    // 16-score chunks (one horizontal reduction each, and 4x the count to rank: the scan took
    // ~1.6x as long). Then one compare per 16 scores keeps the few that reach tau (~22 of 1024
    // for k = 16), compressed in index order into a short list, and each kept score's rank among
    // them by (score desc, index asc) — the scalar scan's order — is counted with 16-wide
    // compares: no insertion sort and no data-dependent branches, which had cost ~2/3 of the scan.
    constexpr int kMaxChunks = 512, kMaxKept = 64;
    const int nch = S / 16;
    const float* f = reinterpret_cast<const float*>(s);
    const bool lanes32 = k <= 32 && nch >= 2 && nch <= kMaxChunks;
    if (lanes32 || (nch >= k && nch <= kMaxChunks)) {
      alignas(64) float mx[kMaxChunks];
      int nm = 0;  // maxima in mx
      if (lanes32) {
        __m512 a0 = _mm512_loadu_ps(f), a1 = _mm512_loadu_ps(f + 16);
        int c = 2;
        for (; c + 1 < nch; c += 2) {
          a0 = _mm512_max_ps(a0, _mm512_loadu_ps(f + 16 * c));
          a1 = _mm512_max_ps(a1, _mm512_loadu_ps(f + 16 * c + 16));
        }
        if (c < nch) a0 = _mm512_max_ps(a0, _mm512_loadu_ps(f + 16 * c));
        _mm512_store_ps(mx, a0);
        _mm512_store_ps(mx + 16, a1);
        nm = 32;
      } else {
        for (int c = 0; c < nch; ++c) mx[c] = _mm512_reduce_max_ps(_mm512_loadu_ps(f + 16 * c));
        nm = nch;
      }
      // tau = the smallest maximum that fewer than k maxima exceed.
      const int nv = (nm + 15) / 16;
      const __m512i one = _mm512_set1_epi32(1), kv = _mm512_set1_epi32(k);
      __m512 tmin = _mm512_set1_ps(__builtin_inff());
      for (int b = 0; b < nv; ++b) {
        const int lanes = std::min(16, nm - 16 * b);
        const __mmask16 valid = __mmask16((1u << lanes) - 1);
        const __m512 vb = _mm512_maskz_loadu_ps(valid, mx + 16 * b);
        __m512i cnt = _mm512_setzero_si512();
        for (int j = 0; j < nm; ++j) {
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
          const int nkv = std::max(2, (n_kept + 15) / 16);  // vectors ranked, 2 to 4
          for (int j = n_kept; j < 16 * nkv; ++j) {         // padding that never beats a kept score
            kept_v[j] = -__builtin_inff();
            kept_i[j] = S;
          }
          if (nkv == 2)
            rank_kept<2>(idx, val, kept_v, kept_i, n_kept, k);
          else if (nkv == 3)
            rank_kept<3>(idx, val, kept_v, kept_i, n_kept, k);
          else
            rank_kept<4>(idx, val, kept_v, kept_i, n_kept, k);
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

template void topk_scan<float>(int32_t*, float*, const float*, int, int);
template void topk_scan<double>(int32_t*, double*, const double*, int, int);
#pragma GCC diagnostic pop

}  // namespace moe
