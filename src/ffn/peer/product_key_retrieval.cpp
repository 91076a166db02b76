#include "moe/ffn/peer/product_key_retrieval.h"

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "moe/core/by_ranges.h"
#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/ffn/peer/product_keys.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/grouped_gemm.h"
#include "moe/kernels/grouped_gemm_bf16.h"
#include "moe/kernels/softmax.h"

namespace moe {

template <typename T>
void ProductKeyRetrieval<T>::bind(Arena& a, int max_rows) {
  const std::size_t A = std::size_t(max_rows) * k_;
  threads_ = max_threads();
  score_blocks_ = a.take<T>(std::size_t(threads_) * 2 * kScoreRows * S_);
  use_panel_gemm_ = std::is_same_v<T, float> && panel_gemm_native();
  if (use_panel_gemm_) packed_keys_ = a.take<T>(2 * panel_b_floats(d_key_ / 2, S_));
  const std::size_t kk = std::size_t(k_) * k_ + 2 * k_;  // product_key_topk's scratch
  topk_ids_scratch_ = a.take<int32_t>(std::size_t(threads_) * kk);
  topk_scores_scratch_ = a.take<T>(std::size_t(threads_) * kk);
  sub_key_ids_ = a.take<int32_t>(2 * A);
}

template <typename T>
void ProductKeyRetrieval<T>::bind_bf16(Arena& a) {
  MOE_CHECK((std::is_same_v<T, float>), "PEER retrieval: bf16 products need float");
  MOE_CHECK(threads_ > 0, "PEER retrieval: bind_bf16 before bind");
  const int half = d_key_ / 2;
  bf16_keys_ = a.take<uint16_t>(2 * bf16_pack_b_elems(half, S_));
  bf16_queries_ = a.take<uint16_t>(std::size_t(threads_) * 2 * bf16_pack_a_elems(kScoreRows, half));
}

template <typename T>
void ProductKeyRetrieval<T>::pack_keys_bf16(const T* keys1, const T* keys2) {
  if constexpr (std::is_same_v<T, float>) {
    MOE_CHECK(bf16_keys_, "PEER retrieval: pack_keys_bf16 before bind_bf16");
    const int half = d_key_ / 2;
    // K¹ᵀ [half, S]: the stored keys [S, half] read transposed.
    bf16_pack_b(bf16_keys_, half, S_, {keys1, half, true});
    bf16_pack_b(bf16_keys_ + bf16_pack_b_elems(half, S_), half, S_, {keys2, half, true});
  }
}

template <typename T>
void ProductKeyRetrieval<T>::score_block(T* sc1, T* sc2, const T* q_block, int rb, const T* keys1,
                                         const T* keys2, int thread) const {
  const int S = S_, dk = d_key_, half = dk / 2;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_keys_) {
      const std::size_t pa = bf16_pack_a_elems(kScoreRows, half), pb = bf16_pack_b_elems(half, S);
      uint16_t* a1 = bf16_queries_ + std::size_t(thread) * 2 * pa;
      uint16_t* a2 = a1 + pa;
      bf16_pack_a(a1, rb, half, {q_block, dk});
      bf16_pack_a(a2, rb, half, {q_block + half, dk});
      bf16_panel_gemm(rb, S, half, a1, bf16_keys_, sc1, S, false);
      bf16_panel_gemm(rb, S, half, a2, bf16_keys_ + pb, sc2, S, false);
      return;
    }
    if (use_panel_gemm_) {
      const std::size_t kp = panel_b_floats(half, S);
      panel_gemm(rb, S, half, q_block, dk, false, packed_keys_, sc1, S, false);
      panel_gemm(rb, S, half, q_block + half, dk, false, packed_keys_ + kp, sc2, S, false);
      return;
    }
  }
  gemm<T>(false, true, rb, S, half, T(1), q_block, dk, keys1, half, T(0), sc1, S);
  gemm<T>(false, true, rb, S, half, T(1), q_block + half, dk, keys2, half, T(0), sc2, S);
}

// Per block of kScoreRows rows, in a task of its own: sub-key scores, then each row's
// product-key top-k and gate softmax. The blocks are fixed, so the result does not depend on the
// thread count.
template <typename T>
void ProductKeyRetrieval<T>::forward(int32_t* ids, T* scores, T* gates, const T* q, const T* keys1,
                                     const T* keys2, int R) {
  const int S = S_, dk = d_key_, half = dk / 2, k = k_;
  const std::size_t kk = std::size_t(k) * k + 2 * k;
  MOE_CHECK(max_threads() <= threads_,
            "internal: {} threads, PEER score scratch bound for {} (thread count changed after "
            "bind)",
            max_threads(), threads_);
  if constexpr (std::is_same_v<T, float>) {
    if (use_panel_gemm_ && !bf16_keys_) {
      const std::size_t kp = panel_b_floats(half, S);
      panel_pack_b(packed_keys_, half, S, 0, 0, half, S, keys1, half, true);
      panel_pack_b(packed_keys_ + kp, half, S, 0, 0, half, S, keys2, half, true);
    }
  }
  const int nblk = (R + kScoreRows - 1) / kScoreRows;
#pragma omp parallel for schedule(dynamic, 1) if (nblk > 1)
  for (int blk = 0; blk < nblk; ++blk) {
    const int r0 = blk * kScoreRows, rb = std::min(kScoreRows, R - r0);
    const int t = thread_index();
    T* sc1 = score_blocks_ + std::size_t(t) * 2 * kScoreRows * S;
    T* sc2 = sc1 + std::size_t(kScoreRows) * S;
    score_block(sc1, sc2, q + std::size_t(r0) * dk, rb, keys1, keys2, t);
    for (int r = r0; r < r0 + rb; ++r) {
      T* sc = scores + std::size_t(r) * k;
      product_key_topk(ids + std::size_t(r) * k, sc, sc1 + std::size_t(r - r0) * S,
                       sc2 + std::size_t(r - r0) * S, S, k, topk_ids_scratch_ + t * kk,
                       topk_scores_scratch_ + t * kk);
      // Gates: softmax of the k scores (libm exp, as PEER has always computed them).
      softmax_row(gates + std::size_t(r) * k, sc, k, SoftmaxExp::kLibm);
    }
  }
}

