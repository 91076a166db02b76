#include "moe/ffn/peer/peer_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "moe/core/by_ranges.h"
#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/ffn/peer/product_keys.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/group_by_key.h"
#include "moe/kernels/panel_gemm.h"
#include "moe/nn/batchnorm.h"
#include "moe/nn/layernorm.h"

namespace moe {

namespace {

// GELU's 1 + erf(z/√2), computed once per assignment in the forward and kept for the backward
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
void prefetch_rows(const PeerParams<T>& p, int32_t id, int C) {
  prefetch_row(p.u, id, C);
  prefetch_row(p.v, id, C);
}

}  // namespace

template <typename T>
void PeerLayer<T>::bind(Arena& a, int max_tokens) {
  const std::size_t N = max_tokens, D = std::size_t(s_.heads) * s_.d_key, R = N * s_.heads,
                    A = R * s_.k;
  max_tokens_ = max_tokens;
  z_ = a.take<T>(N * D);
  q_ = a.take<T>(N * D);
  dq_ = a.take<T>(N * D);
  mean_ = a.take<T>(std::max(D, R));
  rstd_ = a.take<T>(std::max(D, R));
  bn_sums_ = a.take<double>(2 * D);
  bn_affine_grad_ = a.take<T>(2 * D);
  score_threads_ = max_threads();
  score_blk_ =
      a.take<T>(std::size_t(score_threads_) * 2 * kScoreRows * s_.S);  // per thread: two blocks
  ids_ = a.take<int32_t>(A);
  score_ = a.take<T>(A);
  gate_ = a.take<T>(A);
  act_in_ = a.take<T>(A);
  act_e1_ = a.take<T>(A);
  dgate_ = a.take<T>(A);
  e_list_ = a.take<int32_t>(A);
  e_kv_ = a.take<uint64_t>(2 * A);
  sub_ids_ = a.take<int32_t>(2 * A);
  const std::size_t rows = std::min<std::size_t>(A, std::size_t(s_.experts()));
  e_rows_ = a.take<int32_t>(rows);
  row_off_ = a.take<int32_t>(rows + 1);
  row_sq_ = a.take<double>(2 * rows);
  row_g_ = a.take<T>(std::size_t(score_threads_) * 2 * s_.C);
  if (std::is_same_v<T, float> && panel_gemm_native())
    keys_p_ = a.take<T>(2 * panel_b_floats(s_.d_key / 2, s_.S));
  dx_blk_ = a.take<T>(std::size_t(kDxBlocks) * N * s_.C);
  dx_seen_ = a.take<uint8_t>(std::size_t(kDxBlocks) * N);
  const std::size_t kk = std::size_t(s_.k) * s_.k + 2 * s_.k;  // product_key_topk's scratch
  topk_scratch_ = a.take<int32_t>(R * kk);
  topk_cand_ = a.take<T>(R * kk);
}

template <typename T>
void PeerLayer<T>::forward(T* y, const T* x, const PeerParams<T>& p, int N, bool training) {
  MOE_CHECK(N <= max_tokens_, "PEER forward with {} tokens, bound for {}", N, max_tokens_);
  N_ = N;
  training_ = training;
  const int C = s_.C, h = s_.heads, dk = s_.d_key, half = dk / 2, D = h * dk, S = s_.S, k = s_.k;
  // Query network: z = x·W_qᵀ + b_q, then the norm.
  gemm<T>(false, true, N, D, C, T(1), x, C, p.wq, C, T(0), z_, D);
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < D; ++f) z_[std::size_t(n) * D + f] += p.bq[f];
  if (s_.qnorm == QueryNorm::kBatch) {
    batchnorm_forward(q_, mean_, rstd_, p.running_mean, p.running_var, z_, p.gamma, p.beta, N, D,
                      training, bn_options(), bn_sums_);
  } else if (s_.qnorm == QueryNorm::kLayer) {
    layernorm_forward(q_, mean_, rstd_, z_, p.gamma, p.beta, N, h, dk, s_.bn_eps);
  } else {
    std::memcpy(q_, z_, sizeof(T) * std::size_t(N) * D);
  }
  // Sub-key scores of every (token, head) row against both halves' keys, then its top-k. In
  // blocks of kScoreRows rows per task, scored by two GEMMs into the task's scratch (2·64·S
  // floats, 512 KiB at S = 1024: it stays in L2), so the [N·h, S] score matrices never go to
  // memory (at 2^20 experts they were 2 × 64 MiB written and read back per step). The blocks
  // are fixed, so the result does not depend on the thread count.
  const int R = N * h;
  const int nblk = (R + kScoreRows - 1) / kScoreRows;
  // In float on AVX-512 the blocks' products run on moe.cpp's panel GEMM against sub-keys packed
  // once per forward (OpenBLAS packed the keys again in each of the 2·R/64 calls).
  const std::size_t kp = keys_p_ ? panel_b_floats(half, S) : 0;
  bool keys_packed = false;
  if constexpr (std::is_same_v<T, float>) {
    if (keys_p_) {
      panel_pack_b(keys_p_, half, S, 0, 0, half, S, p.keys1, half, true);
      panel_pack_b(keys_p_ + kp, half, S, 0, 0, half, S, p.keys2, half, true);
      keys_packed = true;
    }
  }
#pragma omp parallel for schedule(dynamic, 1) if (nblk > 1)
  for (int blk = 0; blk < nblk; ++blk) {
    const int r0 = blk * kScoreRows, rb = std::min(kScoreRows, R - r0);
    const int t = thread_index();
    MOE_CHECK(t < score_threads_, "internal: thread {} of a score scratch sized for {} threads", t,
              score_threads_);
    T* sc1 = score_blk_ + std::size_t(t) * 2 * kScoreRows * S;
    T* sc2 = sc1 + std::size_t(kScoreRows) * S;
    const T* qb = q_ + std::size_t(r0) * dk;
    if constexpr (std::is_same_v<T, float>) {
      if (keys_packed) {
        panel_gemm(rb, S, half, qb, dk, false, keys_p_, sc1, S, false);
        panel_gemm(rb, S, half, qb + half, dk, false, keys_p_ + kp, sc2, S, false);
      }
    }
    if (!keys_packed) {
      gemm<T>(false, true, rb, S, half, T(1), qb, dk, p.keys1, half, T(0), sc1, S);
      gemm<T>(false, true, rb, S, half, T(1), qb + half, dk, p.keys2, half, T(0), sc2, S);
    }
    for (int r = r0; r < r0 + rb; ++r) {
      int32_t* id = ids_ + std::size_t(r) * k;
      T* sc = score_ + std::size_t(r) * k;
      product_key_topk(id, sc, sc1 + std::size_t(r - r0) * S, sc2 + std::size_t(r - r0) * S, S, k,
                       topk_scratch_ + std::size_t(r) * (k * k + 2 * k),
                       topk_cand_ + std::size_t(r) * (k * k + 2 * k));
      T mx = sc[0], sum = 0;  // sc[0] is the largest
      T* g = gate_ + std::size_t(r) * k;
      for (int s = 0; s < k; ++s) sum += (g[s] = std::exp(sc[s] - mx));
      for (int s = 0; s < k; ++s) g[s] /= sum;
    }
  }
  // Experts: y_n = Σ_heads Σ_k g·σ(u_e·x_n)·v_e, each token's sum in (head, rank) order.
#pragma omp parallel for schedule(static) if (N > 16)
  for (int n = 0; n < N; ++n) {
    const T* xn = x + std::size_t(n) * C;
    T* yn = y + std::size_t(n) * C;
    std::fill(yn, yn + C, T(0));
    const int a_end = (n + 1) * h * k;
    for (int a = n * h * k; a < a_end; ++a) {
      const T* u = p.u + std::size_t(ids_[a]) * C;
      const T* v = p.v + std::size_t(ids_[a]) * C;
      if (a + 2 < a_end) prefetch_rows(p, ids_[a + 2], C);
      T z = 0;
#pragma omp simd reduction(+ : z)
      for (int c = 0; c < C; ++c) z += u[c] * xn[c];
      act_in_[a] = z;
      const T e1 = act_e1_[a] = gelu_e1(z, s_.gelu);
      const T w = gate_[a] * act(z, e1, s_.gelu);
#pragma omp simd
      for (int c = 0; c < C; ++c) yn[c] += w * v[c];
    }
  }
}

