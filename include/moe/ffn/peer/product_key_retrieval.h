// PEER's router: for each (token, head) row r of the normalised query q [R = N·heads, d_key],
//   sub-key scores   s¹ = q¹·K¹ᵀ, s² = q²·K²ᵀ   [S] each (q¹, q² the query's halves),
//   product-key top-k  the exact k best of the S² sums s¹[i] + s²[j], expert id i·S + j,
//   gate softmax     g = softmax(the k scores).
// The backward runs that list reversed: the softmax's, then the scores' (into dq, dK¹, dK²).
// The three forward steps run together on blocks of kScoreRows rows, so the [R, S] score
// matrices live only in one L2-sized block per thread (at 2^20 experts they were 2 × 64 MiB
// written and read back per step).
#pragma once
#include <cstdint>

#include "moe/core/arena.h"

namespace moe {

template <typename T>
class ProductKeyRetrieval {
 public:
  ProductKeyRetrieval(int sub_keys, int d_key, int k) : S_(sub_keys), d_key_(d_key), k_(k) {}
  void bind(Arena& a, int max_rows);
  // train.precision = bf16 (T = float only; after bind): the sub-key scores take bf16 operands
  // with f32 accumulation (kernels/grouped_gemm_bf16.h): each block's query halves rounded while
  // packed, the sub-keys packed once per optimizer step by pack_keys_bf16. Top-k, the gates and
  // the backward (sparse gathers of the f32 query and keys) stay f32. disable_bf16() returns to
  // f32 products.
  void bind_bf16(Arena& a);
  void disable_bf16() { bf16_keys_ = nullptr; }
  bool bf16() const { return bf16_keys_ != nullptr; }
  // keys1, keys2 [S, d_key/2] rounded to bf16 and packed as the scores' B operands K¹ᵀ, K²ᵀ.
  void pack_keys_bf16(const T* keys1, const T* keys2);

  // ids, scores, gates [R, k] (written, best first); q [R, d_key]; keys1, keys2 [S, d_key/2].
  void forward(int32_t* ids, T* scores, T* gates, const T* q, const T* keys1, const T* keys2,
               int R);
  // dgate [R, k]: in, d(gate); out, d(score) (in place). dq [R, d_key] (written);
  // dkeys1, dkeys2 [S, d_key/2] (+=). gates, ids, q, keys: those of the forward.
  void backward(T* dq, T* dkeys1, T* dkeys2, T* dgate, const T* gates, const int32_t* ids,
                const T* q, const T* keys1, const T* keys2, int R);

 private:
  // One block of rows: sc1, sc2 [rb, S] (written) = q_block's halves · K¹ᵀ, K²ᵀ.
  // (thread: the caller's index into the per-thread scratch.)
  void score_block(T* sc1, T* sc2, const T* q_block, int rb, const T* keys1, const T* keys2,
                   int thread) const;
  // The scores' backward, from ds [R, k] = d(score): dq [R, d_key] (written), then
  // dkeys1, dkeys2 (+=), which reads the sub-key pairs the first one kept.
  void scores_backward_query(T* dq, const T* ds, const int32_t* ids, const T* keys1, const T* keys2,
                             int R);
  void scores_backward_keys(T* dkeys1, T* dkeys2, const T* ds, const T* q, int R) const;

  int S_, d_key_, k_;
  static constexpr int kScoreRows = 64;  // 2·64·S floats per thread: 512 KiB at S = 1024
  int threads_ = 0;                      // threads the per-thread scratch below is sized for
  T* score_blocks_ = nullptr;            // per thread [2, kScoreRows, S]: s¹ then s² of a block
  // Float on AVX-512: the blocks' products run on moe.cpp's panel GEMM against sub-keys packed
  // once per forward (OpenBLAS packed the keys again in each of the 2·R/64 calls).
  bool use_panel_gemm_ = false;
  T* packed_keys_ = nullptr;             // K¹ᵀ then K²ᵀ packed for panel_gemm
  int32_t* topk_ids_scratch_ = nullptr;  // per thread, product_key_topk's [k·k + 2·k] ids
  T* topk_scores_scratch_ = nullptr;     // per thread, its [k·k + 2·k] scores
  int32_t* sub_key_ids_ = nullptr;       // backward: each retrieval's (id / S, id % S) [R·k, 2]
  // bf16 (bind_bf16): K¹ᵀ then K²ᵀ [d_key/2, S] as packed B panels, and per thread a block's
  // two query halves [kScoreRows, d_key/2] as packed A panels.
  uint16_t* bf16_keys_ = nullptr;
  uint16_t* bf16_queries_ = nullptr;
};

}  // namespace moe
