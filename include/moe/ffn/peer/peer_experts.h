// PEER's experts: S² single-neuron experts e(x) = σ(u_eᵀx)·v_e (u_e, v_e ∈ R^C, rows of the
// tables u, v [E, C]), each token's output the gate-weighted sum over its N·heads·k retrievals:
//   y_n = Σ_heads Σ_k g·σ(u_e·x_n)·v_e.
// σ is GELU (exact, erf) or ReLU. The backward walks the retrieved experts in ascending id order
// (the retrievals grouped by expert: kernels/group_by_key.h), so each row of du, dv is summed by
// one task in token order (no atomics) and each table row is read once per step; it can update
// the rows in place as their sums are formed (the optimizer in backward: SparseRowRule).
#pragma once
#include <cstdint>

#include "moe/core/arena.h"
#include "moe/nn/adamw.h"

namespace moe {

template <typename T>
class PeerExperts {
 public:
  PeerExperts(int C, int heads, int k, int64_t experts, bool gelu)
      : C_(C), heads_(heads), k_(k), experts_(experts), gelu_(gelu) {}
  void bind(Arena& a, int max_tokens);

  // y [N, C] (written); x [N, C]; u, v [E, C]; ids, gates [N, heads, k]. Keeps each retrieval's
  // pre-activation for the backward.
  void forward(T* y, const T* x, const T* u, const T* v, const int32_t* ids, const T* gates, int N);

  // The tables' gradients: du, dv [E, C] (+=, the retrieved rows only), or, where a rule is
  // given (float only), each retrieved row updated in place with its complete gradient and
  // nothing added to du / dv; the rule then holds the rows done and their Σ g².
  struct TableGrads {
    T* du = nullptr;
    T* dv = nullptr;
    SparseRowRule* u_rule = nullptr;
    SparseRowRule* v_rule = nullptr;
  };
  // dx [N, C] (+=); dgate [N, heads, k] (written); dy, x [N, C]; the rest as in the forward,
  // which must have been the last one.
  void backward(T* dx, T* dgate, const TableGrads& g, const T* dy, const T* x, const T* u,
                const T* v, const int32_t* ids, const T* gates, int N);

 private:
  // The backward's steps.
  int group_by_expert(const int32_t* ids, int A);  // returns the number of retrieved experts
  void split_into_chunks(int A, int retrieved);
  void run_chunks(T* dgate, const TableGrads& g, const T* dy, const T* x, const T* u, const T* v,
                  const T* gates, int N, int retrieved);
  void run_chunk(int chunk, T* dx_block, uint8_t* block_wrote, T* dgate, const TableGrads& g,
                 const T* dy, const T* x, const T* u, const T* v, const T* gates, int retrieved);
  void sum_dx_blocks(T* dx, int N) const;
  void report_sums_of_squares(const TableGrads& g, int retrieved) const;

  int C_, heads_, k_;
  int64_t experts_;
  bool gelu_;
  int max_tokens_ = 0;
  int threads_ = 0;  // threads the per-thread scratch is sized for
  // The last forward, per retrieval [N·heads·k]:
  T* preact_ = nullptr;   // u_e·x_n
  T* gelu_e1_ = nullptr;  // GELU's 1 + erf(z/√2) (unused by ReLU)
  // The backward's grouping by expert:
  uint64_t* sort_pairs_ = nullptr;     // radix sort scratch [2, N·heads·k]
  int* digit_counters_ = nullptr;      // radix sort scratch [group_by_key_counter_ints]
  int32_t* by_expert_ = nullptr;       // retrievals grouped by expert, each group in token order
  int32_t* expert_rows_ = nullptr;     // the retrieved experts, ascending [≤ N·heads·k]
  int32_t* expert_offsets_ = nullptr;  // expert_rows_[i]'s: by_expert_[off[i] .. off[i+1])
  double* row_sum_sq_ = nullptr;       // optimizer in backward: Σ g² per retrieved row, u then v
  T* row_grad_ = nullptr;  // optimizer in backward: per thread, one row's du | dv [2·C]
  // The expert pass runs in kDxBlocks fixed blocks of experts (split by retrieval counts, not by
  // threads), each adding its dx shares into its own [N, C] buffer: 8 blocks keep up to 8
  // threads busy for 8·N·C floats (16 MiB at 2048 tokens of width 256). Each block runs as
  // kDxChunks chunks in order, one at a time, which threads take as they come free (a whole
  // block per task had left one of two threads idle for the last ~15 ms of a 2^20 step).
  static constexpr int kDxBlocks = 8, kDxChunks = 8, kChunks = kDxBlocks * kDxChunks;
  T* dx_blocks_ = nullptr;          // [kDxBlocks, N, C]
  uint8_t* block_wrote_ = nullptr;  // [kDxBlocks, N]: 1 if the block wrote that token's row
  // Chunk c (of block c / kDxChunks): retrieved experts [chunk_start_[c], chunk_start_[c+1]).
  int chunk_start_[kChunks + 1] = {};
};

}  // namespace moe