template <typename T>
void PeerLayer<T>::backward(T* dx, const PeerGrads<T>& g, const T* dy, const T* x,
                            const PeerParams<T>& p) {
  MOE_CHECK(training_ || s_.qnorm != QueryNorm::kBatch,
            "PEER backward after an evaluation-mode forward with batch norm");
  const int N = N_, C = s_.C, h = s_.heads, dk = s_.d_key, half = dk / 2, D = h * dk, S = s_.S,
            k = s_.k, A = N * h * k;
  // The experts, in one pass over the retrieved experts in ascending order (their assignments
  // grouped by a stable sort on the expert id, each group in token order). Each expert's rows u_e,
  // v_e are read once, and with them, for each of its assignments: d(gate), d(pre-activation),
  // the row gradients du_e, dv_e (one task sums a row, in a fixed order: no atomics) and dx's
  // share d·u_e. (A token-major pass for dx and d(gate) had read u_e, v_e once more per
  // retrieval: ~1/8 of a 2^20-expert step.) dx's shares go to one buffer per block of experts,
  // the blocks fixed by the assignment counts alone, and the buffers are added in block order,
  // so dx does not depend on the thread count.
  // Grouping: a stable sort of the assignments by expert id (group_by_key), so each
  // expert's assignments stay in token order.
  const int nrows = group_by_key(ids_, A, s_.experts(), e_kv_, e_list_, e_rows_, row_off_);
  // Chunks: [chunk_[c], chunk_[c+1]) of the retrieved experts, about A / (kDxBlocks·kDxChunks)
  // assignments each; block b is chunks b·kDxChunks .. (b+1)·kDxChunks − 1.
  constexpr int kChunks = kDxBlocks * kDxChunks;
  chunk_[0] = 0;
  for (int c = 1, i = 0; c <= kChunks; ++c) {
    const int64_t until = int64_t(A) * c / kChunks;
    while (i < nrows && row_off_[i] < until) ++i;
    chunk_[c] = c == kChunks ? nrows : i;
  }
  // With the optimizer in backward, a row's sum is formed in the thread's scratch (from zero, as
  // the zeroed gradient row would be: the same bits) and the row is updated at once, after its
  // old values served dx and d(gate); its Σ g² is kept per row and the rows' sums added in
  // ascending order, as the optimizer's pass does.
  SparseRowRule *ur = nullptr, *vr = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    ur = g.u_rule;
    vr = g.v_rule;
  } else {
    MOE_CHECK(!g.u_rule && !g.v_rule, "internal: the optimizer in backward is float only");
  }
  MOE_CHECK(max_threads() <= score_threads_,
            "internal: {} threads, PEER scratch bound for {} (thread count changed after bind)",
            max_threads(), score_threads_);
  const std::size_t NC = std::size_t(N) * C;
  // Scheduling: a free thread takes the next chunk of the block, not being run, with the most
  // chunks left (so the blocks drain together and the last chunks run side by side). A block's
  // chunks run in order, one at a time, so each dx row still gets its block's shares in one
  // fixed order, whichever threads ran them: the same bits as one task per block.
  int done[kDxBlocks] = {};  // chunks of each block run so far
  bool busy[kDxBlocks] = {};
