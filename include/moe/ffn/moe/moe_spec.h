// The MoE layer's contract types: its configuration (MoeSpec), the parameter and gradient views
// it reads and accumulates into, what one forward takes (MoeStep) and what it reports (MoeStats,
// MoeCommStats). Letters: N tokens (= B·T), C model width, E routed experts, H one expert's
// hidden width, k experts per token, S shared experts.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/model/config.h"

namespace moe {

// kRelu: ReMoE (arXiv 2412.14711): gates ReLU(x·W_rᵀ), every expert with a positive gate gets
// the token (dropless, a variable number per token), an L1 loss on the gates (router_relu.cpp).
enum class RouterKind { kTopK, kNoisyTopK, kGShard, kExpertChoice, kRelu };

// Over which tokens the balancing loss takes f_e and P_e (docs/MOE.md): the whole forward's
// (global) batch, or each sequence on its own with the per-sequence losses averaged
// (DeepSeek-V2/V3's sequence-wise balance loss), or kGlobalBatch: P_e over the forward's tokens
// as kMicroBatch, f_e over the optimizer step's global batch (Qwen, arXiv 2501.11873) — the
// counts of the step's counting pre-pass (MoeStep::count_pass) when it has several micro-batches.
enum class AuxLossScope { kMicroBatch, kSequence, kGlobalBatch };

// DeepSeek-V3's bias update b_e += γ·sign(mean load − load_e); kSignCentred then subtracts the
// mean bias, so the biases keep mean zero.
enum class BiasUpdate { kSign, kSignCentred };

// Which GEMM runs the expert products in float. kAuto: our panel GEMM (kernels/grouped_gemm)
// where experts are small (H·C ≤ 128K floats: OpenBLAS's per-call packing dominates there) and
// OpenBLAS above, where its blocking is as fast or faster (measured side by side, docs/MOE.md).
// The choice changes the bits of the result (another summation order), so it is configuration.
// kPanel falls back to OpenBLAS where the panel GEMM is not native (no AVX-512).
enum class ExpertGemm { kAuto, kBlas, kPanel };

struct MoeSpec {
  int C = 0;         // model width
  int E = 0;         // routed experts
  int H = 0;         // hidden width of one expert
  int k = 1;         // experts per token (token choice); relu: the target mean
  int n_shared = 0;  // shared experts, run on every token
  int Hs = 0;        // hidden width of one shared expert; 0 = H
  // Qwen2-MoE: the shared experts' summed output is multiplied per token by σ(x·w_sg), w_sg [C].
  bool shared_gate = false;
  // Multiplies the routed combine weights after the optional renormalisation (topk only).
  float routed_scale = 1.f;
  Activation act = Activation::kSwiGLU;
  RouterKind kind = RouterKind::kTopK;
  bool normalize = true;      // renormalise the k gates to sum 1
  bool sigmoid = false;       // sigmoid scores instead of a softmax (topk only)
  bool bias_balance = false;  // DeepSeek-V3 selection bias
  float bias_rate = 1e-3f;
  BiasUpdate bias_update = BiasUpdate::kSign;
  // DeepSeek-V3's group-limited routing (topk only): the E experts form n_group groups of E/n_group
  // consecutive experts; a token picks the topk_group groups with the largest sums of their two
  // best selection keys, then its top-k among those groups' experts. n_group = 1: off.
  int n_group = 1, topk_group = 1;
  AuxLossScope aux_scope = AuxLossScope::kMicroBatch;
  float jitter = 0;          // multiplicative jitter of the router input, U(1 ± jitter)
  float expert_dropout = 0;  // dropout of the experts' hidden units
  float capacity_factor = 0, eval_capacity_factor = 0;  // 0: dropless
  double alpha = 0.01, beta = 0.001;  // aux and z-loss coefficients (double: compared in double)
  ExpertGemm expert_gemm = ExpertGemm::kAuto;

