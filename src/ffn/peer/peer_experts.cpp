#include "moe/ffn/peer/peer_experts.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>

#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/kernels/group_by_key.h"

namespace moe {

namespace {

// GELU's 1 + erf(z/√2), computed once per retrieval in the forward and kept for the backward
// (which needs it twice: an erf per call had cost ~2 ms of a 2^20-expert step); unused by ReLU.
template <typename T>
T gelu_e1(T z, bool gelu) {
  return gelu ? T(1) + std::erf(z * T(0.70710678118654752440)) : T(0);
}

template <typename T>
T act(T z, T e1, bool gelu) {
  if (!gelu) return z > T(0) ? z : T(0);
  return T(0.5) * z * e1;
}

template <typename T>
T act_grad(T z, T e1, bool gelu) {
  if (!gelu) return z > T(0) ? T(1) : T(0);
  const T cdf = T(0.5) * e1;
  return cdf + z * T(0.39894228040143267794) * std::exp(T(-0.5) * z * z);
}

// The retrieved rows are scattered over the tables: the loops ask for a later retrieval's u and
// v rows early, one cache line at a time.
template <typename T>
void prefetch_row(const T* table, int32_t id, int C) {
  const T* r = table + std::size_t(id) * C;
  for (int c = 0; c < C; c += 64 / int(sizeof(T))) __builtin_prefetch(r + c);
}

template <typename T>
void prefetch_rows(const T* u, const T* v, int32_t id, int C) {
  prefetch_row(u, id, C);
  prefetch_row(v, id, C);
}

}  // namespace

template <typename T>
void PeerExperts<T>::bind(Arena& a, int max_tokens) {
  const std::size_t N = max_tokens, A = N * heads_ * k_;
  max_tokens_ = max_tokens;
  threads_ = max_threads();
  preact_ = a.take<T>(A);
  gelu_e1_ = a.take<T>(A);
  sort_pairs_ = a.take<uint64_t>(2 * A);
  digit_counters_ = a.take<int>(group_by_key_counter_ints(experts_, threads_));
  by_expert_ = a.take<int32_t>(A);
  const std::size_t rows = std::min<std::size_t>(A, std::size_t(experts_));
  expert_rows_ = a.take<int32_t>(rows);
  expert_offsets_ = a.take<int32_t>(rows + 1);
  row_sum_sq_ = a.take<double>(2 * rows);
  row_grad_ = a.take<T>(std::size_t(threads_) * 2 * C_);
  dx_blocks_ = a.take<T>(std::size_t(kDxBlocks) * N * C_);
  block_wrote_ = a.take<uint8_t>(std::size_t(kDxBlocks) * N);
}

// Each token's sum in (head, rank) order.
template <typename T>
void PeerExperts<T>::forward(T* y, const T* x, const T* u_table, const T* v_table,
                             const int32_t* ids, const T* gates, int N) {
  const int C = C_, hk = heads_ * k_;
  const bool gelu = gelu_;
  T* preact = preact_;
  T* e1s = gelu_e1_;
#pragma omp parallel for schedule(static) if (N > 16)
  for (int n = 0; n < N; ++n) {
    const T* xn = x + std::size_t(n) * C;
    T* yn = y + std::size_t(n) * C;
    std::fill(yn, yn + C, T(0));
    const int a_end = (n + 1) * hk;
    for (int a = n * hk; a < a_end; ++a) {
      const T* u = u_table + std::size_t(ids[a]) * C;
      const T* v = v_table + std::size_t(ids[a]) * C;
      if (a + 2 < a_end) prefetch_rows(u_table, v_table, ids[a + 2], C);
      T z = 0;
#pragma omp simd reduction(+ : z)
      for (int c = 0; c < C; ++c) z += u[c] * xn[c];
      preact[a] = z;
      const T e1 = e1s[a] = gelu_e1(z, gelu);
      const T w = gates[a] * act(z, e1, gelu);
#pragma omp simd
      for (int c = 0; c < C; ++c) yn[c] += w * v[c];
    }
  }
}

// One pass over the retrieved experts in ascending order. Each expert's rows u_e, v_e are read
// once, and with them, for each of its retrievals: d(gate), d(pre-activation), the row gradients
// du_e, dv_e and dx's share d·u_e. (A token-major pass for dx and d(gate) had read u_e, v_e once
// more per retrieval: ~1/8 of a 2^20-expert step.) dx's shares go to one buffer per block of
// experts, the blocks fixed by the retrieval counts alone, and the buffers are added in block
// order, so dx does not depend on the thread count.
template <typename T>
void PeerExperts<T>::backward(T* dx, T* dgate, const TableGrads& g, const T* dy, const T* x,
                              const T* u, const T* v, const int32_t* ids, const T* gates, int N) {
  if constexpr (!std::is_same_v<T, float>) {
    MOE_CHECK(!g.u_rule && !g.v_rule, "internal: the optimizer in backward is float only");
  }
  MOE_CHECK(max_threads() <= threads_,
            "internal: {} threads, PEER scratch bound for {} (thread count changed after bind)",
            max_threads(), threads_);
  const int A = N * heads_ * k_;
  const int retrieved = group_by_expert(ids, A);
  split_into_chunks(A, retrieved);
  run_chunks(dgate, g, dy, x, u, v, gates, N, retrieved);
  sum_dx_blocks(dx, N);
  report_sums_of_squares(g, retrieved);
}

// A stable sort of the retrievals by expert id, so each expert's retrievals stay in token order.
template <typename T>
int PeerExperts<T>::group_by_expert(const int32_t* ids, int A) {
  return group_by_key(ids, A, experts_, sort_pairs_, digit_counters_, by_expert_, expert_rows_,
                      expert_offsets_);
}

// Chunk c: [chunk_start_[c], chunk_start_[c+1]) of the retrieved experts, about A / kChunks
// retrievals each; block b is chunks b·kDxChunks .. (b+1)·kDxChunks − 1.
template <typename T>
void PeerExperts<T>::split_into_chunks(int A, int retrieved) {
  chunk_start_[0] = 0;
  for (int c = 1, i = 0; c <= kChunks; ++c) {
    const int64_t until = int64_t(A) * c / kChunks;
    while (i < retrieved && expert_offsets_[i] < until) ++i;
    chunk_start_[c] = c == kChunks ? retrieved : i;
  }
}

// Scheduling: a free thread takes the next chunk of the block, not being run, with the most
// chunks left (so the blocks drain together and the last chunks run side by side). A block's
// chunks run in order, one at a time, so each dx row still gets its block's shares in one fixed
// order, whichever threads ran them: the same bits as one task per block.
template <typename T>
void PeerExperts<T>::run_chunks(T* dgate, const TableGrads& g, const T* dy, const T* x, const T* u,
                                const T* v, const T* gates, int N, int retrieved) {
  const std::size_t NC = std::size_t(N) * C_;
  int done[kDxBlocks] = {};  // chunks of each block run so far
  bool busy[kDxBlocks] = {};
#pragma omp parallel
  for (;;) {
    int b = 0, j = 0;
    bool found = false;
#pragma omp critical(moe_peer_dx_chunks)
    {
      int most = 0;
      for (int q = 0; q < kDxBlocks; ++q)
        if (!busy[q] && kDxChunks - done[q] > most) most = kDxChunks - done[q], b = q, found = true;
      if (found) busy[b] = true, j = done[b];
    }
    if (!found) break;  // every block is finished or being run by another thread
    // A block's buffer is not cleared as a whole (8·N·C floats, ~4 ms per step at 2^20): a
    // token's row is cleared when the block first adds to it, and the final sum skips the rows
    // a block never wrote.
    uint8_t* wrote = block_wrote_ + std::size_t(b) * N;
    if (j == 0) std::fill(wrote, wrote + N, uint8_t(0));
    run_chunk(b * kDxChunks + j, dx_blocks_ + std::size_t(b) * NC, wrote, dgate, g, dy, x, u, v,
              gates, retrieved);
#pragma omp critical(moe_peer_dx_chunks)
    {
      ++done[b];
      busy[b] = false;
    }
  }
}

// With the optimizer in backward, a row's sum is formed in the thread's scratch (from zero, as
// the zeroed gradient row would be: the same bits) and the row is updated at once, after its old
// values served dx and d(gate); its Σ g² is kept per row for report_sums_of_squares.
template <typename T>
void PeerExperts<T>::run_chunk(int chunk, T* dxb, uint8_t* wrote, T* dgate, const TableGrads& g,
                               const T* dy, const T* x, const T* u_table, const T* v_table,
                               const T* gates, int retrieved) {
  const int C = C_, hk = heads_ * k_;
  const bool gelu = gelu_;
  const T* preact = preact_;
  const T* e1s = gelu_e1_;
  const int32_t* rows = expert_rows_;
  const int32_t* offsets = expert_offsets_;
  const int32_t* by_expert = by_expert_;
  SparseRowRule* ur = g.u_rule;
  SparseRowRule* vr = g.v_rule;
  T* scratch = row_grad_ + std::size_t(thread_index()) * 2 * C;
  const int i_end = chunk_start_[chunk + 1];
  for (int i = chunk_start_[chunk]; i < i_end; ++i) {
    const int64_t e = rows[i];
    const bool more = i + 2 < i_end;  // the expert two ahead, whose rows are asked for
    const int32_t next = more ? rows[i + 2] : 0;
    if (more) prefetch_rows(u_table, v_table, next, C);
    const T* u = u_table + e * C;
    const T* v = v_table + e * C;
    T* gu = ur ? scratch : g.du + e * C;
    T* gv = vr ? scratch + C : g.dv + e * C;
    if (ur) std::fill(gu, gu + C, T(0));
    if (vr) std::fill(gv, gv + C, T(0));
    for (int j = offsets[i]; j < offsets[i + 1]; ++j) {
      const int a = by_expert[j], n = a / hk;
      const T* xn = x + std::size_t(n) * C;
      const T* dyn = dy + std::size_t(n) * C;
      T* dxn = dxb + std::size_t(n) * C;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; ++c) dot += v[c] * dyn[c];
      const T z = preact[a], e1 = e1s[a], s = act(z, e1, gelu);
      dgate[a] = s * dot;
      const T w = gates[a] * s, d = gates[a] * dot * act_grad(z, e1, gelu);
      if (!wrote[n]) {  // the block's first share for this token: its row starts at zero
        wrote[n] = 1;
        std::fill(dxn, dxn + C, T(0));
      }
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        gu[c] += d * xn[c];
        gv[c] += w * dyn[c];
        dxn[c] += d * u[c];
      }
    }
    // The moments of the row two ahead are asked for here, in two bursts just before each
    // table's update, not with its u, v rows at the top: a burst of 96 prefetches there took
    // every line fill buffer and stalled the core, so the updates' square roots and divisions
    // (~25 ms per step at 2^20) ran after the memory traffic instead of under it.
    if constexpr (std::is_same_v<T, float>) {
      if (ur) {
        if (more) prefetch_row(ur->m, next, C), prefetch_row(ur->v, next, C);
        row_sum_sq_[i] = ur->apply(e, gu);
      }
      if (vr) {
        if (more) prefetch_row(vr->m, next, C), prefetch_row(vr->v, next, C);
        row_sum_sq_[retrieved + i] = vr->apply(e, gv);
      }
    }
  }
}

