// PEER (He 2024, "Mixture of A Million Experts"; REFERENCE.md §3), templated on the scalar type
// (float for training, double for the gradient checks). The forward's steps, for N tokens x:
//   query      z = x·W_qᵀ + b_q                         [N, h·dk]
//   norm       q = norm(z): BatchNorm (training: the statistics of the current batch, which
//              includes later tokens of the same sequence, as in the paper; evaluation and
//              decoding: running statistics), LayerNorm (per head over d_key) or none
//   retrieval  per head j (ProductKeyRetrieval): the halves of q_j scored against shared sub-keys
//              K¹, K² [S, dk/2]; the exact top-k of the S² sums (product_keys.h); the gate
//              g = softmax(the top-k scores)
//   experts    y = Σ_heads Σ_top-k g·σ(u_eᵀx)·v_e over S² single-neuron experts (PeerExperts)
// and the backward runs them in reverse order.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/core/arena.h"
#include "moe/dist/communicator.h"
#include "moe/ffn/peer/peer_experts.h"
#include "moe/ffn/peer/product_key_retrieval.h"
#include "moe/nn/adamw.h"
#include "moe/nn/batchnorm.h"

namespace moe {

enum class QueryNorm { kBatch, kLayer, kNone };

struct PeerSpec {
  int C = 0;         // model width
  int S = 0;         // sub-keys per half: S² experts
  int heads = 1;     // query heads sharing one pool of experts
  int k = 1;         // experts retrieved per head
  int d_key = 0;     // query width per head (two halves of d_key/2)
  bool gelu = true;  // the experts' activation; else ReLU
  QueryNorm qnorm = QueryNorm::kBatch;
  double bn_eps = 1e-5, bn_momentum = 0.1;  // the query norm's eps; BatchNorm's momentum
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
  explicit PeerLayer(const PeerSpec& s);
  // Data parallel training (P > 1 ranks): a training forward's N tokens are this rank's slice
  // of a global batch, and query BatchNorm uses the global batch's mean and variance (and its
  // backward the global sums), so P ranks compute the function of one process.
  void set_parallel(Communicator* comm) { comm_ = comm; }
  void bind(Arena& a, int max_tokens);
  // train.precision = bf16 (T = float only; after bind): the query projection's three products
  // (nn/linear_bf16.h) and the sub-key scores (ProductKeyRetrieval::bind_bf16) take bf16
  // operands with f32 accumulation; the bias, the query norm, top-k, the gates, the scores'
  // sparse backward and the experts stay f32. enable_bf16 allocates the bf16 buffers (measured,
  // then carved) and returns the arena that owns them: keep it while bf16 is on. refresh_bf16
  // rounds W_q and packs the sub-keys: once per optimizer step, before the step's first forward.
  // disable_bf16() returns to f32 products (before the arena goes).
  Arena enable_bf16();
  void refresh_bf16(const PeerParams<T>& p);
  void disable_bf16();
  bool bf16() const { return wq_b_ != nullptr; }
  // y [N,C] (written); x [N,C]. Training: BatchNorm uses (and updates the running statistics
  // toward) the batch's statistics.
  void forward(T* y, const T* x, const PeerParams<T>& p, int N, bool training);
  // After a forward (with batch norm, a training one) on the same x: dx [N,C] (+=), grads (+=).
  void backward(T* dx, const PeerGrads<T>& g, const T* dy, const T* x, const PeerParams<T>& p);
  // The retrieved experts and router weights of the last forward: [N, heads, k].
  const int32_t* ids() const { return expert_ids_; }
  const T* weights() const { return gates_; }
  int tokens() const { return tokens_; }
  // The last forward's query x·W_qᵀ + b_q and the last backward's d(query), [N, heads·d_key].
  const T* query() const { return query_; }
  const T* dquery() const { return dquery_; }
  const PeerSpec& spec() const { return spec_; }

 private:
  // The steps of forward and backward that are not a class of their own.
  void query_norm_forward(const PeerParams<T>& p, int N, bool training);
  void query_norm_backward(const PeerGrads<T>& g, const PeerParams<T>& p, int N);
  void bind_bf16(Arena& a);  // enable_bf16's allocations in a
  BatchNormOptions batchnorm_options() const { return {spec_.bn_eps, spec_.bn_momentum, comm_}; }

  PeerSpec spec_;
  Communicator* comm_ = nullptr;  // null: one process
  int max_tokens_ = 0;
  ProductKeyRetrieval<T> retrieval_;
  PeerExperts<T> experts_;
  // The last forward, read by backward (D = heads·d_key, A = N·heads·k):
  int tokens_ = 0;
  bool training_ = false;
  T* query_ = nullptr;             // [N, D] x·W_qᵀ + b_q
  T* query_normed_ = nullptr;      // [N, D] its norm: the query the sub-keys score
  T* norm_mean_ = nullptr;         // BatchNorm [D], LayerNorm [N·heads]
  T* norm_rstd_ = nullptr;         // likewise: 1 / sqrt(variance + eps)
  int32_t* expert_ids_ = nullptr;  // [A] the retrieved experts, best first per (token, head)
  T* scores_ = nullptr;            // [A] their product-key scores
  T* gates_ = nullptr;             // [A] softmax of each (token, head)'s scores
  // Backward scratch:
  T* dgate_ = nullptr;           // [A] d(gate), then d(score) in place
  T* dquery_ = nullptr;          // [N, D] d(normed query), then d(query) in place
  double* bn_sums_ = nullptr;    // [2, D] BatchNorm's per-feature sums
  T* bn_affine_grad_ = nullptr;  // [2, D] BatchNorm backward's dγ | dβ
  // bf16 (bind_bf16): W_q's shadow [D, C], the forward's rounded x [N, C] (kept for d(W_q)) and
  // the backward's rounded d(query) [N, D].
  uint16_t* wq_b_ = nullptr;
  uint16_t* x_b_ = nullptr;
  uint16_t* dquery_b_ = nullptr;
};

// Usage metrics (Lample et al.; PEER): z_e = Σ router weights over an evaluation set; usage =
// fraction of experts with z_e > 0; KL(z‖uniform) = log E + Σ z̄ log z̄ (z̄ = z/Σz); the effective
// fraction exp(−KL).
struct UsageStats {
  double usage = 0, kl = 0, effective = 0;
};
UsageStats usage_stats(const std::vector<double>& z);

}  // namespace moe
