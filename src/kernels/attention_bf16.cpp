// kernels/attention_bf16.h: the fused avx512bf16 path on the bf16 microkernel, and the widen path.
// The loops, the softmax and its backward are compiled here with the project's flags (the f32
// attention's flags), not in gemm_bf16_avx512.cpp's target region; only the microkernel, the
// packing and the rounding run there.
#include "moe/kernels/attention_bf16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "gemm_bf16_internal.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/core/threading.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/softmax.h"

namespace moe {

namespace {

constexpr int kMR = 12;  // rows of the microkernel
constexpr int kNR = 32;  // columns of the microkernel (and of a B panel)
constexpr int kQB = kAttnBf16QueryBlock;
static_assert(kQB % kMR == 0 && kQB % 2 == 0, "query blocks hold whole row blocks and pairs");

using bf16k::Scratch;

// ---- the fused path (needs cpu_features().avx512_bf16) -----------------------------------------

// dst [rows, ldd] bf16 = src [rows, ·] (row stride lds) rounded, columns [0, cols); an odd cols
// gets a zero in column cols, so every row holds whole pairs.
void round_rows(uint16_t* dst, int ldd, const float* src, int lds, int rows, int cols) {
  for (int r = 0; r < rows; ++r) {
    uint16_t* d = dst + std::size_t(r) * ldd;
    bf16k::round_avx512(d, src + std::size_t(r) * lds, std::size_t(cols));
    if (cols & 1) d[cols] = 0;
  }
}

// X [R, C] bf16 (row stride ld) as B panels of pairs of rows: panel cb (columns cb·32 ..
// cb·32+31) at dst + cb·panel, step p's pair c = (X[2p, cb·32+c], X[2p+1, cb·32+c]) as one
// 32-bit value (the layout gemm_bf16_avx512.cpp's B panels have); zero past R rows or C columns.
// panel ≥ ⌈R/2⌉·64.
void pair_panels(uint16_t* dst, std::size_t panel, const uint16_t* X, int ld, int R, int C) {
  const int P = (R + 1) / 2;
  for (int c0 = 0; c0 < C; c0 += kNR) {
    const int w = std::min(kNR, C - c0);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst + (c0 / kNR) * panel);  // even offsets
    for (int p = 0; p < P; ++p) {
      const uint16_t* r0 = X + std::size_t(2 * p) * ld + c0;
      uint32_t* dp = d + std::size_t(p) * kNR;
      bf16k::interleave_pairs_avx512(dp, r0, 2 * p + 1 < R ? r0 + ld : nullptr, std::size_t(w));
      for (int c = w; c < kNR; ++c) dp[c] = 0;
    }
  }
}

// X [R, ·] bf16 (row stride ld; K even values per row) as B panels of its rows' pairs, the
// panel of rows j0 .. j0+31 at dst + (j0/32)·K·32: Xᵀ's panels.
void col_panels(uint16_t* dst, const uint16_t* X, int ld, int K, int R) {
  const std::size_t panel = std::size_t(K) * kNR;
  for (int j0 = 0; j0 < R; j0 += kNR)
    bf16k::pack_cols_avx512(dst + (j0 / kNR) * panel, X, ld, K, j0, std::min(kNR, R - j0), kNR);
}

// The microkernel's 12 row pointers: rows i0 .. i0+mr−1 of X (row stride ld); those past mr
// repeat row i0 (read, never stored).
void rows_at(const uint16_t* (&row)[kMR], const uint16_t* X, int ld, int i0, int mr) {
  for (int i = 0; i < kMR; ++i) row[i] = X + std::size_t(i0 + (i < mr ? i : 0)) * ld;
}

// The softmax of one row of scores s [n] (causal: n = i + 1) in place, its stats at st; when
// probs is not null the row is also copied there with zeros to T (the optional output).
inline void softmax_saving_stats(float* s, int n, float* st, float* probs, int Tn) {
  softmax_row_simd(s, n, st);
  if (probs) {
    std::copy(s, s + n, probs);
    std::fill(probs + n, probs + Tn, 0.f);
  }
}

// Query row i of the backward, given its scores in p [r1] and dP in d [r1]: p = the forward's
// probabilities (rebuilt from its stats st), d = dS = P∘(dP − Σ P∘dP)·scale (nn/attention.h's
// softmax backward, the 1/sqrt(hd) of the scores folded in), both zero from i + 1 to the block's
// last key r1, where Pᵀ and dSᵀ are read.
inline void softmax_backward_row(float* p, float* d, int i, int r1, const float* st, float scale) {
  softmax_row_from_stats(p, i + 1, st);
  float dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int j = 0; j <= i; ++j) dot += p[j] * d[j];
#pragma omp simd
  for (int j = 0; j <= i; ++j) d[j] = p[j] * (d[j] - dot) * scale;
  for (int j = i + 1; j < r1; ++j) p[j] = d[j] = 0.f;
}

