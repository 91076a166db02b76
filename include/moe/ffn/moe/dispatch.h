// Dispatch: the kept assignments sorted into rows by expert (kernels/group_by_key.h, the stable
// grouping PEER's backward uses too), the CSR of each
// token's rows, and the row moves between the token matrices and the expert panels:
//
//   gather   forward  xe [rows, C] (=) the rows' tokens of x       backward  dx (+=) Σ rows
//   combine  forward  y [N, C] (=) Σ_rows gate·ye                   backward  d(ye), d(gate)
//
// Determinism: within an expert the rows keep assignment order; each token sums its rows in
// assignment order (token choice: slot order; expert choice: expert order), the fixed order
// of the combine and of dx's scatter, whatever the thread count.
#pragma once
#include <cstdint>

#include "moe/core/arena.h"
#include "moe/ffn/moe/router.h"

namespace moe {

struct DispatchPlan {
  int rows = 0;                       // kept assignments this forward
  int32_t* expert_offsets = nullptr;  // [E+1] rows of expert e are [off[e], off[e+1])
  int32_t* row_assignment = nullptr;  // [max_rows] the assignment of row r
  int32_t* row_token = nullptr;       // [max_rows] its token
  int32_t* token_offsets = nullptr;   // [N+1] token n's rows are token_rows[off[n], off[n+1])
  int32_t* token_rows = nullptr;      // [max_rows]
  int32_t* assignment_row = nullptr;  // [max_assign] the row of each kept assignment
  int32_t* cursor = nullptr;          // [N] scratch of the token CSR
  int max_rows = 0;
  // The grouping's input and scratch: the kept assignments and their experts, group_by_key's
  // packed pairs, counters and outputs (its list, the experts that got rows, their ranges).
  int32_t *kept = nullptr, *kept_expert = nullptr;  // [max_rows]
  uint64_t* sort_pairs = nullptr;                   // [2·max_rows]
  int* sort_counters = nullptr;  // [group_by_key_counter_ints(E, threads at bind)]
  int32_t *sorted = nullptr, *group_expert = nullptr, *group_offsets = nullptr;
  int sort_threads = 0;

  // Carves the plan for E experts, up to max_tokens tokens, max_assign assignments and
  // max_rows kept ones.
  void bind(Arena& a, int E, int max_tokens, int max_assign, int max_rows);
};

// Sorts the kept assignments of `a` (N tokens, E experts) into plan.
template <typename T>
void dispatch_build(DispatchPlan& plan, const Assignments<T>& a, int N, int E);

// xe [rows, C] (=): row r is x [N, C]'s row row_token[r].
template <typename T>
void gather_forward(T* xe, const T* x, const DispatchPlan& plan, int C);

// dx [N, C] (+=): each token adds its rows of dxe [rows, C] in the fixed order (the scatter).
template <typename T>
void gather_backward(T* dx, const T* dxe, const DispatchPlan& plan, int N, int C);

// y [N, C] (=): y_n = Σ over token n's rows r, in order, of gate[row_assignment[r]]·ye_r.
template <typename T>
void combine_forward(T* y, const T* ye, const T* gate, const DispatchPlan& plan, int N, int C);

// Per row r of assignment a, token n: d(ye)_r (=) gate_a·dy_n and dgate_a (=) dy_n·ye_r.
template <typename T>
void combine_backward(T* dye, T* dgate, const T* dy, const T* ye, const T* gate,
                      const DispatchPlan& plan, int C);

// The fused expert path forms d(ye) inside the experts' products: it takes the gates by row
// (row_gate [rows] (=) gate[row_assignment]) and returns d(gate) by row (dgate (=) row_dgate).
template <typename T>
void gates_to_rows(T* row_gate, const T* gate, const DispatchPlan& plan);
template <typename T>
void rows_to_gates(T* dgate, const T* row_dgate, const DispatchPlan& plan);

}  // namespace moe
