#include "moe/ffn/moe/dispatch.h"

#include <algorithm>
#include <cstring>

#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/kernels/group_by_key.h"

namespace moe {

void DispatchPlan::bind(Arena& a, int E, int max_tokens, int max_assign, int max_rows_bound) {
  max_rows = max_rows_bound;
  expert_offsets = a.take<int32_t>(E + 1);
  row_assignment = a.take<int32_t>(max_rows);
  row_token = a.take<int32_t>(max_rows);
  token_offsets = a.take<int32_t>(max_tokens + 1);
  token_rows = a.take<int32_t>(max_rows);
  assignment_row = a.take<int32_t>(max_assign);
  cursor = a.take<int32_t>(max_tokens);
  kept = a.take<int32_t>(max_rows);
  kept_expert = a.take<int32_t>(max_rows);
  sort_pairs = a.take<uint64_t>(2 * std::size_t(max_rows));
  sort_threads = max_threads();
  sort_counters = a.take<int>(group_by_key_counter_ints(E, sort_threads));
  sorted = a.take<int32_t>(max_rows);
  group_expert = a.take<int32_t>(max_rows);
  group_offsets = a.take<int32_t>(std::size_t(max_rows) + 1);
}

template <typename T>
void dispatch_build(DispatchPlan& plan, const Assignments<T>& a, int N, int E) {
  auto kept = [&](int i) { return a.fate[i] == AssignmentFate::kKept; };
  // The kept assignments, in assignment order, grouped by expert: a stable grouping, so within
  // an expert the rows keep assignment order.
  int n_kept = 0;
  for (int i = 0; i < a.count; ++i)
    if (kept(i)) {
      MOE_CHECK(n_kept < plan.max_rows, "internal: more than {} routed rows", plan.max_rows);
      plan.kept[n_kept] = i;
      plan.kept_expert[n_kept] = a.expert[i];
      ++n_kept;
    }
  MOE_CHECK(max_threads() <= plan.sort_threads, "internal: {} threads, dispatch bound for {}",
            max_threads(), plan.sort_threads);
  const int groups = group_by_key(plan.kept_expert, n_kept, E, plan.sort_pairs, plan.sort_counters,
                                  plan.sorted, plan.group_expert, plan.group_offsets);
  plan.rows = n_kept;
  // Expert offsets for every expert (one without rows gets an empty range).
  int32_t* off = plan.expert_offsets;
  std::fill(off, off + E + 1, 0);
  for (int g = 0; g < groups; ++g)
    off[plan.group_expert[g] + 1] = plan.group_offsets[g + 1] - plan.group_offsets[g];
  for (int e = 0; e < E; ++e) off[e + 1] += off[e];
  for (int r = 0; r < n_kept; ++r) {
    const int i = plan.kept[plan.sorted[r]];
    plan.assignment_row[i] = r;
    plan.row_assignment[r] = i;
    plan.row_token[r] = a.token[i];
  }
  // Token CSR over rows, in assignment order per token: for token choice a = n·k + s (slot
  // order); for expert choice a = (t·E + e)·c + j (expert order).
  int32_t* tok = plan.token_offsets;
  std::fill(tok, tok + N + 1, 0);
  for (int i = 0; i < a.count; ++i)
    if (kept(i)) ++tok[a.token[i] + 1];
  for (int n = 0; n < N; ++n) tok[n + 1] += tok[n];
  std::copy(tok, tok + N, plan.cursor);
  for (int i = 0; i < a.count; ++i)
    if (kept(i)) plan.token_rows[plan.cursor[a.token[i]]++] = plan.assignment_row[i];
}

template <typename T>
void gather_forward(T* xe, const T* x, const DispatchPlan& plan, int C) {
  const int rows = plan.rows;
#pragma omp parallel for schedule(static) if (rows > 256)
  for (int r = 0; r < rows; ++r)
    std::memcpy(xe + std::size_t(r) * C, x + std::size_t(plan.row_token[r]) * C, sizeof(T) * C);
}

template <typename T>
void gather_backward(T* dx, const T* dxe, const DispatchPlan& plan, int N, int C) {
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    T* dxn = dx + std::size_t(n) * C;
    for (int i = plan.token_offsets[n]; i < plan.token_offsets[n + 1]; ++i) {
      const T* d = dxe + std::size_t(plan.token_rows[i]) * C;
      for (int c = 0; c < C; ++c) dxn[c] += d[c];
    }
  }
}

template <typename T>
void combine_forward(T* y, const T* ye, const T* gate, const DispatchPlan& plan, int N, int C) {
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    T* yn = y + std::size_t(n) * C;
    std::fill(yn, yn + C, T(0));
    for (int i = plan.token_offsets[n]; i < plan.token_offsets[n + 1]; ++i) {
      const int r = plan.token_rows[i];
      const T g = gate[plan.row_assignment[r]];
      const T* yr = ye + std::size_t(r) * C;
      for (int c = 0; c < C; ++c) yn[c] += g * yr[c];
    }
  }
}

template <typename T>
void combine_backward(T* dye, T* dgate, const T* dy, const T* ye, const T* gate,
                      const DispatchPlan& plan, int C) {
  const int rows = plan.rows;
#pragma omp parallel for schedule(static) if (rows > 256)
  for (int r = 0; r < rows; ++r) {
    const int a = plan.row_assignment[r];
    const T* d = dy + std::size_t(plan.row_token[r]) * C;
    const T* yr = ye + std::size_t(r) * C;
    T* dr = dye + std::size_t(r) * C;
    const T g = gate[a];
    T dot = 0;
    for (int c = 0; c < C; ++c) {
      dot += d[c] * yr[c];
      dr[c] = g * d[c];
    }
    dgate[a] = dot;
  }
}

template <typename T>
void gates_to_rows(T* row_gate, const T* gate, const DispatchPlan& plan) {
  const int rows = plan.rows;
#pragma omp parallel for schedule(static) if (rows > 256)
  for (int r = 0; r < rows; ++r) row_gate[r] = gate[plan.row_assignment[r]];
}

template <typename T>
void rows_to_gates(T* dgate, const T* row_dgate, const DispatchPlan& plan) {
  for (int r = 0; r < plan.rows; ++r) dgate[plan.row_assignment[r]] = row_dgate[r];
}

#define MOE_DISPATCH_INSTANTIATE(T)                                                               \
  template void dispatch_build(DispatchPlan&, const Assignments<T>&, int, int);                   \
  template void gather_forward(T*, const T*, const DispatchPlan&, int);                           \
  template void gather_backward(T*, const T*, const DispatchPlan&, int, int);                     \
  template void combine_forward(T*, const T*, const T*, const DispatchPlan&, int, int);           \
  template void combine_backward(T*, T*, const T*, const T*, const T*, const DispatchPlan&, int); \
  template void gates_to_rows(T*, const T*, const DispatchPlan&);                                 \
  template void rows_to_gates(T*, const T*, const DispatchPlan&);
MOE_DISPATCH_INSTANTIATE(float)
MOE_DISPATCH_INSTANTIATE(double)
#undef MOE_DISPATCH_INSTANTIATE

}  // namespace moe