// The forward's steps reversed: gate softmax, then the sub-key scores (d(query), d(keys)).
template <typename T>
void ProductKeyRetrieval<T>::backward(T* dq, T* dkeys1, T* dkeys2, T* dgate, const T* gates,
                                      const int32_t* ids, const T* q, const T* keys1,
                                      const T* keys2, int R) {
  const int k = k_;
  // Gate softmax: d(gate) → d(score), per row, in place.
#pragma omp parallel for schedule(static) if (R > 64)
  for (int r = 0; r < R; ++r)
    softmax_row_backward(dgate + std::size_t(r) * k, gates + std::size_t(r) * k,
                         dgate + std::size_t(r) * k, k);  // in place: d(gate) → d(score)
  // A candidate's score is s¹[id / S] + s²[id % S], so d(s¹), d(s²) have at most k non-zeros
  // per row out of S: the products with the sub-keys go over those only (dense GEMMs over the
  // [R, S] matrices did ~S/k times the work, and had to clear them first).
  scores_backward_query(dq, dgate, ids, keys1, keys2, R);
  scores_backward_keys(dkeys1, dkeys2, dgate, q, R);
}

// dQ¹[r] = Σ_s ds·K¹[id/S], dQ²[r] = Σ_s ds·K²[id%S], candidates in rank order. Each
// candidate's sub-key pair is kept for scores_backward_keys (whose threads each walk all
// candidates: two integer divisions per candidate per thread had been most of its time).
template <typename T>
void ProductKeyRetrieval<T>::scores_backward_query(T* dq, const T* ds, const int32_t* ids,
                                                   const T* keys1, const T* keys2, int R) {
  const int S = S_, dk = d_key_, half = dk / 2, k = k_;
  int32_t* sub = sub_key_ids_;
#pragma omp parallel for schedule(static) if (R > 64)
  for (int r = 0; r < R; ++r) {
    T* d1 = dq + std::size_t(r) * dk;
    T* d2 = d1 + half;
    std::fill(d1, d1 + dk, T(0));
    for (int s = 0; s < k; ++s) {
      const std::size_t a = std::size_t(r) * k + s;
      const T w = ds[a];
      const int32_t j1 = ids[a] / S, j2 = ids[a] - j1 * S;
      sub[2 * a] = j1;
      sub[2 * a + 1] = j2;
      const T* k1 = keys1 + std::size_t(j1) * half;
      const T* k2 = keys2 + std::size_t(j2) * half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        d1[i] += w * k1[i];
        d2[i] += w * k2[i];
      }
    }
  }
}

// dK¹[j] += Σ ds·Q¹[r] over the candidates with id/S = j (and dK² with id%S = j), summed in
// (row, rank) order. Each thread owns a contiguous range of sub-keys and walks every candidate,
// so each sum has one fixed order whatever the thread count.
template <typename T>
void ProductKeyRetrieval<T>::scores_backward_keys(T* dkeys1, T* dkeys2, const T* ds, const T* q,
                                                  int R) const {
  const int S = S_, dk = d_key_, half = dk / 2, k = k_;
  const int32_t* sub = sub_key_ids_;
  by_ranges(S, 16, [&](int j0, int j1) {
    for (int r = 0; r < R; ++r) {
      const T* q1 = q + std::size_t(r) * dk;
      const T* q2 = q1 + half;
      for (int s = 0; s < k; ++s) {
        const std::size_t a = std::size_t(r) * k + s;
        const int j1s = sub[2 * a], j2s = sub[2 * a + 1];
        const T w = ds[a];
        if (j1s >= j0 && j1s < j1) {
          T* gk = dkeys1 + std::size_t(j1s) * half;
#pragma omp simd
          for (int i = 0; i < half; ++i) gk[i] += w * q1[i];
        }
        if (j2s >= j0 && j2s < j1) {
          T* gk = dkeys2 + std::size_t(j2s) * half;
#pragma omp simd
          for (int i = 0; i < half; ++i) gk[i] += w * q2[i];
        }
      }
    }
  });
}

template class ProductKeyRetrieval<float>;
template class ProductKeyRetrieval<double>;

}  // namespace moe
