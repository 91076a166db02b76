// The MoE router: x [N,C] → logits r = x·W_rᵀ [N,E] → scores → selection → gates, capacity,
// the aux and z losses and their gradients, and the DeepSeek-V3 bias update. Everything routing
// computes is fp32 or better (double in the gradient checks).
//
// Kinds (REFERENCE.md §1; drop order and conventions in docs/MOE.md):
// - topk: softmax (or sigmoid) scores, top-k, gates renormalised over the k or not.
// - noisy_topk (Shazeer): top-k of r + ε·softplus(x·W_noiseᵀ); gates = softmax over the kept.
// - gshard: top-2 renormalised; in training the second expert is kept with probability
//   min(1, 2·g₂).
// - expert_choice (Zhou et al.): each expert takes its top-c tokens of each group (the tokens at
//   one position across the batch); gates = the softmax scores. Decoding one sequence (B = 1)
//   falls back to token-choice top-round(cf), unnormalised.
// Token-choice kinds may add the selection bias (bias_balance) to the keys of the top-k only;
// - relu (ReMoE, Wang et al., arXiv 2412.14711): gates R = ReLU(r), no softmax, no top-k; every
//   expert with R_e > 0 gets the token (dropless; k is only the target mean). Assignments are
//   token-major, experts ascending. Its loss: relu_l1·(1/N)·Σ_n Σ_e f_e·R_e(x_n) with
//   f_e = E·(tokens with R_e > 0)/(k·N), not differentiated (§3.4); no aux or z-loss.
// topk may limit each token to its topk_group best groups of experts (DeepSeek-V3, n_group > 1:
// routing_rules.h) and scale the gates by routed_scaling_factor after the normalisation.
//
// Capacity (token choice, cf > 0): cap = ⌈cf·N·k/E⌉ per expert over the (global) batch; kept in
// the documented order: all first choices before any second, then by global token index.
// Losses: aux = α·E·Σ_e f_e·P_e (f_e: selections before capacity / (N·k), GShard: first choices
// / N; P_e: mean router probability), z = β·mean_n logsumexp(r_n)². aux_loss_scope sequence
// takes f and P per sequence (T tokens) and averages the sequences' losses (DeepSeek-V2/V3);
// global_batch takes f over the optimizer step's global batch: the counts its counting forwards
// (MoeStep::count_pass) gathered, P over each forward's tokens (Qwen, arXiv 2501.11873).
//
// Distributed training (set_parallel with P > 1): capacity, f_e, P_e, the bias loads and the
// statistics are taken over the global batch of P slices, so P ranks compute the function of one
// process; expert choice's groups span the global batch. Random draws are keyed by the global
// token index. Ties in every selection go to the lower index (expert, then token).
#pragma once
#include <cstdint>

#include "moe/core/arena.h"
#include "moe/dist/communicator.h"
#include "moe/ffn/moe/moe_spec.h"

namespace moe {

// What became of a selected (token, expert) pair.
enum class AssignmentFate : uint8_t {
  kKept,     // routed to its expert
  kDropped,  // over its expert's capacity: contributes nothing (the residual carries the token)
  kSkipped,  // GShard's random routing left out the second expert
};

// The (token, expert) pairs of one forward. Token choice: a = n·k + s (slot s of token n);
// expert choice: the global selection order (t·E + e)·c + j restricted to this rank's tokens.
template <typename T>
struct Assignments {
  int count = 0;
  int32_t* expert = nullptr;       // [max]
  int32_t* token = nullptr;        // [max] local token index
  T* gate = nullptr;               // [max] weight of the expert's output in the combine
  T* dgate = nullptr;              // [max] d loss / d gate (backward; 0 unless kept)
  AssignmentFate* fate = nullptr;  // [max]
};

template <typename T>
class Router {
 public:
  explicit Router(const MoeSpec& spec) : spec_(spec) {}
  // comm: null or one process for single-process routing; else the ranks of a data-parallel job.
  void set_parallel(Communicator* comm);
  // Carves state for up to max_batch × max_seq tokens and max_assign assignments (Assignments'
  // arrays included).
  void bind(Arena& a, int max_batch, int max_seq, int max_assign);
  // The assignments of x [N,C] (N = step.batch·step.seq_len), capacity applied.
  void forward(const T* x, const MoeParams<T>& p, const MoeStep<T>& step);
  // The aux and z losses and the routing statistics of this forward (collective when
  // distributed). After the experts, so the collectives keep their order across ranks.
  void finish_stats();
  // dx [N,C] (+=) and grads.router, grads.w_noise (+=) from the gates' gradients
  // (assignments().dgate) and the aux/z losses. scratch: [N,C] floats free for the call.
  void backward(T* dx, const MoeGrads<T>& g, const T* x, const MoeParams<T>& p, T* scratch);
  // DeepSeek-V3 bias update from this forward's loads alone: b_e += γ·sign(mean − load_e)
  // (then centred with bias_update sign_centred). Training updates once per optimizer step from
  // the step's summed loads instead (add_selections, update_selection_bias in routing_rules.h).
  void update_bias(T* bias) const;
  // loads [E] (+=) this token-choice forward's selections per expert before capacity (GShard:
  // first choices), over the global batch when distributed: the loads of the bias update.
  void add_selections(double* loads) const;

