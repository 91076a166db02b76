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
#include "moe/dist/communicator.h"
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
  double aux_loss = 0, z_loss = 0;  // unscaled by the gradient scale
};

// Optional externally supplied randomness (tests feed the PyTorch fixture's draws).
template <typename T>
struct MoeNoise {
  const T* normal = nullptr;   // [N, E] for noisy_topk
  const T* uniform = nullptr;  // [N] for gshard
};

// All-to-all traffic of expert parallelism since the last reset (for the metrics log).
struct MoeCommStats {
  double seconds = 0;  // wall time inside the exchanges (counts, rows, results, gradients)
  double bytes = 0;    // bytes this rank sent to other ranks
};

template <typename T>
class MoeLayer {
 public:
  explicit MoeLayer(const MoeSpec& spec) : s_(spec), El_(spec.E) {}
  const MoeSpec& spec() const { return s_; }
  // Parallel training (docs/DISTRIBUTED.md); call before bind(). With comm->size() = P > 1, a
  // training forward treats its B sequences as this rank's slice of a global batch of B·P:
  // capacity, the balancing loss's f_e and P_e, the bias-balance loads and the logged routing
  // statistics are computed over the global batch (so P ranks compute the function of one
  // process). expert_parallel: this rank holds experts [rank·E/P, (rank+1)·E/P) only (the
  // expert pointers of MoeParams/MoeGrads point at those E/P); training exchanges token rows
  // with MPI_Alltoall(v); evaluation (every rank holds the same tokens) runs the local experts
  // on all tokens and sums the partial outputs over ranks.
  void set_parallel(Communicator* comm, bool expert_parallel);
  int first_local_expert() const { return e0_; }
  int local_experts() const { return El_; }
  const MoeCommStats& comm_stats() const { return comm_stats_; }
  void reset_comm_stats() { comm_stats_ = {}; }
  // Carves buffers for up to max_batch × max_seq tokens (measuring pass first; see Arena).
  void bind(Arena& acts, int max_batch, int max_seq);
  // y [N,C] written, N = B·T. training selects the capacity factor, noise and jitter.
  // loss_scale multiplies the aux/z-loss gradients in backward (the caller's grad scale).
  void forward(T* y, const T* x, const MoeParams<T>& p, int B, int Tn, bool training, uint64_t seed,
               int64_t step, int layer, T loss_scale, const MoeNoise<T>& noise = {});
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
  // Capacity (in the documented drop order, over the global batch when distributed) and the
  // selection counts f_e, from the provisional token-choice assignments.
  void apply_capacity();
  void dispatch();
  // Multiplies expert e's hidden panel rows [o, o+m) by the dropout mask / (1 − p).
  void apply_expert_dropout(T* hid, int o, int m) const;
  // Expert panels: rows of local expert j at [off[j], off[j+1]) of xe/gu/hid/ye/dye; weights of
  // local expert j at index j of MoeParams' expert tensors.
  struct Panels {
    const T* xe;  // the experts' input rows, or the token matrix x when `rows` is set
    T *gu, *hid, *ye, *dye;
    const int32_t* off;
    const int32_t* order;  // local experts, most rows first
    int n;
    // Fused (float panel path, no expert parallelism): panel row r is token rows[r] of xe and
    // of dy, with gate row_gate[r]; backward writes d(gate) to row_dgate[r]. dye is unused.
    const int32_t* rows = nullptr;
    const T* dy = nullptr;
    const T* row_gate = nullptr;
    T* row_dgate = nullptr;
  };
  void panels_forward(const Panels& q, const MoeParams<T>& p);
  void panels_backward(const Panels& q, const MoeGrads<T>& g, const MoeParams<T>& p, T* dxe);
  // Expert parallelism, training: rows to their experts' owners and results back.
  void exchange_setup();
  void exchange(const T* send, T* recv, bool to_owner);  // timed; rows in panel or send order
  void finish_stats(double z_sum);
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
  int layer_ = 0;      // expert choice this forward (else token choice)
  int kk_ = 1;         // experts per token in token-choice mode
  T loss_scale_ = 1;
  // Router state [N,E]: logits, scores (softmax / sigmoid / softmax of noisy logits),
  // noise std (noisy), epsilon (noisy).
  T *logits_ = nullptr, *scores_ = nullptr, *noise_logits_ = nullptr, *eps_ = nullptr;
  T* lse_ = nullptr;        // [N] logsumexp of the logits (z-loss)
  T* score_sum_ = nullptr;  // [N] Σ_e sigmoid scores (sigmoid routers)
  T* jittered_ = nullptr;   // [N,C] x with multiplicative jitter (training only)
  // Assignments: a = n·k + s (token choice) or EC order; expert, token, gate, kept/row.
  int32_t *a_expert_ = nullptr, *a_token_ = nullptr, *a_row_ = nullptr;  // a_row = -1: dropped
  T *a_gate_ = nullptr, *a_dgate_ = nullptr;
  int n_assign_ = 0;
  // Dispatch: rows sorted by expert.
  int32_t* offsets_ = nullptr;                            // [E+1]
  int32_t *row_assign_ = nullptr, *row_token_ = nullptr;  // [max_rows]
  int32_t *tok_off_ = nullptr, *tok_rows_ = nullptr;      // token CSR over rows, fixed order
  int32_t* expert_order_ = nullptr;                       // experts by rows, largest first
  int32_t* sel_count_ = nullptr;                          // [E] selections before capacity
  int32_t* cursor_ = nullptr;                             // [max(E, N)] scratch
  int n_rows_ = 0;
  // Expert activations [rows, ·] and shared ones [N, ·].
  T *xe_ = nullptr, *gu_ = nullptr, *hid_ = nullptr, *ye_ = nullptr, *dye_ = nullptr;
  T *s_gu_ = nullptr, *s_hid_ = nullptr, *s_y_ = nullptr;
  T* dlogits_ = nullptr;  // [N,E]
  MoeStats stats_;
  // Parallelism.
  Communicator* comm_ = nullptr;
  int P_ = 1, rank_ = 0, e0_ = 0, El_ = 0;
  bool ep_ = false;
  bool dist_ = false;     // this forward is one rank's slice of a global training batch
  int64_t n_global_ = 0;  // tokens in the global batch
  int64_t tok0_ = 0;      // global index of this rank's first token (keys the random draws)
  int max_panel_rows_ = 0;
  // Float with AVX-512: packed-B scratch of panel_gemm, pack_stride_ floats per thread, sized
  // for experts of up to pack_rows_ rows (null otherwise: the layer uses OpenBLAS).
  float* pack_ = nullptr;
  std::size_t pack_stride_ = 0, pack_b_floats_ = 0, pack_a_floats_ = 0;
  bool fused_ = false;  // experts read x and dy through row indices (see Panels)
  T *row_gate_ = nullptr, *row_dgate_ = nullptr;  // [max_rows] (fused)
  int pack_rows_ = 0, pack_threads_ = 0;
  float* pack_buffer() const;
  T* ec_scores_ = nullptr;  // [B·P·T, E] expert choice's global scores (distributed)
  T *rbuf_ = nullptr, *pxe_ = nullptr, *pgu_ = nullptr, *phid_ = nullptr, *pye_ = nullptr,
    *pdye_ = nullptr;                              // owner-side panels [max_panel_rows, ·]
  int32_t *p_off_ = nullptr, *p_order_ = nullptr;  // [El+1], [El]
  std::vector<int> send_e_, recv_e_;               // [P·El] rows per (rank, local expert)
  std::vector<int64_t> send_n_, recv_n_;           // [P] rows to / from each rank
  std::vector<int> blk_panel_;  // [P·El] first panel row of (source rank, local expert)
  MoeCommStats comm_stats_;
  // Scratch reused every step (no allocation inside a step after the first).
  std::vector<double> cap_buf_, stats_buf_, ent_buf_;
  std::vector<int64_t> cap_before_, cap_run_, xch_sc_, xch_rc_;
  std::vector<int32_t> ec_pick_;
};

}  // namespace moe