  static MoeSpec from_config(const FfnConfig& f, int d_model);
  // Throws moe::Error naming the config field (model.ffn.*) when the layer cannot run this
  // spec. MoeLayer's constructor calls it, so every entry point (trainer, bench, tests) is
  // checked the same way. No limit on E: every buffer is sized from the spec at bind time.
  void validate() const;
  void validate_groups() const;  // the group-limited routing fields (part of validate)
  int w1_rows() const { return act == Activation::kSwiGLU ? 2 * H : H; }
  int shared_H() const { return Hs > 0 ? Hs : H; }
  int shared_w1_rows() const { return act == Activation::kSwiGLU ? 2 * shared_H() : shared_H(); }
};

// Parameter pointers, laid out as the checkpoint stores them: stacked per expert, [out, in].
template <typename T>
struct MoeParams {
  const T* router = nullptr;    // [E, C]
  const T* w_noise = nullptr;   // [E, C] (noisy_topk)
  const T* bias = nullptr;      // [E]    (bias_balance; selection only, no gradient)
  const T* w_gate = nullptr;    // [E, H, C] (SwiGLU only)
  const T* w_up = nullptr;      // [E, H, C]
  const T* w_down = nullptr;    // [E, C, H]
  const T* s_gate = nullptr;    // [S, Hs, C] shared experts (SwiGLU only)
  const T* s_up = nullptr;      // [S, Hs, C]
  const T* s_down = nullptr;    // [S, C, Hs]
  const T* s_router = nullptr;  // [C] the shared experts' sigmoid gate (spec.shared_gate)
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
  T* s_router = nullptr;
};

// Optional externally supplied randomness (tests feed the PyTorch fixture's draws).
template <typename T>
struct MoeNoise {
  const T* normal = nullptr;   // [N, E] for noisy_topk
  const T* uniform = nullptr;  // [N] for gshard
};

// What one forward needs besides its tensors.
template <typename T>
struct MoeStep {
  int batch = 1;    // B sequences ...
  int seq_len = 1;  // ... of T tokens: x and y are [B·T, C], row-major [B, T]
  // Training selects the training capacity factor, the router noise, jitter and expert dropout.
  bool training = false;
  // The keys of this forward's random draws: (seed, step, layer, purpose), core/rng.h.
  uint64_t seed = 0;
  int64_t step = 0;
  int layer = 0;
  // Multiplies the aux/z-loss gradients in backward (the caller's gradient scale).
  T loss_scale = T(1);
  MoeNoise<T> noise;
  // aux_loss_scope global_batch, training: a counting pre-pass forward. The router adds this
  // forward's selections (over all ranks) to the counts of optimizer step `step` (the first of a
  // run of counting forwards starts them afresh); the step's later training forwards
  // (count_pass false, same step) take f_e from those counts. Evaluation, a forward of another
  // step, or of a step with no counting forward uses its own selections.
  bool count_pass = false;
  // relu: the coefficient of this layer's load-balanced L1 loss, λ_i/L (L: the model's relu
  // layers; ReluL1Schedule in remoe.h). The loss is relu_l1·(1/N)·Σ_n Σ_e f_e·R_e(x_n).
  double relu_l1 = 0;
};

// Routing statistics of the last forward (per layer; logged and printed by moe eval).
struct MoeStats {
  std::vector<int64_t> tokens_per_expert;  // kept assignments per expert
  int64_t assignments = 0;                 // selected (token, expert) pairs before capacity
  int64_t dropped = 0;                     // of those, dropped by capacity (or random routing)
  double router_entropy = 0;               // mean over tokens of −Σ p log p (nats)
  int unused_experts = 0;
  double max_over_mean_load = 0;
  double aux_loss = 0, z_loss = 0;  // unscaled by the gradient scale
  // relu: mean active (positive-gate) experts per token, the sparsity 1 − active/(N·E) and the
  // L1 loss without its coefficient (aux_loss = relu_l1 · l1_loss); all over the global batch.
  double active_per_token = 0, sparsity = 0, l1_loss = 0;
};

// All-to-all traffic of expert parallelism since the last reset (for the metrics log).
struct MoeCommStats {
  double seconds = 0;  // wall time inside the exchanges (counts, rows, results, gradients)
  double bytes = 0;    // bytes this rank sent to other ranks
};

}  // namespace moe