  const Assignments<T>& assignments() const { return assign_; }
  Assignments<T>& assignments() { return assign_; }
  const MoeStats& stats() const { return stats_; }
  // This forward routed by expert choice (else token choice, k = experts_per_token()).
  bool expert_choice() const { return expert_choice_; }
  // Each token has experts_per_token() assignment slots (token choice other than relu).
  bool fixed_slots() const { return !expert_choice_ && spec_.kind != RouterKind::kRelu; }
  int experts_per_token() const { return experts_per_token_; }

 private:
  void begin(const MoeStep<T>& step);
  const T* router_input(const T* x, const MoeStep<T>& step);
  void logsumexp_of_logits();
  void token_choice_scores(const T* xr, const MoeParams<T>& p, const MoeStep<T>& step);
  void select_token_choice(const MoeParams<T>& p, const MoeStep<T>& step);
  void apply_capacity();
  void select_expert_choice();
  // P of the balancing loss: the softmax score (sigmoid: p normalised over experts).
  T balance_prob(int n, int e) const;
  // aux_loss_scope sequence: per-sequence selection counts, and Σ_b Σ_e f_{b,e}·P_{b,e}.
  void count_sequence_selections();
  double sequence_balance_sum() const;
  // aux_loss_scope global_batch: add this counting forward's selections to the step's counts;
  // f_e from the step's counts.
  void add_step_selections();
  double step_fraction(int e) const;
  bool aux_loss_active() const;
  void gate_grads_to_logits();
  T* thread_keys() const;
  // relu (router_relu.cpp): gates and assignments; statistics and the L1 loss; d/dlogits.
  void select_relu();
  void finish_relu_stats();
  void relu_grads_to_logits();

  MoeSpec spec_;
  // Parallel layout.
  Communicator* comm_ = nullptr;
  int ranks_ = 1, rank_ = 0;
  // This forward.
  int tokens_ = 0, batch_ = 0, seq_len_ = 0;
  bool distributed_ = false;   // one rank's slice of a global training batch
  int64_t global_tokens_ = 0;  // tokens in the (global) batch
  int64_t first_token_ = 0;    // global index of this rank's first token (keys the draws)
  float capacity_factor_ = 0;  // training's or evaluation's
  bool expert_choice_ = false;
  int experts_per_token_ = 1;
  bool capacity_limited_ = false;  // token choice with cf > 0
  int64_t capacity_ = 0;           // kept assignments per expert when capacity_limited_
  bool noisy_ = false;             // noisy router in training: noise was added
  bool jittered_ = false;          // the logits were computed from the jittered input
  T loss_scale_ = T(1);
  double relu_l1_ = 0;  // relu: this forward's L1 coefficient (MoeStep::relu_l1)
  Assignments<T> assign_;
  // State [N,E]: logits, scores (softmax / sigmoid / softmax of the noisy logits), their
  // gradient (forward: the noisy logits themselves), and for noisy_topk the noise logits
  // z = x·W_noiseᵀ (backward: their gradient, in place) and ε.
  T *logits_ = nullptr, *scores_ = nullptr, *dlogits_ = nullptr;
  T *noise_logits_ = nullptr, *noise_eps_ = nullptr;
  T* logsumexp_ = nullptr;  // [N] of the raw logits (z-loss)
  T* score_sum_ = nullptr;  // [N] Σ_e sigmoid scores (sigmoid routers)
  T *jittered_x_ = nullptr, *jitter_factors_ = nullptr;  // [N,C] each (jitter > 0)
  T* aux_grad_ = nullptr;  // [E] d aux / d P(n, e), the same for every token ([B,E]: per sequence)
  int32_t* selections_ = nullptr;     // [E] selections per expert before capacity (f_e, bias)
  double* seq_selections_ = nullptr;  // [B,E] the same per sequence (aux_loss_scope sequence)
  // aux_loss_scope global_batch: selections per expert over the counting forwards of optimizer
  // step counts_step_ (all ranks), and their tokens; whether this forward counts or uses them.
  double* step_selections_ = nullptr;  // [E]
  int64_t step_tokens_ = 0, counts_step_ = -1;
  bool count_pass_ = false, use_step_counts_ = false;
  bool last_counted_ = false;  // the previous forward was a counting one
  // Capacity: [P·k·E] per (rank, slot, expert) counts then [E] selections, summed over ranks;
  // per-expert running counts.
  double* slot_counts_ = nullptr;
  int64_t *kept_before_ = nullptr, *kept_running_ = nullptr;
  int max_slots_ = 0;   // the largest k of a token-choice forward
  int max_tokens_ = 0;  // N bound at bind
  // Expert choice: global scores [B·P·T, E] (distributed), chosen global tokens [T·E·c].
  T* global_scores_ = nullptr;
  int32_t* ec_pick_ = nullptr;
  int64_t max_ec_pick_ = 0;
  // Statistics: [E kept | E Σ_n P | assignments, dropped, Σ entropy, Σ lse²], per-token entropy.
  double* stats_sums_ = nullptr;
  double* token_entropy_ = nullptr;
  // Per-thread scratch: the biased keys of one token [E] then group-limited routing's values
  // (key_stride_ in all), its group indices (group_stride_), and expert choice's ranking of one
  // group [B·P]; sized for scratch_threads_ threads.
  T* key_scratch_ = nullptr;
  std::size_t key_stride_ = 0, group_stride_ = 0;
  int32_t* group_scratch_ = nullptr;
  int32_t* rank_scratch_ = nullptr;
  int64_t rank_scratch_stride_ = 0;
  int scratch_threads_ = 0;
  MoeStats stats_;
};

}  // namespace moe
