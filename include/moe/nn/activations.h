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

// One row: o [H] (written) = silu(g) · u for g, u [H].
template <typename T>
inline void swiglu_forward_row(T* o, const T* g, const T* u, int H) {
#pragma omp simd
  for (int i = 0; i < H; ++i) o[i] = silu_mul(g[i], u[i]);
}

// out [N,H] (written) = silu(gate) · up, with gate and up side by side in gu [N,2H]
// (gate in columns 0..H-1, up in H..2H-1): the layout one GEMM against [W_gate; W_up] produces.
template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int H) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * H > 65536)
  for (int n = 0; n < N; ++n) {
    const T* g = gu + std::size_t(n) * 2 * H;
    swiglu_forward_row(out + std::size_t(n) * H, g, g + H, H);
  }
}

// h [n] (written; may alias g or u) = silu(g) · u with gate and up in separate arrays g [n],
// u [n]: the layout of the inference engine, which multiplies by W_gate and W_up separately.
template <typename T>
void swiglu_forward_split(T* h, const T* g, const T* u, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) h[i] = silu_mul(g[i], u[i]);
}

// One row: dg, du [H] (written; may alias g, u: each element is read before it is written)
// from d [H]: d(gate) = d·u·σ(g)·(1 + g·(1−σ(g))), d(up) = d·silu(g).
template <typename T>
inline void swiglu_backward_row(T* dg, T* du, const T* d, const T* g, const T* u, int H) {
#pragma omp simd
  for (int i = 0; i < H; ++i) {
    const T gi = g[i], ui = u[i], di = d[i];
    const T s = T(1) / (T(1) + vexp(-gi));
    dg[i] = di * ui * s * (T(1) + gi * (T(1) - s));
    du[i] = di * gi * s;
  }
}

// dgu [N,2H] (written; may alias gu) from dout [N,H], row by row as swiglu_backward_row.
template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int H) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * H > 65536)
  for (int n = 0; n < N; ++n) {
    const T* g = gu + std::size_t(n) * 2 * H;
    T* dg = dgu + std::size_t(n) * 2 * H;
    swiglu_backward_row(dg, dg + H, dout + std::size_t(n) * H, g, g + H, H);
  }
}

// gelu(x) and its derivative times dout: one element each.
template <typename T>
inline T gelu(T x) {
  constexpr double kInvSqrt2 = 0.70710678118654752440;
  return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
}
template <typename T>
inline T gelu_grad(T dout, T v) {
  constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
  const T cdf = T(0.5) * (T(1) + std::erf(v * T(kInvSqrt2)));
  const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
  return dout * (cdf + v * pdf);
}

// out [n] (written) = gelu(x)
template <typename T>
void gelu_forward(T* out, const T* x, std::size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) out[i] = gelu(x[i]);
}

// dx [n] (written; may alias x).
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, std::size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) dx[i] = gelu_grad(dout[i], x[i]);
}

}  // namespace moe
