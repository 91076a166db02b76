// Elementwise FFN activations. SwiGLU: h = silu(g)·u. GELU: exact erf form (torch's default).
#pragma once
#include <cmath>
#include <cstddef>

#include "moe/kernels/vexp.h"

namespace moe {

// out [n] (written) = silu(gate) · up
template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) {
    const T g = gate[i];
    out[i] = g / (T(1) + vexp(-g)) * up[i];
  }
}

// dgate, dup [n] (written; may alias gate / up: each element is read before it is written).
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) {
    const T g = gate[i], u = up[i], d = dout[i];
    const T s = T(1) / (T(1) + vexp(-g));
    const T silu = g * s;
    dgate[i] = d * u * s * (T(1) + g * (T(1) - s));
    dup[i] = d * silu;
  }
}

// out [n] (written) = gelu(x)
template <typename T>
void gelu_forward(T* out, const T* x, std::size_t n) {
  constexpr double kInvSqrt2 = 0.70710678118654752440;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) out[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(kInvSqrt2)));
}

// dx [n] (written; may alias x).
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, std::size_t n) {
  constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) {
    const T v = x[i];
    const T cdf = T(0.5) * (T(1) + std::erf(v * T(kInvSqrt2)));
    const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
    dx[i] = dout[i] * (cdf + v * pdf);
  }
}

}  // namespace moe