#pragma omp parallel
  for (;;) {
    int b = -1, j = 0;
#pragma omp critical(moe_peer_dx_chunks)
    {
      int most = 0;
      for (int q = 0; q < kDxBlocks; ++q)
        if (!busy[q] && kDxChunks - done[q] > most) most = kDxChunks - done[q], b = q;
      if (b >= 0) busy[b] = true, j = done[b];
    }
    if (b < 0) break;  // every block is finished or being run by another thread
    // A block's buffer is not cleared as a whole (8·N·C floats, ~4 ms per step at 2^20): a
    // token's row is cleared when the block first adds to it, and the final sum skips the rows
    // a block never wrote.
    T* dxb = dx_blk_ + std::size_t(b) * NC;
    uint8_t* seen = dx_seen_ + std::size_t(b) * N;
    if (j == 0) std::fill(seen, seen + N, uint8_t(0));
    T* scratch = row_g_ + std::size_t(thread_index()) * 2 * C;
    const int c = b * kDxChunks + j;
    for (int i = chunk_[c]; i < chunk_[c + 1]; ++i) {
      const int64_t e = e_rows_[i];
      const bool more = i + 2 < chunk_[c + 1];  // the expert two ahead, whose rows are asked for
      const int32_t next = more ? e_rows_[i + 2] : 0;
      if (more) prefetch_rows(p, next, C);
      const T* u = p.u + e * C;
      const T* v = p.v + e * C;
      T* gu = ur ? scratch : g.u + e * C;
      T* gv = vr ? scratch + C : g.v + e * C;
      if (ur) std::fill(gu, gu + C, T(0));
      if (vr) std::fill(gv, gv + C, T(0));
      for (int j = row_off_[i]; j < row_off_[i + 1]; ++j) {
        const int a = e_list_[j], n = a / (h * k);
        const T* xn = x + std::size_t(n) * C;
        const T* dyn = dy + std::size_t(n) * C;
        T* dxn = dxb + std::size_t(n) * C;
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; ++c) dot += v[c] * dyn[c];
        const T z = act_in_[a], e1 = act_e1_[a], s = act(z, e1, s_.gelu);
        dgate_[a] = s * dot;
        const T w = gate_[a] * s, d = gate_[a] * dot * act_grad(z, e1, s_.gelu);
        if (!seen[n]) {  // the block's first share for this token: its row starts at zero
          seen[n] = 1;
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
          row_sq_[i] = ur->apply(e, gu);
        }
        if (vr) {
          if (more) prefetch_row(vr->m, next, C), prefetch_row(vr->v, next, C);
          row_sq_[nrows + i] = vr->apply(e, gv);
        }
      }
    }
