// Causal scaled-dot-product attention with grouped-query heads (the core after the projections
// and RoPE). Query head h reads kv head h / (Hq/Hkv). One (batch, kv head) pair is one task:
// its query heads run in sequence inside the task, so the dK/dV they share are summed in a fixed
// order without atomics, and every GEMM is a single-threaded BLAS call inside our parallel loop.
#pragma once
#include <cmath>
#include <cstring>
#include <vector>

#include "moe/core/threading.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/softmax.h"
#include "moe/kernels/vexp.h"

namespace moe {

// Rows of the score matrix handled per GEMM. Smaller blocks skip more of the masked triangle
// (block b of n computes (b+1)/n of a full row) but make smaller, less efficient GEMMs.
inline constexpr int kAttnRowBlock = 64;

// out [B·T, Hq·hd] (written), probs [B, Hq, T, T] (written, saved for backward; exact zeros above
// the diagonal); q [B·T, Hq·hd], k and v [B·T, Hkv·hd].
template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int B, int Tn, int Hq,
                       int Hkv, int hd) {
  const int ldq = Hq * hd, ldk = Hkv * hd, group = Hq / Hkv;
  const T scale = T(1.0 / std::sqrt(double(hd)));
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    const int b = task / Hkv, kh = task % Hkv;
    const T* K = k + std::size_t(b) * Tn * ldk + kh * hd;
    const T* V = v + std::size_t(b) * Tn * ldk + kh * hd;
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const T* Q = q + std::size_t(b) * Tn * ldq + h * hd;
      T* P = probs + (std::size_t(b) * Hq + h) * Tn * Tn;
      T* O = out + std::size_t(b) * Tn * ldq + h * hd;
      // Causal: row block [r0, r1) only needs keys [0, r1), which skips most of the masked
      // upper triangle (the GEMMs below are the bulk of attention's time).
      for (int r0 = 0; r0 < Tn; r0 += kAttnRowBlock) {
        const int r1 = r0 + kAttnRowBlock < Tn ? r0 + kAttnRowBlock : Tn;
        gemm<T>(false, true, r1 - r0, r1, hd, scale, Q + std::size_t(r0) * ldq, ldq, K, ldk, T(0),
                P + std::size_t(r0) * Tn, Tn);
        for (int i = r0; i < r1; ++i) {
          T* row = P + std::size_t(i) * Tn;
          softmax_row_simd(row, i + 1);  // the causal part, then zeros
          for (int j = i + 1; j < Tn; ++j) row[j] = 0;
        }
        gemm<T>(false, false, r1 - r0, hd, r1, T(1), P + std::size_t(r0) * Tn, Tn, V, ldk, T(0),
                O + std::size_t(r0) * ldq, ldq);
      }
    }
  }
}

// Scratch floats attention_backward needs: one T×T panel per thread.
inline std::size_t attention_scratch_size(int Tn) { return std::size_t(max_threads()) * Tn * Tn; }

// dq [B·T, Hq·hd], dk and dv [B·T, Hkv·hd] (all written); dout [B·T, Hq·hd]; probs, q, k, v as
// saved by the forward. scratch: attention_scratch_size(T) elements.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, T* scratch, const T* dout, const T* probs, const T* q,
                        const T* k, const T* v, int B, int Tn, int Hq, int Hkv, int hd) {
  const int ldq = Hq * hd, ldk = Hkv * hd, group = Hq / Hkv;
  const T scale = T(1.0 / std::sqrt(double(hd)));
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < B * Hkv; ++task) {
    const int b = task / Hkv, kh = task % Hkv;
    T* dS = scratch + std::size_t(thread_index()) * Tn * Tn;
    const std::size_t kv0 = std::size_t(b) * Tn * ldk + kh * hd;
    const T* K = k + kv0;
    const T* V = v + kv0;
    T* dK = dk + kv0;
    T* dV = dv + kv0;
    for (int i = 0; i < Tn; ++i) {
      std::memset(dK + std::size_t(i) * ldk, 0, sizeof(T) * hd);
      std::memset(dV + std::size_t(i) * ldk, 0, sizeof(T) * hd);
    }
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const std::size_t q0 = std::size_t(b) * Tn * ldq + h * hd;
      const T* Q = q + q0;
      const T* dO = dout + q0;
      const T* P = probs + (std::size_t(b) * Hq + h) * Tn * Tn;
      for (int r0 = 0; r0 < Tn; r0 += kAttnRowBlock) {
        const int r1 = r0 + kAttnRowBlock < Tn ? r0 + kAttnRowBlock : Tn, m = r1 - r0;
        const T* Pb = P + std::size_t(r0) * Tn;
        T* dSb = dS + std::size_t(r0) * Tn;
        // dV[0:r1] += Pbᵀ·dO[r0:r1] ;  dP = dO[r0:r1]·V[0:r1]ᵀ
        gemm<T>(true, false, r1, hd, m, T(1), Pb, Tn, dO + std::size_t(r0) * ldq, ldq, T(1), dV,
                ldk);
        gemm<T>(false, true, m, r1, hd, T(1), dO + std::size_t(r0) * ldq, ldq, V, ldk, T(0), dSb,
                Tn);
        // Softmax backward, then fold in the 1/sqrt(hd) of the scores: dS = P∘(dP − Σ P∘dP)·scale.
        for (int i = r0; i < r1; ++i) {
          const T* p = P + std::size_t(i) * Tn;
          T* d = dS + std::size_t(i) * Tn;
          T dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int j = 0; j <= i; ++j) dot += p[j] * d[j];
#pragma omp simd
          for (int j = 0; j <= i; ++j) d[j] = p[j] * (d[j] - dot) * scale;
          for (int j = i + 1; j < r1; ++j) d[j] = 0;
        }
        // dQ[r0:r1] = dS·K[0:r1] ;  dK[0:r1] += dSᵀ·Q[r0:r1]
        gemm<T>(false, false, m, hd, r1, T(1), dSb, Tn, K, ldk, T(0),
                dq + q0 + std::size_t(r0) * ldq, ldq);
        gemm<T>(true, false, r1, hd, m, T(1), dSb, Tn, Q + std::size_t(r0) * ldq, ldq, T(1), dK,
                ldk);
      }
    }
  }
}

}  // namespace moe
