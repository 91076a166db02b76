// nn/linear_bf16.h: the Linear layer's three products on gemm_bf16.
#include "moe/nn/linear_bf16.h"

#include <cstddef>

#include "moe/kernels/gemm_bf16.h"

namespace moe {

void linear_forward_bf16(float* out, uint16_t* inp_b, const float* inp, const uint16_t* Wb, int N,
                         int I, int O) {
  round_to_bf16(inp_b, inp, std::size_t(N) * I);
  linear_forward_bf16_rounded(out, inp_b, Wb, N, I, O);
}

void linear_forward_bf16_rounded(float* out, const uint16_t* inp_b, const uint16_t* Wb, int N,
                                 int I, int O) {
  gemm_bf16(false, true, N, O, I, 1.f, inp_b, I, Wb, I, 0.f, out, O);  // [N,I]·[O,I]ᵀ
}

void linear_backward_bf16(float* dinp, float* dW, uint16_t* dout_b, const float* dout,
                          const uint16_t* inp_b, const uint16_t* Wb, int N, int I, int O,
                          bool accumulate_dinp) {
  round_to_bf16(dout_b, dout, std::size_t(N) * O);
  linear_backward_bf16_rounded(dinp, dW, dout_b, inp_b, Wb, N, I, O, accumulate_dinp);
}

void linear_backward_bf16_rounded(float* dinp, float* dW, const uint16_t* dout_b,
                                  const uint16_t* inp_b, const uint16_t* Wb, int N, int I, int O,
                                  bool accumulate_dinp) {
  if (dinp)  // [N,O]·[O,I]
    gemm_bf16(false, false, N, I, O, 1.f, dout_b, O, Wb, I, accumulate_dinp ? 1.f : 0.f, dinp, I);
  gemm_bf16(true, false, O, I, N, 1.f, dout_b, O, inp_b, I, 1.f, dW, I);  // [N,O]ᵀ·[N,I]
}

}  // namespace moe
