// PEER (He 2024, "Mixture of A Million Experts"; REFERENCE.md §3), templated on the scalar type
// (float for training, double for the gradient checks):
//   per head j: q_j = norm(x·W_qᵀ + b_q)_j [d_key]; halves q¹, q² scored against shared sub-keys
//   K¹, K² [S, d_key/2]; exact top-k of the S² sums (product_keys.h); g = softmax(top-k scores);
//   y = Σ_heads Σ_top-k g · σ(u_eᵀx) · v_e over S² single-neuron experts (u_e, v_e ∈ R^C).
// Query norm: batchnorm (training: statistics of the current batch — which includes later
// tokens of the same sequence, as in the paper; eval and decoding: running statistics),
// layernorm (per head over d_key) or none.
// Expert-table gradients are grouped by expert id (a stable counting sort by digits of the id:
// counts, prefix sums, a token-order list per expert), so each row is summed by one task in a
// fixed order: no atomics.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/core/arena.h"
#include "moe/dist/communicator.h"
#include "moe/nn/adamw.h"
#include "moe/nn/batchnorm.h"

namespace moe {

enum class QueryNorm { kBatch, kLayer, kNone };

struct PeerSpec {
  int C = 0, S = 0, heads = 1, k = 1, d_key = 0;
  bool gelu = true;  // else ReLU
  QueryNorm qnorm = QueryNorm::kBatch;
  double bn_eps = 1e-5, bn_momentum = 0.1;
  int64_t experts() const { return int64_t(S) * S; }
};

template <typename T>
struct PeerParams {
  const T* wq = nullptr;      // [h·dk, C]
  const T* bq = nullptr;      // [h·dk]
  const T* gamma = nullptr;   // [h·dk] norm affine (batch/layer norm)
  const T* beta = nullptr;    // [h·dk]
  const T* keys1 = nullptr;   // [S, dk/2]
  const T* keys2 = nullptr;   // [S, dk/2]
  const T* u = nullptr;       // [S², C]
  const T* v = nullptr;       // [S², C]
  T* running_mean = nullptr;  // [h·dk] batchnorm state (updated in training forward)
  T* running_var = nullptr;   // [h·dk]
};

template <typename T>
struct PeerGrads {  // accumulated (+=)
  T *wq = nullptr, *bq = nullptr, *gamma = nullptr, *beta = nullptr, *keys1 = nullptr,
    *keys2 = nullptr, *u = nullptr, *v = nullptr;
  // Optimizer in backward (float only): with a rule, each retrieved row of that table is updated
  // with its complete gradient as soon as the row's sum is formed, and nothing is added to u / v
  // above (AdamWOptimizer::prepare).
  SparseRowRule *u_rule = nullptr, *v_rule = nullptr;
};

template <typename T>
class PeerLayer {
 public:
  explicit PeerLayer(const PeerSpec& s) : s_(s) {}
  // Data parallel training (P > 1 ranks): a training forward's N tokens are this rank's slice
  // of a global batch, and query BatchNorm uses the global batch's mean and variance (and its
  // backward the global sums), so P ranks compute the function of one process.
  void set_parallel(Communicator* comm) { comm_ = comm; }
  void bind(Arena& a, int max_tokens);
  // y [N,C] written.
  void forward(T* y, const T* x, const PeerParams<T>& p, int N, bool training);
  // dx [N,C] (+=), grads (+=).
  void backward(T* dx, const PeerGrads<T>& g, const T* dy, const T* x, const PeerParams<T>& p);
  // The retrieved experts and router weights of the last forward: [N, heads, k].
  const int32_t* ids() const { return ids_; }
  const T* weights() const { return gate_; }
  int tokens() const { return N_; }
  const PeerSpec& spec() const { return s_; }

 private:
  PeerSpec s_;
  Communicator* comm_ = nullptr;
  BatchNormOptions bn_options() const { return {s_.bn_eps, s_.bn_momentum, comm_}; }
  double* bn_sums_ = nullptr;    // [2, h·dk] BatchNorm's per-feature sums
  T* bn_affine_grad_ = nullptr;  // [2, h·dk] BatchNorm backward's dγ | dβ scratch
  int N_ = 0, max_tokens_ = 0;
  bool training_ = false;
  T *z_ = nullptr, *q_ = nullptr, *mean_ = nullptr, *rstd_ = nullptr;  // query pre/post norm
  // Per thread, the sub-key scores of one block of kScoreRows (token, head) rows: [2, rows, S].
  static constexpr int kScoreRows = 64;
  T* score_blk_ = nullptr;
  T* keys_p_ = nullptr;  // float on AVX-512: K¹ᵀ then K²ᵀ packed for panel_gemm (null otherwise)
  int score_threads_ = 0;
  int32_t* ids_ = nullptr;                                    // [N·h·k]
  T *score_ = nullptr, *gate_ = nullptr, *act_in_ = nullptr;  // [N·h·k]
  T* act_e1_ = nullptr;        // [N·h·k] GELU's 1 + erf(z/√2) of each assignment
  T* dq_ = nullptr;            // [N, h·dk]
  int32_t* e_list_ = nullptr;  // assignments grouped by expert, each group in token order [N·h·k]
  int32_t* sub_ids_ = nullptr;  // each retrieval's sub-key pair (id / S, id % S) [N·h·k, 2]
  uint64_t* e_kv_ = nullptr;  // radix sort of (expert id, assignment) pairs, two buffers [2, N·h·k]
  T* dgate_ = nullptr;        // [N·h·k] d(router weight)
  int32_t* e_rows_ = nullptr;   // the retrieved experts, ascending [≤ N·h·k]
  int32_t* row_off_ = nullptr;  // e_rows_[i]'s assignments: e_list_[row_off_[i] .. row_off_[i+1])
  double* row_sq_ = nullptr;    // optimizer in backward: Σ g² per retrieved row of u, then of v
  T* row_g_ = nullptr;          // optimizer in backward: per thread, one row's du | dv [2·C]
  // The backward's expert pass runs in kDxBlocks fixed blocks of experts (split by assignment
  // counts, not by threads), each adding its dx shares into its own [N, C] buffer: 8 blocks keep
  // up to 8 threads busy for 8·N·C floats (16 MiB at 2048 tokens of width 256). Each block is
  // run as kDxChunks chunks in order, one at a time, which threads take as they come free (a
  // whole block per task had left one of two threads idle for the last ~15 ms of a 2^20 step).
  static constexpr int kDxBlocks = 8, kDxChunks = 8;
  uint8_t* dx_seen_ = nullptr;  // [kDxBlocks, N] 1 if the block wrote that token's row
  T* dx_blk_ = nullptr;         // [kDxBlocks, N, C]
  // Chunk c (of block c / kDxChunks): retrieved experts [chunk_[c], chunk_[c+1]).
  int chunk_[kDxBlocks * kDxChunks + 1] = {};
  int32_t* topk_scratch_ = nullptr;  // per (token, head) row: product_key_topk scratch
  T* topk_cand_ = nullptr;
};

// Usage metrics (Lample et al.; PEER): z_e = Σ router weights over an evaluation set; usage =
// fraction of experts with z_e > 0; KL(z‖uniform) = log E + Σ z̄ log z̄ (z̄ = z/Σz); the effective
// fraction exp(−KL).
struct UsageStats {
  double usage = 0, kl = 0, effective = 0;
};
UsageStats usage_stats(const std::vector<double>& z);

}  // namespace moe
