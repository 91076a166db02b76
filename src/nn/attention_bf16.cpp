// nn/attention_bf16.h: attention's QKᵀ and P·V (and their backward products) on gemm_bf16.
#include "moe/nn/attention_bf16.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "moe/core/threading.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/kernels/softmax.h"
#include "moe/nn/attention.h"

namespace moe {

namespace {

// Per thread, grown on demand and kept.
uint16_t* grow(std::vector<uint16_t>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// dst [rows, cols] (dense) = bf16(src [rows, ·] with row stride ld).
void round_rows(uint16_t* dst, const float* src, int rows, int cols, int ld) {
  for (int r = 0; r < rows; ++r)
    round_to_bf16(dst + std::size_t(r) * cols, src + std::size_t(r) * ld, std::size_t(cols));
}

}  // namespace

void attention_forward_bf16(float* out, float* probs, const float* q, const float* k,
                            const float* v, int B, int Tn, int Hq, int Hkv, int hd) {
  const int ldq = Hq * hd, ldk = Hkv * hd, group = Hq / Hkv;
  const float scale = float(1.0 / std::sqrt(double(hd)));
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    thread_local std::vector<uint16_t> buf;
    // Kb, Vb, Qb [T, hd] and one row block of P [kAttnRowBlock, T], all bf16.
    uint16_t* Kb = grow(buf, 3 * std::size_t(Tn) * hd + std::size_t(kAttnRowBlock) * Tn);
    uint16_t* Vb = Kb + std::size_t(Tn) * hd;
    uint16_t* Qb = Vb + std::size_t(Tn) * hd;
    uint16_t* Pb = Qb + std::size_t(Tn) * hd;
    const int b = task / Hkv, kh = task % Hkv;
    round_rows(Kb, k + std::size_t(b) * Tn * ldk + kh * hd, Tn, hd, ldk);
    round_rows(Vb, v + std::size_t(b) * Tn * ldk + kh * hd, Tn, hd, ldk);
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      round_rows(Qb, q + std::size_t(b) * Tn * ldq + h * hd, Tn, hd, ldq);
      float* P = probs + (std::size_t(b) * Hq + h) * Tn * Tn;
      float* O = out + std::size_t(b) * Tn * ldq + h * hd;
      for (int r0 = 0; r0 < Tn; r0 += kAttnRowBlock) {
        const int r1 = r0 + kAttnRowBlock < Tn ? r0 + kAttnRowBlock : Tn, m = r1 - r0;
        // S[r0:r1, 0:r1] = scale·Q[r0:r1]·K[0:r1]ᵀ
        gemm_bf16(false, true, m, r1, hd, scale, Qb + std::size_t(r0) * hd, hd, Kb, hd, 0.f,
                  P + std::size_t(r0) * Tn, Tn);
        for (int i = r0; i < r1; ++i) {
          float* row = P + std::size_t(i) * Tn;
          softmax_row_simd(row, i + 1);  // the causal part, then zeros
          for (int j = i + 1; j < Tn; ++j) row[j] = 0;
        }
        // O[r0:r1] = P[r0:r1, 0:r1]·V[0:r1]
        round_rows(Pb, P + std::size_t(r0) * Tn, m, r1, Tn);
        gemm_bf16(false, false, m, hd, r1, 1.f, Pb, r1, Vb, hd, 0.f, O + std::size_t(r0) * ldq,
                  ldq);
      }
    }
  }
}

void attention_backward_bf16(float* dq, float* dk, float* dv, float* scratch, const float* dout,
                             const float* probs, const float* q, const float* k, const float* v,
                             int B, int Tn, int Hq, int Hkv, int hd) {
  const int ldq = Hq * hd, ldk = Hkv * hd, group = Hq / Hkv;
  const float scale = float(1.0 / std::sqrt(double(hd)));
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    thread_local std::vector<uint16_t> buf;
    // Kb, Vb, Qb, dOb [T, hd]; one row block of P and of dS [kAttnRowBlock, T], all bf16.
    const std::size_t th = std::size_t(Tn) * hd, blk = std::size_t(kAttnRowBlock) * Tn;
    uint16_t* Kb = grow(buf, 4 * th + 2 * blk);
    uint16_t* Vb = Kb + th;
    uint16_t* Qb = Vb + th;
    uint16_t* dOb = Qb + th;
    uint16_t* Pb = dOb + th;
    uint16_t* dSh = Pb + blk;
    const int b = task / Hkv, kh = task % Hkv;
    float* dS = scratch + std::size_t(thread_index()) * Tn * Tn;
    const std::size_t kv0 = std::size_t(b) * Tn * ldk + kh * hd;
    float* dK = dk + kv0;
    float* dV = dv + kv0;
    round_rows(Kb, k + kv0, Tn, hd, ldk);
    round_rows(Vb, v + kv0, Tn, hd, ldk);
    for (int i = 0; i < Tn; ++i) {
      std::memset(dK + std::size_t(i) * ldk, 0, sizeof(float) * hd);
      std::memset(dV + std::size_t(i) * ldk, 0, sizeof(float) * hd);
    }
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const std::size_t q0 = std::size_t(b) * Tn * ldq + h * hd;
      round_rows(Qb, q + q0, Tn, hd, ldq);
      round_rows(dOb, dout + q0, Tn, hd, ldq);
      const float* P = probs + (std::size_t(b) * Hq + h) * Tn * Tn;
      for (int r0 = 0; r0 < Tn; r0 += kAttnRowBlock) {
        const int r1 = r0 + kAttnRowBlock < Tn ? r0 + kAttnRowBlock : Tn, m = r1 - r0;
        // dV[0:r1] += P[r0:r1, 0:r1]ᵀ·dO[r0:r1] ;  dP = dO[r0:r1]·V[0:r1]ᵀ
        round_rows(Pb, P + std::size_t(r0) * Tn, m, r1, Tn);
        gemm_bf16(true, false, r1, hd, m, 1.f, Pb, r1, dOb + std::size_t(r0) * hd, hd, 1.f, dV,
                  ldk);
        float* dSb = dS + std::size_t(r0) * Tn;
        gemm_bf16(false, true, m, r1, hd, 1.f, dOb + std::size_t(r0) * hd, hd, Vb, hd, 0.f, dSb,
                  Tn);
        // Softmax backward in f32 (nn/attention.h's loop), then the 1/sqrt(hd) of the scores.
        for (int i = r0; i < r1; ++i) {
          const float* p = P + std::size_t(i) * Tn;
          float* d = dS + std::size_t(i) * Tn;
          float dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int j = 0; j <= i; ++j) dot += p[j] * d[j];
#pragma omp simd
          for (int j = 0; j <= i; ++j) d[j] = p[j] * (d[j] - dot) * scale;
          for (int j = i + 1; j < r1; ++j) d[j] = 0;
        }
        // dQ[r0:r1] = dS·K[0:r1] ;  dK[0:r1] += dSᵀ·Q[r0:r1]
        round_rows(dSh, dSb, m, r1, Tn);
        gemm_bf16(false, false, m, hd, r1, 1.f, dSh, r1, Kb, hd, 0.f,
                  dq + q0 + std::size_t(r0) * ldq, ldq);
        gemm_bf16(true, false, r1, hd, m, 1.f, dSh, r1, Qb + std::size_t(r0) * hd, hd, 1.f, dK,
                  ldk);
      }
    }
  }
}

}  // namespace moe