void forward_fused(float* out, float* stats, float* probs, const AttnBf16Saved& sv, int B, int Tn,
                   int Hq, int Hkv, int hd) {
  const int ldq = Hq * hd, group = Hq / Hkv;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const int hdp = attention_bf16_head_width(hd), Tw = Tn + (Tn & 1);  // whole pairs
  const int ldqb = Hq * hdp, ldkb = Hkv * hdp;                        // the saved rows
  const int nk = (Tn + kNR - 1) / kNR, nd = (hd + kNR - 1) / kNR;
  const std::size_t kpanel = std::size_t(hdp) * kNR;  // Kᵀ's panels: hdp/2 steps of 32 keys
  const std::size_t vpanel = std::size_t(Tw) * kNR;   // V's panels: Tw/2 steps of 32 columns
  // Per task: Kp (Kᵀ's panels), Vp (V's panels), Pr [12, Tw] (a row block of P rounded); S
  // [12, Tw] f32 (its scores). Q̂, K̂, V̂ are the saved rows.
  const std::size_t n_kp = nk * kpanel, n_vp = nd * vpanel, n_pr = std::size_t(kMR) * Tw;
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    thread_local Scratch<uint16_t> buf;
    thread_local Scratch<float> fbuf;
    uint16_t* Kp = buf.get(n_kp + n_vp + n_pr);
    uint16_t* Vp = Kp + n_kp;
    uint16_t* Pr = Vp + n_vp;
    float* S = fbuf.get(n_pr);
    const int b = task / Hkv, kh = task % Hkv;
    const std::size_t kvb0 = std::size_t(b) * Tn * ldkb + kh * hdp;
    const uint16_t* Kr = sv.k + kvb0;
    const uint16_t* Vr = sv.v + kvb0;
    col_panels(Kp, Kr, ldkb, hdp, Tn);
    pair_panels(Vp, vpanel, Vr, ldkb, Tn, hd);
    const uint16_t* row[kMR];
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const std::size_t q0 = std::size_t(b) * Tn * ldq + h * hd, bh = std::size_t(b) * Hq + h;
      const uint16_t* Qr = sv.q + std::size_t(b) * Tn * ldqb + h * hdp;
      for (int i0 = 0; i0 < Tn; i0 += kMR) {
        // Rows i0 .. r1−1 need keys 0 .. r1−1 (causal): the scores of 32 keys per microkernel
        // call, the last call narrower.
        const int mr = std::min(kMR, Tn - i0), r1 = i0 + mr;
        rows_at(row, Qr, ldqb, i0, mr);
        for (int j0 = 0; j0 < r1; j0 += kNR)
          bf16k::micro_rows_12x32(row, Kp + (j0 / kNR) * kpanel, hdp, S + j0, Tw, mr,
                                  std::min(kNR, r1 - j0), scale, 0.f);
        for (int i = 0; i < mr; ++i) {
          float* srow = S + std::size_t(i) * Tw;
          const int n = i0 + i + 1;  // the causal part; P is zero past it
          softmax_saving_stats(srow, n, stats + (bh * Tn + i0 + i) * 2,
                               probs ? probs + (bh * Tn + i0 + i) * Tn : nullptr, Tn);
          std::fill(srow + n, srow + r1, 0.f);
        }
        // O[i0:r1] = P̂[i0:r1, 0:r1]·V̂[0:r1], P̂'s rows read in place.
        round_rows(Pr, Tw, S, Tw, mr, r1);
        rows_at(row, Pr, Tw, 0, mr);
        for (int d0 = 0; d0 < hd; d0 += kNR)
          bf16k::micro_rows_12x32(row, Vp + (d0 / kNR) * vpanel, r1 + (r1 & 1),
                                  out + q0 + std::size_t(i0) * ldq + d0, ldq, mr,
                                  std::min(kNR, hd - d0), 1.f, 0.f);
      }
    }
  }
}

