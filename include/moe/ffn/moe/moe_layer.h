// The MoE FFN computation, templated on the scalar type so the same code runs in float for
// training and in double for the gradient checks (tests/ffn/test_moe.cpp).
//
//   x [N,C] → router logits r = x·W_rᵀ [N,E] (fp32 or better) → scores → selection
//   → assignments (token, expert, gate), capacity-limited → counting sort by expert
//   → gather rows into per-expert panels → expert GEMMs (SwiGLU or GELU) → combine in fixed order
//   (+ shared experts) → y [N,C]
//
// Routers (REFERENCE.md §1): topk (softmax or sigmoid scores, gates renormalised or not),
// noisy_topk (Shazeer), gshard (top-2 with random second expert), expert_choice (Zhou et al.,
// groups = tokens at one position across the batch), each token-choice kind optionally with the
// DeepSeek-V3 selection bias. Details, drop order and conventions: docs/MOE.md.
//
// Determinism: every reduction runs in a fixed order (per-token combine in slot order, per-expert
// weight gradients owned by one task); no atomics; noise comes from the counter-based RNG keyed
// by (seed, step, layer).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/core/arena.h"
#include "moe/model/config.h"

namespace moe {

enum class RouterKind { kTopK, kNoisyTopK, kGShard, kExpertChoice };

struct MoeSpec {
  int C = 0, E = 0, H = 0, k = 1, n_shared = 0;
  Activation act = Activation::kSwiGLU;
  RouterKind kind = RouterKind::kTopK;
  bool normalize = true;
  bool sigmoid = false;
  bool bias_balance = false;
  float bias_rate = 1e-3f;
  float jitter = 0;
  float expert_dropout = 0;
  float capacity_factor = 0, eval_capacity_factor = 0;
  double alpha = 0.01, beta = 0.001;  // double: the loss values are compared in double
  static MoeSpec from_config(const FfnConfig& f, int d_model);
  int w1_rows() const { return act == Activation::kSwiGLU ? 2 * H : H; }
};

// Parameter pointers, laid out as the checkpoint stores them: stacked per expert, [out, in].
template <typename T>
struct MoeParams {
  const T* router = nullptr;   // [E, C]
  const T* w_noise = nullptr;  // [E, C] (noisy_topk)
  const T* bias = nullptr;     // [E]    (bias_balance; selection only, no gradient)
  const T* w_gate = nullptr;   // [E, H, C] (SwiGLU only)
  const T* w_up = nullptr;     // [E, H, C]
  const T* w_down = nullptr;   // [E, C, H]
  const T* s_gate = nullptr;   // [S, H, C] shared experts (SwiGLU only)
  const T* s_up = nullptr;     // [S, H, C]
  const T* s_down = nullptr;   // [S, C, H]
};

template <typename T>
struct MoeGrads {  // all accumulated (+=)
  T* router = nullptr;
  T* w_noise = nullptr;
  T* w_gate = nullptr;
  T* w_up = nullptr;
  T* w_down = nullptr;
  T* s_gate = nullptr;
  T* s_up = nullptr;
  T* s_down = nullptr;
};

// Routing statistics of the last forward (per layer; logged and printed by moe eval).
struct MoeStats {
  std::vector<int64_t> tokens_per_expert;  // kept assignments per expert
  int64_t assignments = 0;                 // selected (token, expert) pairs before capacity
  int64_t dropped = 0;                     // of those, dropped by capacity (or random routing)
  double router_entropy = 0;               // mean over tokens of −Σ p log p (nats)
  int unused_experts = 0;
  double max_over_mean_load = 0;
  double aux_loss = 0, z_loss = 0;         // unscaled by the gradient scale
};

// Optional externally supplied randomness (tests feed the PyTorch fixture's draws).
template <typename T>
struct MoeNoise {
  const T* normal = nullptr;   // [N, E] for noisy_topk
  const T* uniform = nullptr;  // [N] for gshard
};

template <typename T>
class MoeLayer {
 public:
  explicit MoeLayer(const MoeSpec& spec) : s_(spec) {}
  const MoeSpec& spec() const { return s_; }
  // Carves buffers for up to max_batch × max_seq tokens (measuring pass first; see Arena).
  void bind(Arena& acts, int max_batch, int max_seq);
  // y [N,C] written, N = B·T. training selects the capacity factor, noise and jitter.
  // loss_scale multiplies the aux/z-loss gradients in backward (the caller's grad scale).
  void forward(T* y, const T* x, const MoeParams<T>& p, int B, int Tn, bool training,
               uint64_t seed, int64_t step, int layer, T loss_scale,
               const MoeNoise<T>& noise = {});
  // dx [N,C] (+=), grads (+=); dy [N,C]; x and p as in forward.
  void backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x, const MoeParams<T>& p);
  // The aux + z loss of the last forward (already multiplied by α, β).
  double aux_loss() const { return stats_.aux_loss + stats_.z_loss; }
  const MoeStats& stats() const { return stats_; }
  // DeepSeek-V3 bias update from the last forward's loads: b_e += γ·sign(mean − load_e).
  void update_bias(T* bias) const;
  // Assignments of the last forward (tests): per token-slot the expert and whether it was kept.
  std::vector<int32_t> selected_experts() const;  // [N, k] (token choice)
  std::vector<int32_t> dropped_mask() const;      // [N, k]