#pragma omp critical(moe_peer_dx_chunks)
    {
      ++done[b];
      busy[b] = false;
    }
  }
#pragma omp parallel for schedule(static) if (N > 16)
  for (int n = 0; n < N; ++n) {
    T* dxn = dx + std::size_t(n) * C;
    for (int b = 0; b < kDxBlocks; ++b) {
      if (!dx_seen_[std::size_t(b) * N + n]) continue;
      const T* src = dx_blk_ + std::size_t(b) * NC + std::size_t(n) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) dxn[c] += src[c];
    }
  }
  for (int t = 0; t < 2; ++t) {
    SparseRowRule* rule = t == 0 ? ur : vr;
    if (!rule) continue;
    double sum = 0;
    for (int i = 0; i < nrows; ++i) sum += row_sq_[std::size_t(t) * nrows + i];
    rule->sum_sq = sum;
    rule->rows_done = std::size_t(nrows);
  }
  // Router: softmax backward per (token, head): d(score) of each of the k candidates, in place
  // of d(gate). A candidate's score is s1[id / S] + s2[id % S], so d(s1), d(s2) have at most k
  // non-zeros per row out of S: the products with the sub-keys go over those only (dense GEMMs
  // over the [N·h, S] matrices did ~S/k times the work, and had to clear them first).
  const int R = N * h;
  T* ds = dgate_;
