// Causal attention with its products in bf16 (train.precision = bf16): nn/attention.h's forward
// and backward with bf16 operands and f32 accumulation; the softmax, its backward and every sum
// of products stay f32.
//
// Rounded to bf16 (round-to-nearest-even, core/half.h's f32_to_bf16):
//   forward : Q, K, V;  each row of P (the f32 softmax) before P·V
//   backward: dO, Q, K, V;  P (recomputed) before dV += Pᵀ·dO;  dS (the f32 softmax backward,
//             times 1/sqrt(hd)) before dQ = dS·K and dK += dSᵀ·Q
// Each product element is one f32 sum of exact bf16 products (kernels/gemm_bf16.h); dV and dK sum
// blocks of kAttnBf16QueryBlock query rows, block after block, head after head of the kv group.
//
// Flash-attention style, the T×T probabilities are never stored: the forward keeps per query row
// the softmax's max and 1/Σ (stats), and the backward recomputes the scores with the same
// products and the probabilities from the stats (kernels/softmax.h's softmax_row_from_stats),
// which gives the forward's bits. At the dense benchmark model's shape, writing P (16 MiB per
// layer) and reading it back twice cost more than recomputing QKᵀ in bf16 saves.
//
// Paths (the path argument; kAuto = the fastest this CPU has, as gemm_bf16_path() says):
//   avx512bf16 : fused. Per (batch, kv head) task K̂ and V̂ are packed once into the
//                microkernel's panels (gemm_bf16_avx512.cpp), Q̂'s rows are read in place and
//                dO is rounded once per head; then per block of 12 query rows the scores go
//                from the microkernel into a 12-row buffer, the softmax runs on it while it
//                is in L1, and P is rounded into the rows the microkernel reads in place for
//                P·V. The backward does the same
//                for S, dP and dQ, and reads Pᵀ and dSᵀ for dV and dK from pairs of query rows
//                interleaved while they are rounded. Nothing is packed per product: one
//                gemm_bf16 call per product (commit 9cb023e) packed both operands every time
//                and made the dense step 10% slower than f32 attention.
//   widen      : any CPU. The same roundings and recomputation, the products on the exactly
//                widened values with OpenBLAS sgemm (single-threaded calls in the task loop).
// Both paths give bits independent of the thread count (every sum has one order).
//
// Forward: out [B·T, Hq·hd] (written); stats [B, Hq, T, 2] (written, read by the backward);
// probs [B, Hq, T, T] (optional, written when not null: the forward's f32 probabilities, zeros
// above the diagonal); saved: the rounded Q̂, K̂, V̂ (attention_round_bf16 of q, k, v; a caller
// that produces q and k row by row, as RoPE does, rounds them there instead and never writes them
// in f32). Backward: dq, dk, dv (written); dout [B·T, Hq·hd]; stats and saved as the forward saw
// them: nothing else of q, k, v is read.
#pragma once
#include <cstddef>
#include <cstdint>

#include "moe/kernels/gemm_bf16.h"

namespace moe {

// Query rows per block of dV's and dK's sums (a multiple of the microkernel's 12 rows).
inline constexpr int kAttnBf16QueryBlock = 48;

// The rounded operands, read by the forward and kept for the backward (as autocast saves its
// cast inputs):
// q [B·T, Hq·hdp], k and v [B·T, Hkv·hdp] bf16, each head's hd values then a zero when hd is odd
// (hdp = attention_bf16_head_width(hd)), so every head's rows hold whole pairs.
struct AttnBf16Saved {
  const uint16_t *q = nullptr, *k = nullptr, *v = nullptr;
};
inline int attention_bf16_head_width(int hd) { return hd + (hd & 1); }

// Floats of stats for B sequences of T tokens and Hq query heads.
inline std::size_t attention_stats_size(int B, int Tn, int Hq) {
  return std::size_t(B) * Hq * Tn * 2;
}

// dst [N, H·hdp] (written) = src [N, H·hd] rounded, each head padded to hdp as AttnBf16Saved says.
// Any CPU; OpenMP over rows outside a parallel region.
void attention_round_bf16(uint16_t* dst, const float* src, int N, int H, int hd);

void attention_forward_bf16(float* out, float* stats, float* probs, const AttnBf16Saved& saved,
                            int B, int Tn, int Hq, int Hkv, int hd,
                            Bf16GemmPath path = Bf16GemmPath::kAuto);

void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const float* stats,
                             const AttnBf16Saved& saved, int B, int Tn, int Hq, int Hkv, int hd,
                             Bf16GemmPath path = Bf16GemmPath::kAuto);

}  // namespace moe