void backward_fused(float* dq, float* dk, float* dv, const float* dout, const float* stats,
                    const AttnBf16Saved& sv, int B, int Tn, int Hq, int Hkv, int hd) {
  const int ldq = Hq * hd, ldk = Hkv * hd, group = Hq / Hkv;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const int hdp = attention_bf16_head_width(hd), Tw = Tn + (Tn & 1);
  const int ldqb = Hq * hdp, ldkb = Hkv * hdp;
  // Row length (pairs) of the interleaved Pᵀ and dSᵀ: the microkernel reads 12 keys from any
  // j0 < T, so up to 11 past T (rows it does not store).
  const int Ts = Tw + kMR;
  const int nk = (Tn + kNR - 1) / kNR, nd = (hd + kNR - 1) / kNR;
  const std::size_t kpanel = std::size_t(hdp) * kNR;  // Kᵀ's and Vᵀ's panels
  const std::size_t vpanel = std::size_t(Tw) * kNR;   // K's panels (pairs of key rows)
  const std::size_t qpanel = std::size_t(kQB) * kNR;  // one block's dO and Q panels
  // Per task (bf16): Kp and Vc (Kᵀ's and Vᵀ's panels), Kq (K's panels), dOr [T, hdp] (one
  // head's dO rounded), dOp and Qp (the query block's rows in panels), Pi and dSi [kQB/2, Ts]
  // pairs (the block's P and dS, pairs of query rows interleaved), dSr [12, Tw] (a row block of
  // dS rounded). f32: P and dS [kQB, Tw]. Q̂, K̂, V̂ are the forward's saved rows.
  const std::size_t n_r = std::size_t(Tn) * hdp, n_c = nk * kpanel, n_kq = nd * vpanel,
                    n_qp = nd * qpanel, n_pi = std::size_t(kQB) * Ts, n_ds = std::size_t(kMR) * Tw,
                    n_f = std::size_t(kQB) * Tw;
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    thread_local Scratch<uint16_t> buf;
    thread_local Scratch<float> fbuf;
    uint16_t* Kp = buf.get(2 * n_c + n_kq + n_r + 2 * n_qp + 2 * n_pi + n_ds);
    uint16_t* Vc = Kp + n_c;
    uint16_t* Kq = Vc + n_c;
    uint16_t* dOr = Kq + n_kq;
    uint16_t* dOp = dOr + n_r;
    uint16_t* Qp = dOp + n_qp;
    uint16_t* Pi = Qp + n_qp;
    uint16_t* dSi = Pi + n_pi;
    uint16_t* dSr = dSi + n_pi;
    float* P = fbuf.get(2 * n_f);
    float* dS = P + n_f;
    const int b = task / Hkv, kh = task % Hkv;
    const std::size_t kv0 = std::size_t(b) * Tn * ldk + kh * hd;
    const std::size_t kvb0 = std::size_t(b) * Tn * ldkb + kh * hdp;
    const uint16_t* Kr = sv.k + kvb0;
    const uint16_t* Vr = sv.v + kvb0;
    float* dK = dk + kv0;
    float* dV = dv + kv0;
    col_panels(Kp, Kr, ldkb, hdp, Tn);
    col_panels(Vc, Vr, ldkb, hdp, Tn);
    pair_panels(Kq, vpanel, Kr, ldkb, Tn, hd);
    const uint16_t* row[kMR];
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const std::size_t q0 = std::size_t(b) * Tn * ldq + h * hd, bh = std::size_t(b) * Hq + h;
      const uint16_t* Qr = sv.q + std::size_t(b) * Tn * ldqb + h * hdp;
      round_rows(dOr, hdp, dout + q0, ldq, Tn, hd);
      for (int r0 = 0; r0 < Tn; r0 += kQB) {
        const int m = std::min(kQB, Tn - r0), r1 = r0 + m;
        pair_panels(dOp, qpanel, dOr + std::size_t(r0) * hdp, hdp, m, hd);
        pair_panels(Qp, qpanel, Qr + std::size_t(r0) * ldqb, ldqb, m, hd);
        for (int i0 = r0; i0 < r1; i0 += kMR) {
          const int mr = std::min(kMR, r1 - i0), c1 = i0 + mr;
          float* Pb = P + std::size_t(i0 - r0) * Tw;
          float* dSb = dS + std::size_t(i0 - r0) * Tw;
          // The forward's scores S[i0:c1, 0:c1] = scale·Q̂·K̂ᵀ (the same calls, the same bits),
          // and dP = dÔ·V̂ᵀ.
          rows_at(row, Qr, ldqb, i0, mr);
          for (int j0 = 0; j0 < c1; j0 += kNR)
            bf16k::micro_rows_12x32(row, Kp + (j0 / kNR) * kpanel, hdp, Pb + j0, Tw, mr,
                                    std::min(kNR, c1 - j0), scale, 0.f);
          rows_at(row, dOr, hdp, i0, mr);
          for (int j0 = 0; j0 < c1; j0 += kNR)
            bf16k::micro_rows_12x32(row, Vc + (j0 / kNR) * kpanel, hdp, dSb + j0, Tw, mr,
                                    std::min(kNR, c1 - j0), 1.f, 0.f);
          for (int i = i0; i < c1; ++i)
            softmax_backward_row(P + std::size_t(i - r0) * Tw, dS + std::size_t(i - r0) * Tw, i, r1,
                                 stats + (bh * Tn + i) * 2, scale);
          // dQ[i0:c1] = dŜ[i0:c1, 0:c1]·K̂[0:c1], dŜ's rows read in place.
          round_rows(dSr, Tw, dSb, Tw, mr, c1);
          rows_at(row, dSr, Tw, 0, mr);
          for (int d0 = 0; d0 < hd; d0 += kNR)
            bf16k::micro_rows_12x32(row, Kq + (d0 / kNR) * vpanel, c1 + (c1 & 1),
                                    dq + q0 + std::size_t(i0) * ldq + d0, ldq, mr,
                                    std::min(kNR, hd - d0), 1.f, 0.f);
        }
        // dV[0:r1] += P̂[r0:r1]ᵀ·dÔ[r0:r1] and dK[0:r1] += dŜ[r0:r1]ᵀ·Q̂[r0:r1]: Pᵀ's and dSᵀ's
        // rows are keys, their pairs pairs of query rows, interleaved as they are rounded.
        uint32_t* pi = reinterpret_cast<uint32_t*>(Pi);  // even offsets: 4-byte aligned
        uint32_t* dsi = reinterpret_cast<uint32_t*>(dSi);
        for (int p = 0; 2 * p < m; ++p) {
          const bool two = 2 * p + 1 < m;
          const float* p0 = P + std::size_t(2 * p) * Tw;
          const float* d0 = dS + std::size_t(2 * p) * Tw;
          bf16k::round_pairs_avx512(pi + std::size_t(p) * Ts, p0, two ? p0 + Tw : nullptr,
                                    std::size_t(r1), false, 1.f, 1.f);
          bf16k::round_pairs_avx512(dsi + std::size_t(p) * Ts, d0, two ? d0 + Tw : nullptr,
                                    std::size_t(r1), false, 1.f, 1.f);
        }
        for (int j0 = 0; j0 < r1; j0 += kMR) {
          // Key j gets nothing from queries before it: skip the pair steps wholly before j0.
          // Keys from r0 on get their first terms from this block, so the group's first head
          // writes them (beta 0) instead of zeroing dK and dV beforehand.
          const int mr = std::min(kMR, r1 - j0), ps = std::max(0, j0 - r0) / 2, kk = m - 2 * ps;
          const float beta = h == kh * group && j0 >= r0 ? 0.f : 1.f;
          const std::size_t a = (std::size_t(ps) * Ts + j0) * 2;
          for (int d0 = 0; d0 < hd; d0 += kNR) {
            const std::size_t bo = (d0 / kNR) * qpanel + std::size_t(ps) * kNR * 2;
            const std::size_t c = std::size_t(j0) * ldk + d0;
            const int nr = std::min(kNR, hd - d0);
            bf16k::micro_strided_12x32(Pi + a, Ts, dOp + bo, kk, dV + c, ldk, mr, nr, 1.f, beta);
            bf16k::micro_strided_12x32(dSi + a, Ts, Qp + bo, kk, dK + c, ldk, mr, nr, 1.f, beta);
          }
        }
      }
    }
  }
}

