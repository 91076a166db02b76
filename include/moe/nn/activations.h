// Elementwise FFN activations. SwiGLU: h = silu(g)·u. GELU: exact erf form (torch's default).
#pragma once
#include <cmath>
#include <cstddef>

#include "moe/kernels/vexp.h"

namespace moe {

// silu(g) · u = g / (1 + e^-g) · u: SwiGLU's one element, shared by both layouts below so the
// training layer and the inference engine (infer/) compute the same bits.
template <typename T>
inline T silu_mul(T g, T u) {
  return g / (T(1) + vexp(-g)) * u;
}

// out [N,H] (written) = silu(gate) · up, with gate and up side by side in gu [N,2H]
// (gate in columns 0..H-1, up in H..2H-1): the layout one GEMM against [W_gate; W_up] produces.
template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int H) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * H > 65536)
  for (int n = 0; n < N; ++n) {
    const T* g = gu + std::size_t(n) * 2 * H;
    const T* u = g + H;
    T* o = out + std::size_t(n) * H;
#pragma omp simd
    for (int i = 0; i < H; ++i) o[i] = silu_mul(g[i], u[i]);
  }
}

// h [n] (written; may alias g or u) = silu(g) · u with gate and up in separate arrays g [n],
// u [n]: the layout of the inference engine, which multiplies by W_gate and W_up separately.
template <typename T>
void swiglu_forward_split(T* h, const T* g, const T* u, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) h[i] = silu_mul(g[i], u[i]);
}

// dgu [N,2H] (written; may alias gu: each element is read before it is written) from
// dout [N,H]: d(gate) = dout·u·σ(g)·(1 + g·(1−σ(g))), d(up) = dout·silu(g).
template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int H) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * H > 65536)
  for (int n = 0; n < N; ++n) {
    const T* g = gu + std::size_t(n) * 2 * H;
    const T* u = g + H;
    const T* d = dout + std::size_t(n) * H;
    T* dg = dgu + std::size_t(n) * 2 * H;
    T* du = dg + H;
#pragma omp simd
    for (int i = 0; i < H; ++i) {
      const T gi = g[i], ui = u[i], di = d[i];
      const T s = T(1) / (T(1) + vexp(-gi));
      dg[i] = di * ui * s * (T(1) + gi * (T(1) - s));
      du[i] = di * gi * s;
    }
  }
}

// out [n] (written) = gelu(x)
template <typename T>
void gelu_forward(T* out, const T* x, std::size_t n) {
  constexpr double kInvSqrt2 = 0.70710678118654752440;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i)
    out[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(kInvSqrt2)));
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
