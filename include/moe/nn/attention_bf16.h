// Causal attention's two products in bf16 (train.precision = bf16): nn/attention.h's forward and
// backward with bf16 operands and f32 accumulation on gemm_bf16, everything else f32 (the
// softmax and its backward, the saved probabilities, dK/dV's sums over query heads).
//
// Rounded to bf16 (round-to-nearest-even), per (batch, kv head) task, into per-thread buffers:
//   forward : Q, K, V;  P (the f32 softmax) before P·V
//   backward: dO, Q, K, V;  P before dV += Pᵀ·dO;  dS (the f32 softmax backward) before
//             dQ = dS·K and dK += dSᵀ·Q
// Shapes, causal row blocks and the order of every sum are nn/attention.h's, so the results are
// deterministic for any thread count (gemm_bf16's avx512bf16 path is). Each product element is
// one f32 sum of exact bf16 products (kernels/gemm_bf16.h).
//
// out [B·T, Hq·hd] (written), probs [B, Hq, T, T] (written, f32); q [B·T, Hq·hd], k, v
// [B·T, Hkv·hd]. Backward: dq, dk, dv written; scratch = attention_scratch_size(T) floats.
#pragma once

namespace moe {

void attention_forward_bf16(float* out, float* probs, const float* q, const float* k,
                            const float* v, int B, int Tn, int Hq, int Hkv, int hd);

void attention_backward_bf16(float* dq, float* dk, float* dv, float* scratch, const float* dout,
                             const float* probs, const float* q, const float* k, const float* v,
                             int B, int Tn, int Hq, int Hkv, int hd);

}  // namespace moe