// ---- the widen path (any CPU) -------------------------------------------------------------------

// dst [rows, cols] f32 = src [rows, ·] bf16 (row stride ld), exactly widened.
void widen_rows(float* dst, const uint16_t* src, int rows, int cols, int ld) {
  for (int r = 0; r < rows; ++r)
    widen_bf16(dst + std::size_t(r) * cols, src + std::size_t(r) * ld, std::size_t(cols));
}

// dst [rows, cols] f32 = the bf16 roundings of src [rows, ·] (row stride ld), exactly widened.
void rounded_copy(float* dst, const float* src, int rows, int cols, int ld) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      dst[std::size_t(r) * cols + c] = bf16_to_f32(f32_to_bf16(src[std::size_t(r) * ld + c]));
}

void forward_widen(float* out, float* stats, float* probs, const AttnBf16Saved& sv, int B, int Tn,
                   int Hq, int Hkv, int hd) {
  const int ldq = Hq * hd, group = Hq / Hkv;
  const int hdp = attention_bf16_head_width(hd), ldqb = Hq * hdp, ldkb = Hkv * hdp;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const std::size_t th = std::size_t(Tn) * hd, blk = std::size_t(kQB) * Tn;
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    thread_local Scratch<float> buf;
    float* K = buf.get(3 * th + 2 * blk);  // K̂, V̂, Q̂ [T, hd]; S and P̂ [kQB, T]
    float* V = K + th;
    float* Q = V + th;
    float* S = Q + th;
    float* Pr = S + blk;
    const int b = task / Hkv, kh = task % Hkv;
    const std::size_t kvb0 = std::size_t(b) * Tn * ldkb + kh * hdp;
    widen_rows(K, sv.k + kvb0, Tn, hd, ldkb);
    widen_rows(V, sv.v + kvb0, Tn, hd, ldkb);
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const std::size_t bh = std::size_t(b) * Hq + h;
      widen_rows(Q, sv.q + std::size_t(b) * Tn * ldqb + h * hdp, Tn, hd, ldqb);
      float* O = out + std::size_t(b) * Tn * ldq + h * hd;
      for (int r0 = 0; r0 < Tn; r0 += kQB) {
        const int r1 = std::min(Tn, r0 + kQB), m = r1 - r0;
        gemm<float>(false, true, m, r1, hd, scale, Q + std::size_t(r0) * hd, hd, K, hd, 0.f, S, r1);
        for (int i = r0; i < r1; ++i) {
          float* row = S + std::size_t(i - r0) * r1;
          softmax_saving_stats(row, i + 1, stats + (bh * Tn + i) * 2,
                               probs ? probs + (bh * Tn + i) * Tn : nullptr, Tn);
          std::fill(row + i + 1, row + r1, 0.f);
        }
        rounded_copy(Pr, S, m, r1, r1);
        gemm<float>(false, false, m, hd, r1, 1.f, Pr, r1, V, hd, 0.f, O + std::size_t(r0) * ldq,
                    ldq);
      }
    }
  }
}

