// The expert bank: E stacked experts, each y = W_down·act(W_up·x [, W_gate·x]) (SwiGLU or
// GELU), run on panels of rows sorted by expert (dispatch.h), plus the shared experts that see
// every token. Per expert e with m rows:
//   gu  [m, W1] = X·[W_gate; W_up]ᵀ  (W1 = 2H for SwiGLU, H for GELU)
//   hid [m, H]  = act(gu), then expert dropout (training)
//   ye  [m, C]  = hid·W_downᵀ
//
// Scheduling: experts run largest first. Many experts: one expert per task across threads
// (dynamic), each product single-threaded; few: one after another, each product on all threads.
// Either way one expert's weight gradients are written by one task, in a fixed order.
//
// The GEMM (spec.expert_gemm, chosen at bind by shape only, so results do not depend on the
// thread count): OpenBLAS, or in float with AVX-512 our panel GEMM (kernels/grouped_gemm.h),
// which without expert parallelism also reads x and dy through the rows' token indices instead
// of gathered panels ("fused").
//
// Precision (train.precision; float only): in bf16 the routed and shared experts' products take
// bf16 operands with f32 accumulation (kernels/grouped_gemm_bf16.h): the weights rounded and
// packed once per optimizer step (refresh_bf16), the token matrices rounded once per pass, the
// activation's output and its gradient rounded row by row as they are computed, other operands
// as each product packs them. The activation function, dropout, gates, d(gate) and the gradients'
// accumulation stay f32. Where the layer allows it (no expert parallelism) bf16 always reads the
// token matrices through the rows (fused), whatever the f32 GEMM choice made at bind.
//
// Expert dropout keeps hidden unit (row r, j) with probability 1 − p and scales it by
// 1/(1 − p); the mask is redrawn in backward from the same key instead of being stored.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/core/arena.h"
#include "moe/ffn/moe/moe_spec.h"
#include "moe/kernels/grouped_gemm_bf16.h"

namespace moe {

// One pass's panels: the rows of local expert j are [offsets[j], offsets[j+1]) of every array.
template <typename T>
struct ExpertPanels {
  const T* x = nullptr;    // inputs [rows, C], or the token matrix [N, C] when `rows` is set
  T* gu = nullptr;         // [rows, W1] first projection (backward: its gradient, in place)
  T* hid = nullptr;        // [rows, H] activations (backward: their gradient, in place)
  T* ye = nullptr;         // [rows, C] outputs
  const T* dye = nullptr;  // [rows, C] output gradients (backward, unfused)
  const int32_t* offsets = nullptr;  // [experts + 1]
  int experts = 0;
  // Fused only: panel row r is token rows[r] of x and of dy [N, C], with gate[r]; backward
  // forms d(ye) = gate·dy inside the products and writes d(gate) to dgate[r] (=).
  const int32_t* rows = nullptr;
  const T* dy = nullptr;
  const T* gate = nullptr;
  T* dgate = nullptr;
  int tokens = 0;  // fused: N, the rows of the token matrices x and dy
};

// The key of one forward's dropout mask (inactive outside training or with p = 0).
struct ExpertDropout {
  bool active = false;
  uint64_t seed = 0;
  int64_t step = 0;
  int layer = 0;
};

template <typename T>
class ExpertBank {
 public:
  explicit ExpertBank(const MoeSpec& spec) : spec_(spec) {}
  // Scratch for up to `experts` experts per pass of at most max_expert_rows rows each, and the
  // shared experts on up to max_tokens tokens. fusable: the experts may read the token matrices
  // directly (no expert parallelism).
  void bind(Arena& a, int experts, int max_expert_rows, int max_tokens, bool fusable);
  // Whether the experts read x and dy through row indices (see ExpertPanels).
  // Whether the experts read x and dy through the rows' token indices (q.rows) instead of
  // gathered panels: the float panel GEMM chosen at bind, or bf16 (its products read token rows
  // in place whatever the f32 GEMM), where fusable. May change with set_bf16.
  bool fused() const { return fusable_ && (panel_ || bf16_); }
  // bf16 products on (float only; after bind, before the first forward). Allocates the packed
  // weights and the per-thread scratch once; a step allocates nothing.
  void set_bf16(bool on);
  bool bf16() const { return bf16_; }
  // Bytes of the bf16 path: packed weights, per-thread packing scratch and fused-gate buffers.
  std::size_t bf16_bytes() const {
    return 2 * (bf16_weights_.capacity() + bf16_scratch_.capacity() + bf16_tokens_.capacity()) +
           4 * bf16_u_.capacity();
  }
  // Rounds and packs the weights of p (its `experts` routed experts, ≤ the bound count — this
  // rank's block under expert parallelism — and the shared ones) for the bf16 products: once
  // per optimizer step, before its first forward (FeedForward's contract).
  void refresh_bf16(const MoeParams<T>& p, int experts);