 private:
  void route_token_choice(const T* x, const MoeParams<T>& p, bool training, uint64_t seed,
                          int64_t step, int layer, const MoeNoise<T>& noise);
  void route_expert_choice(int B, int Tn, float cf);
  void dispatch();
  // Multiplies expert e's hidden panel rows [o, o+m) by the dropout mask / (1 − p).
  void apply_expert_dropout(T* hid, int o, int m) const;
  void experts_forward(const T* x, const MoeParams<T>& p);
  void router_backward(T* dx, const MoeGrads<T>& g, const T* x, const MoeParams<T>& p);
  // P of the balancing loss: the softmax score (sigmoid: p normalised over experts).
  T balance_prob(int n, int e) const;


  MoeSpec s_;
  int N_ = 0, B_ = 0, T_ = 0, max_rows_ = 0, max_assign_ = 0, cap_ = 0;
  bool ec_mode_ = false;
  bool jitter_active_ = false;
  bool noisy_active_ = false;  // noisy router in training: noise was added
  bool dropout_active_ = false;
  uint64_t seed_ = 0;  // keys of this forward's random draws (expert dropout is redrawn in
  int64_t step_ = 0;   // backward from the same keys instead of storing a mask)
  int layer_ = 0;  // expert choice this forward (else token choice)
  int kk_ = 1;            // experts per token in token-choice mode
  T loss_scale_ = 1;
  // Router state [N,E]: logits, scores (softmax / sigmoid / softmax of noisy logits),
  // noise std (noisy), epsilon (noisy).
  T *logits_ = nullptr, *scores_ = nullptr, *noise_logits_ = nullptr, *eps_ = nullptr;
  T *lse_ = nullptr;      // [N] logsumexp of the logits (z-loss)
  T *score_sum_ = nullptr;  // [N] Σ_e sigmoid scores (sigmoid routers)
  T *jittered_ = nullptr; // [N,C] x with multiplicative jitter (training only)
  // Assignments: a = n·k + s (token choice) or EC order; expert, token, gate, kept/row.
  int32_t *a_expert_ = nullptr, *a_token_ = nullptr, *a_row_ = nullptr;  // a_row = -1: dropped
  T *a_gate_ = nullptr, *a_dgate_ = nullptr;
  int n_assign_ = 0;
  // Dispatch: rows sorted by expert.
  int32_t *offsets_ = nullptr;  // [E+1]
  int32_t *row_assign_ = nullptr, *row_token_ = nullptr;  // [max_rows]
  int32_t *tok_off_ = nullptr, *tok_rows_ = nullptr;      // token CSR over rows, fixed order
  int32_t* expert_order_ = nullptr;                        // experts by rows, largest first
  int32_t* sel_count_ = nullptr;                           // [E] selections before capacity
  int32_t* cursor_ = nullptr;                              // [max(E, N)] scratch
  int n_rows_ = 0;
  // Expert activations [rows, ·] and shared ones [N, ·].
  T *xe_ = nullptr, *gu_ = nullptr, *hid_ = nullptr, *ye_ = nullptr, *dye_ = nullptr;
  T *s_gu_ = nullptr, *s_hid_ = nullptr, *s_y_ = nullptr;
  T *dlogits_ = nullptr;  // [N,E]
  MoeStats stats_;
};

}  // namespace moe