// dx += the blocks' buffers, in block order, skipping the rows a block never wrote.
template <typename T>
void PeerExperts<T>::sum_dx_blocks(T* dx, int N) const {
  const int C = C_;
  const std::size_t NC = std::size_t(N) * C;
#pragma omp parallel for schedule(static) if (N > 16)
  for (int n = 0; n < N; ++n) {
    T* dxn = dx + std::size_t(n) * C;
    for (int b = 0; b < kDxBlocks; ++b) {
      if (!block_wrote_[std::size_t(b) * N + n]) continue;
      const T* src = dx_blocks_ + std::size_t(b) * NC + std::size_t(n) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) dxn[c] += src[c];
    }
  }
}

// Each rule's Σ g²: the rows' sums added in ascending row order, as the optimizer's pass does.
template <typename T>
void PeerExperts<T>::report_sums_of_squares(const TableGrads& g, int retrieved) const {
  for (int t = 0; t < 2; ++t) {
    SparseRowRule* rule = t == 0 ? g.u_rule : g.v_rule;
    if (!rule) continue;
    double sum = 0;
    for (int i = 0; i < retrieved; ++i) sum += row_sum_sq_[std::size_t(t) * retrieved + i];
    rule->sum_sq = sum;
    rule->rows_done = std::size_t(retrieved);
  }
}

template class PeerExperts<float>;
template class PeerExperts<double>;

}  // namespace moe