  // Routed experts: q.gu, q.hid, q.ye (=), from weights w_* of experts 0..q.experts−1.
  void forward(const ExpertPanels<T>& q, const MoeParams<T>& p, const ExpertDropout& dropout);
  // dx_rows [rows, C] (=), grads (+=); q as in forward (hid and gu are overwritten).
  void backward(const ExpertPanels<T>& q, const MoeGrads<T>& g, const MoeParams<T>& p, T* dx_rows);
  // Shared experts (width Hs): y [N, C] (+=) Σ_s FFN_s(x), times σ(x_n·w_sg) per token with
  // spec.shared_gate (Qwen2-MoE); backward: dx (+=), grads (+=).
  void shared_forward(T* y, const T* x, const MoeParams<T>& p, int N);
  void shared_backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x, const MoeParams<T>& p,
                       int N);

 private:
  void expert_forward(const ExpertPanels<T>& q, const MoeParams<T>& p, int e);
  void expert_backward(const ExpertPanels<T>& q, const MoeGrads<T>& g, const MoeParams<T>& p,
                       T* dx_rows, int e);
  // Multiplies the hidden panel rows [o, o+m) (at hid) by the dropout mask / (1 − p).
  void apply_dropout(T* hid, int o, int m) const;
  float* pack_buffer() const;
  // The bf16 twins of expert_forward / expert_backward, and this thread's bf16 scratch.
  void expert_forward_bf16(const ExpertPanels<T>& q, int e);
  void expert_backward_bf16(const ExpertPanels<T>& q, const MoeGrads<T>& g, T* dx_rows, int e);
  Bf16ExpertScratch bf16_scratch() const;
  // This thread's rows of a rounded activation (hid in the forward, d(gate|up) in the backward):
  // bf16_c_ values.
  uint16_t* bf16_rows() const;
  // Fused: bf16_tokens_ (=) round(q.x), and round(q.dy) after it when with_dy; the experts read
  // their gathered rows from there (a no-op unfused).
  void round_token_matrices(const ExpertPanels<T>& q, bool with_dy);
  void size_bf16_scratch();  // per-thread scratch for the bound sizes
  void shared_forward_bf16(T* out, const T* x, int N);
  void shared_backward_bf16(T* dx, const MoeGrads<T>& g, const T* dy, const T* x, int N);
  // The shared gate's part of shared_backward: dx, g.s_router (+=); shared_dy_ (=) σ·dy.
  void shared_gate_backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x,
                            const MoeParams<T>& p, int N);

  MoeSpec spec_;
  int32_t* order_ = nullptr;  // [experts] the schedule: experts by rows, most first
  ExpertDropout dropout_;     // of the last forward, redrawn in backward
  // Shared experts' activations: [S, N, W1s] and [S, N, Hs]; with the shared gate their summed
  // output [N, C], its gradient [N, C], σ [N] and d(x·w_sg) [N].
  T *shared_gu_ = nullptr, *shared_hid_ = nullptr;
  T *shared_out_ = nullptr, *shared_dy_ = nullptr, *shared_sig_ = nullptr, *shared_dz_ = nullptr;
  // Float, panel GEMM: per thread pack_stride_ floats = packed B | A scratch | u [rows, H] of
  // the fused down-projection backward; sized for experts of up to pack_rows_ rows.
  bool panel_ = false;
  bool fusable_ = false;
  float* pack_ = nullptr;
  std::size_t pack_stride_ = 0, pack_b_floats_ = 0, pack_a_floats_ = 0;
  int pack_rows_ = 0, pack_threads_ = 0;
  // bf16: the bound sizes, the packed weights (routed experts 0..bound_experts_−1, then the
  // shared ones), whether they were packed since set_bf16, and per thread a scratch of
  // bf16_a_ + bf16_b_ + bf16_c_ values and an f32 u [rows, H] (fused down backward).
  int bound_experts_ = 0, bound_rows_ = 0, bound_tokens_ = 0;
  bool bf16_ = false, bf16_packed_ = false;
  // The packed weights (24 MiB at E = 64, C = 512, H = 128) and the rounded token matrices
  // (gathered by row) on huge pages, as the f32 masters and activations are (core/arena.h).
  std::vector<uint16_t, HugePageAllocator<uint16_t>> bf16_weights_;
  std::vector<Bf16ExpertWeights> bf16_w_;
  AlignedVector<uint16_t> bf16_scratch_;  // 64-byte aligned: packed panels (core/arena.h)
  AlignedVector<float> bf16_u_;
  // Fused: round(x) then round(dy) of the token matrix [2, bound_tokens_, C], each made once per
  // forward / backward and gathered by every expert (k roundings of each token row were ~14% of
  // an E = 64, k = 8 bf16 step).
  std::vector<uint16_t, HugePageAllocator<uint16_t>> bf16_tokens_;
  std::size_t bf16_a_ = 0, bf16_b_ = 0, bf16_c_ = 0, bf16_u_stride_ = 0;
  int bf16_threads_ = 0;
};

// order [0..n) (=) 0..n−1 sorted by rows off[e+1] − off[e], most first (ties: lower index
// first): the largest-first schedule of the expert bank.
void order_by_rows(int32_t* order, const int32_t* off, int n);

}  // namespace moe
