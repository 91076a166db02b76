// Linear layer without bias, weights stored [out, in] like torch.nn.Linear (so checkpoints map
// one to one): y = x · Wᵀ.
#pragma once
#include "moe/kernels/gemm.h"

namespace moe {

// out [N,O] (written) = inp [N,I] · W[O,I]ᵀ
template <typename T>
void linear_forward(T* out, const T* inp, const T* W, int N, int I, int O) {
  gemm<T>(false, true, N, O, I, T(1), inp, I, W, I, T(0), out, O);
}

// dinp [N,I] (+= if accumulate_dinp, else =) = dout [N,O] · W[O,I];  dW [O,I] += doutᵀ · inp.
// dinp may be null (e.g. the first layer's input is an embedding lookup handled elsewhere).
template <typename T>
void linear_backward(T* dinp, T* dW, const T* dout, const T* inp, const T* W, int N, int I, int O,
                     bool accumulate_dinp) {
  if (dinp)
    gemm<T>(false, false, N, I, O, T(1), dout, O, W, I, T(accumulate_dinp ? 1 : 0), dinp, I);
  gemm<T>(true, false, O, I, N, T(1), dout, O, inp, I, T(1), dW, I);
}

}  // namespace moe