void backward_widen(float* dq, float* dk, float* dv, const float* dout, const float* stats,
                    const AttnBf16Saved& sv, int B, int Tn, int Hq, int Hkv, int hd) {
  const int ldq = Hq * hd, ldk = Hkv * hd, group = Hq / Hkv;
  const int hdp = attention_bf16_head_width(hd), ldqb = Hq * hdp, ldkb = Hkv * hdp;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const std::size_t th = std::size_t(Tn) * hd, blk = std::size_t(kQB) * Tn;
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    thread_local Scratch<float> buf;
    // K̂, V̂, Q̂, dÔ [T, hd]; P, dS and their roundings [kQB, T]
    float* K = buf.get(4 * th + 4 * blk);
    float* V = K + th;
    float* Q = V + th;
    float* dO = Q + th;
    float* P = dO + th;
    float* dS = P + blk;
    float* Pr = dS + blk;
    float* dSr = Pr + blk;
    const int b = task / Hkv, kh = task % Hkv;
    const std::size_t kv0 = std::size_t(b) * Tn * ldk + kh * hd;
    const std::size_t kvb0 = std::size_t(b) * Tn * ldkb + kh * hdp;
    float* dK = dk + kv0;
    float* dV = dv + kv0;
    widen_rows(K, sv.k + kvb0, Tn, hd, ldkb);
    widen_rows(V, sv.v + kvb0, Tn, hd, ldkb);
    for (int j = 0; j < Tn; ++j) {
      std::memset(dK + std::size_t(j) * ldk, 0, sizeof(float) * hd);
      std::memset(dV + std::size_t(j) * ldk, 0, sizeof(float) * hd);
    }
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const std::size_t q0 = std::size_t(b) * Tn * ldq + h * hd, bh = std::size_t(b) * Hq + h;
      widen_rows(Q, sv.q + std::size_t(b) * Tn * ldqb + h * hdp, Tn, hd, ldqb);
      rounded_copy(dO, dout + q0, Tn, hd, ldq);
      for (int r0 = 0; r0 < Tn; r0 += kQB) {
        const int r1 = std::min(Tn, r0 + kQB), m = r1 - r0;
        // The forward's scores and probabilities again; dP = dÔ·V̂ᵀ.
        gemm<float>(false, true, m, r1, hd, scale, Q + std::size_t(r0) * hd, hd, K, hd, 0.f, P, r1);
        gemm<float>(false, true, m, r1, hd, 1.f, dO + std::size_t(r0) * hd, hd, V, hd, 0.f, dS, r1);
        for (int i = r0; i < r1; ++i)
          softmax_backward_row(P + std::size_t(i - r0) * r1, dS + std::size_t(i - r0) * r1, i, r1,
                               stats + (bh * Tn + i) * 2, scale);
        rounded_copy(Pr, P, m, r1, r1);
        rounded_copy(dSr, dS, m, r1, r1);
        gemm<float>(true, false, r1, hd, m, 1.f, Pr, r1, dO + std::size_t(r0) * hd, hd, 1.f, dV,
                    ldk);
        gemm<float>(false, false, m, hd, r1, 1.f, dSr, r1, K, hd, 0.f,
                    dq + q0 + std::size_t(r0) * ldq, ldq);
        gemm<float>(true, false, r1, hd, m, 1.f, dSr, r1, Q + std::size_t(r0) * hd, hd, 1.f, dK,
                    ldk);
      }
    }
  }
}

