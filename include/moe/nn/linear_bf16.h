// The Linear layer's products in bf16 (train.precision = bf16): the same shapes and +=/= rules as
// nn/linear.h, with bf16 operands and f32 accumulation (kernels/gemm_bf16.h). The f32 master
// weight W stays the caller's; its bf16 shadow Wb = round_to_bf16(W) is made by the caller once
// per optimizer step (not per use), so every product of a step sees the same rounded weight.
// Activations are rounded here, per product, into caller-owned bf16 buffers; the forward keeps
// bf16(inp) for the backward's weight gradient, as torch.autocast saves its cast input.
//
//   forward : inp_b [N,I] (=) = bf16(inp);   out [N,O] (=) = inp_b · Wbᵀ
//   backward: dout_b [N,O] (=) = bf16(dout)
//             dinp [N,I] (+= if accumulate_dinp, else =) = dout_b · Wb    (dinp may be null)
//             dW [O,I] (+=, f32) = dout_bᵀ · inp_b
// Each output element is one f32 sum of exact bf16 products: within γ_{K+3} of the exact result
// on the rounded operands (K = I, O and N for the three products; kernels/gemm_bf16.h).
// Deterministic for any thread count on the AVX512-BF16 path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "moe/kernels/gemm_bf16.h"

namespace moe {

void linear_forward_bf16(float* out, uint16_t* inp_b, const float* inp, const uint16_t* Wb, int N,
                         int I, int O);

void linear_backward_bf16(float* dinp, float* dW, uint16_t* dout_b, const float* dout,
                          const uint16_t* inp_b, const uint16_t* Wb, int N, int I, int O,
                          bool accumulate_dinp);

// The same products on operands the caller has rounded already (inp_b, dout_b): a layer that
// produces its activation row by row rounds each row while it is in L1 and never writes the f32
// activation (ffn/dense.cpp), instead of a pass over it here.
void linear_forward_bf16_rounded(float* out, const uint16_t* inp_b, const uint16_t* Wb, int N,
                                 int I, int O);
void linear_backward_bf16_rounded(float* dinp, float* dW, const uint16_t* dout_b,
                                  const uint16_t* inp_b, const uint16_t* Wb, int N, int I, int O,
                                  bool accumulate_dinp);

// dst [N, w] bf16 (written): row n computed by row_fn(float* row, int n) into a per-thread f32
// row, then rounded (round_to_bf16) while it is in L1. For an activation read only by its
// rounding: the f32 activation is never written and read back by a separate pass (the FFN's
// hidden and d(gate|up), RoPE's q and k feeding bf16 attention). The same bits either way.
template <typename F>
void rounded_rows(uint16_t* dst, int N, int w, const F& row_fn) {
#pragma omp parallel if (std::size_t(N) * w > 65536)
  {
    thread_local std::vector<float> row;  // grown once, kept
    if (row.size() < std::size_t(w)) row.resize(std::size_t(w));
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n) {
      row_fn(row.data(), n);
      round_to_bf16(dst + std::size_t(n) * w, row.data(), std::size_t(w));
    }
  }
}

}  // namespace moe
