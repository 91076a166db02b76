// The MoE FFN layer, templated on the scalar type so the same code runs in float for training
// and in double for the gradient checks (tests/ffn/test_moe.cpp):
//
//   x [N,C] → route (router.h: scores, selection, capacity) → dispatch (dispatch.h: rows sorted
//   by expert) → experts (experts.h; over the all-to-all of exchange.h with expert parallelism)
//   → combine in fixed order (+ shared experts) → y [N,C]
//
// forward runs those steps in that order and backward runs them reversed; the parts' headers
// give the shapes and the routers' semantics (details, drop order, conventions: docs/MOE.md).
//
// Determinism: every reduction runs in a fixed order (per-token combine in slot order, per-expert
// weight gradients owned by one task); no atomics; noise comes from the counter-based RNG keyed
// by (seed, step, layer, purpose). Memory: every buffer is carved at bind from the spec and the
// largest batch, for any number of experts; a step allocates nothing.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/core/arena.h"
#include "moe/dist/communicator.h"
#include "moe/ffn/moe/dispatch.h"
#include "moe/ffn/moe/exchange.h"
#include "moe/ffn/moe/experts.h"
#include "moe/ffn/moe/moe_spec.h"
#include "moe/ffn/moe/router.h"

namespace moe {

template <typename T>
class MoeLayer {
 public:
  // Validates the spec (MoeSpec::validate).
  explicit MoeLayer(const MoeSpec& spec);
  const MoeSpec& spec() const { return spec_; }
  // Parallel training (docs/DISTRIBUTED.md); call before bind(). With comm->size() = P > 1, a
  // training forward treats its B sequences as this rank's slice of a global batch of B·P:
  // capacity, the balancing loss's f_e and P_e, the bias-balance loads and the logged routing
  // statistics are computed over the global batch (so P ranks compute the function of one
  // process). expert_parallel: this rank holds experts [rank·E/P, (rank+1)·E/P) only (the
  // expert pointers of MoeParams/MoeGrads point at those E/P); training exchanges token rows
  // with MPI_Alltoall(v); evaluation (every rank holds the same tokens) runs the local experts
  // on all tokens and sums the partial outputs over ranks.
  void set_parallel(Communicator* comm, bool expert_parallel);
  int first_local_expert() const { return expert_parallel_ ? exchange_.first_local_expert() : 0; }
  int local_experts() const { return expert_parallel_ ? exchange_.local_experts() : spec_.E; }
  const MoeCommStats& comm_stats() const { return exchange_.stats(); }
  void reset_comm_stats() { exchange_.reset_stats(); }
  // Carves buffers for up to max_batch × max_seq tokens (measuring pass first; see Arena).
  void bind(Arena& acts, int max_batch, int max_seq);
  // train.precision (float only; after bind): bf16 runs the routed and shared experts' products
  // in bf16 (experts.h); routing, gates, losses and the combine stay in T.
  // refresh_low_precision rounds and packs p's expert weights for them: once per optimizer step,
  // before the step's first forward and before each evaluation.
  void set_precision(Precision precision) { experts_.set_bf16(precision == Precision::kBf16); }
  void refresh_low_precision(const MoeParams<T>& p) {
    if (experts_.bf16()) experts_.refresh_bf16(p, local_experts());
  }
  bool bf16() const { return experts_.bf16(); }
  std::size_t bf16_bytes() const { return experts_.bf16_bytes(); }
  // y [N,C] written, N = step.batch·step.seq_len.
  void forward(T* y, const T* x, const MoeParams<T>& p, const MoeStep<T>& step);
  // dx [N,C] (+=), grads (+=); dy [N,C]; x and p as in forward.
  void backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x, const MoeParams<T>& p);
  // The aux + z loss of the last forward (already multiplied by α, β).
  double aux_loss() const { return stats().aux_loss + stats().z_loss; }
  const MoeStats& stats() const { return router_.stats(); }
  // DeepSeek-V3 bias update from the last forward's loads: b_e += γ·sign(mean − load_e)
  // (Router::update_bias). Training sums the loads of a step's forwards with add_selections and
  // updates once per optimizer step (MoeFfn::end_step).
  void update_bias(T* bias) const { router_.update_bias(bias); }
  void add_selections(double* loads) const { router_.add_selections(loads); }
  // Assignments of the last forward (tests): per token-slot the expert and whether it was
  // dropped (by capacity or GShard's random routing). Empty after an expert-choice or relu
  // forward (no fixed slots per token).
  std::vector<int32_t> selected_experts() const;                         // [N, k] (token choice)
  int experts_per_token() const { return router_.experts_per_token(); }  // that k
  std::vector<int32_t> dropped_mask() const;                             // [N, k]

 private:
  // The experts' step: local, or over the all-to-all (expert-parallel training), or on this
  // rank's experts only (expert-parallel evaluation, outputs summed after the combine).
  void experts_forward(const T* x, const MoeParams<T>& p);
  void experts_backward(T* dx_rows, const MoeGrads<T>& g, const T* dy, const T* x,
                        const MoeParams<T>& p);
  ExpertPanels<T> local_panels(const T* x) const;

  MoeSpec spec_;
  Router<T> router_;
  DispatchPlan dispatch_;
  ExpertBank<T> experts_;
  ExpertExchange<T> exchange_;
  // Parallel layout (set_parallel).
  int ranks_ = 1;
  bool expert_parallel_ = false;
  // The last forward.
  int tokens_ = 0;
  bool distributed_step_ = false;  // a training forward on one rank's slice of a global batch
  ExpertDropout dropout_;
  // Routed rows' activations, in dispatch order [rows, ·]: the experts' inputs (unfused) and
  // outputs (backward: the inputs' gradient), the first projection, the hidden units, the
  // outputs' gradient (unfused), and per row the gate and its gradient (fused).
  T *rows_x_ = nullptr, *rows_y_ = nullptr, *rows_gu_ = nullptr, *rows_hid_ = nullptr,
    *rows_dy_ = nullptr;
  T *row_gate_ = nullptr, *row_dgate_ = nullptr;
};

}  // namespace moe