bool fused(Bf16GemmPath path) {
  MOE_CHECK(bf16_gemm_path_available(path), "attention_bf16: path {} needs a CPU with AVX512-BF16",
            bf16_gemm_path_name(path));
  return bf16_microkernel_path(path) == Bf16GemmPath::kAvx512Bf16;
}

}  // namespace

void attention_round_bf16(uint16_t* dst, const float* src, int N, int H, int hd) {
  const int hdp = attention_bf16_head_width(hd);
#pragma omp parallel for schedule(static) if (std::size_t(N) * H * hd > 65536 && !in_parallel())
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h) {
      uint16_t* d = dst + (std::size_t(n) * H + h) * hdp;
      round_to_bf16(d, src + (std::size_t(n) * H + h) * hd, std::size_t(hd));
      if (hdp > hd) d[hd] = 0;
    }
}

void attention_forward_bf16(float* out, float* stats, float* probs, const AttnBf16Saved& saved,
                            int B, int Tn, int Hq, int Hkv, int hd, Bf16GemmPath path) {
  if (fused(path))
    forward_fused(out, stats, probs, saved, B, Tn, Hq, Hkv, hd);
  else
    forward_widen(out, stats, probs, saved, B, Tn, Hq, Hkv, hd);
}

void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const float* stats,
                             const AttnBf16Saved& saved, int B, int Tn, int Hq, int Hkv, int hd,
                             Bf16GemmPath path) {
  if (fused(path))
    backward_fused(dq, dk, dv, dout, stats, saved, B, Tn, Hq, Hkv, hd);
  else
    backward_widen(dq, dk, dv, dout, stats, saved, B, Tn, Hq, Hkv, hd);
}

}  // namespace moe