#pragma omp parallel for schedule(static) if (R > 64)
  for (int r = 0; r < R; ++r) {
    const T* gt = gate_ + std::size_t(r) * k;
    T* dg = ds + std::size_t(r) * k;
    T dot = 0;
    for (int s = 0; s < k; ++s) dot += gt[s] * dg[s];
    for (int s = 0; s < k; ++s) dg[s] = gt[s] * (dg[s] - dot);
  }
  // dQ¹[r] = Σ_s ds·K¹[id/S], dQ²[r] = Σ_s ds·K²[id%S], candidates in rank order. Each
  // candidate's sub-key pair is kept for dK below (whose threads each walk all candidates: two
  // integer divisions per candidate per thread had been most of its time).
  int32_t* sub = sub_ids_;
#pragma omp parallel for schedule(static) if (R > 64)
  for (int r = 0; r < R; ++r) {
    T* d1 = dq_ + std::size_t(r) * dk;
    T* d2 = d1 + half;
    std::fill(d1, d1 + dk, T(0));
    for (int s = 0; s < k; ++s) {
      const std::size_t a = std::size_t(r) * k + s;
      const T w = ds[a];
      const int32_t j1 = ids_[a] / S, j2 = ids_[a] - j1 * S;
      sub[2 * a] = j1;
      sub[2 * a + 1] = j2;
      const T* k1 = p.keys1 + std::size_t(j1) * half;
      const T* k2 = p.keys2 + std::size_t(j2) * half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        d1[i] += w * k1[i];
        d2[i] += w * k2[i];
      }
    }
  }
  // dK¹[j] += Σ ds·Q¹[r] over the candidates with id/S = j (and dK² with id%S = j), summed in
  // (row, rank) order. Each thread owns a contiguous range of sub-keys and walks every
  // candidate, so each sum has one fixed order whatever the thread count.
  by_ranges(S, 16, [&](int j0, int j1) {
    for (int r = 0; r < R; ++r) {
      const T* q1 = q_ + std::size_t(r) * dk;
      const T* q2 = q1 + half;
      for (int s = 0; s < k; ++s) {
        const std::size_t a = std::size_t(r) * k + s;
        const int j1s = sub[2 * a], j2s = sub[2 * a + 1];
        const T w = ds[a];
        if (j1s >= j0 && j1s < j1) {
          T* gk = g.keys1 + std::size_t(j1s) * half;
#pragma omp simd
          for (int i = 0; i < half; ++i) gk[i] += w * q1[i];
        }
        if (j2s >= j0 && j2s < j1) {
          T* gk = g.keys2 + std::size_t(j2s) * half;
#pragma omp simd
          for (int i = 0; i < half; ++i) gk[i] += w * q2[i];
        }
      }
    }
  });
  // Norm backward: dq → dz (in place in dq_).
  if (s_.qnorm == QueryNorm::kBatch) {
    batchnorm_backward(dq_, g.gamma, g.beta, dq_, z_, p.gamma, mean_, rstd_, N, D, bn_options(),
                       bn_sums_, bn_affine_grad_);
  } else if (s_.qnorm == QueryNorm::kLayer) {
    layernorm_backward(dq_, g.gamma, g.beta, dq_, z_, p.gamma, mean_, rstd_, N, h, dk);
  }
  // Query network.
  gemm<T>(true, false, D, C, N, T(1), dq_, D, x, C, T(1), g.wq, C);
  by_ranges(D, 64, [&](int f0, int f1) {
    for (int n = 0; n < N; ++n)
      for (int f = f0; f < f1; ++f) g.bq[f] += dq_[std::size_t(n) * D + f];
  });
  gemm<T>(false, false, N, C, D, T(1), dq_, D, p.wq, C, T(1), dx, C);
}

UsageStats usage_stats(const std::vector<double>& z) {
  UsageStats u;
  double total = 0;
  for (double v : z) total += v;
  const int64_t used = std::count_if(z.begin(), z.end(), [](double v) { return v > 0; });
  if (z.empty() || total <= 0) return u;
  u.usage = double(used) / z.size();
  double s = 0;
  for (double v : z)
    if (v > 0) s += (v / total) * std::log(v / total);
  u.kl = std::log(double(z.size())) + s;
  u.effective = std::exp(-u.kl);
  return u;
}

template class PeerLayer<float>;
template class PeerLayer<double>;

}  // namespace moe
