// RMSNorm: y = x / sqrt(mean(x²) + eps) · w, over the last dimension D.
#pragma once
#include <cmath>

namespace moe {

// out [N,D] (written), rstd [N] (saved for backward); inp [N,D], w [D].
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int D, T eps) {
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* x = inp + std::size_t(n) * D;
    T* y = out + std::size_t(n) * D;
    // Accumulate in double for float too: D is small, and it makes the statistic exact enough
    // that the fast path and the reference agree to the last bits the test can see.
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += double(x[i]) * double(x[i]);
    const T r = T(1.0 / std::sqrt(ss / D + double(eps)));
    rstd[n] = r;
    for (int i = 0; i < D; ++i) y[i] = x[i] * r * w[i];
  }
}

// dinp [N,D] (+=), dw [D] (+=); dout [N,D], inp [N,D], w [D], rstd [N].
// With x̂ = x·r:  dx = r·(dy·w − x̂·mean(dy·w·x̂)),  dw = Σ_n dy·x̂.
template <typename T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd,
                      int N, int D) {
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* x = inp + std::size_t(n) * D;
    const T* dy = dout + std::size_t(n) * D;
    T* dx = dinp + std::size_t(n) * D;
    const T r = rstd[n];
    double dot = 0;
    for (int i = 0; i < D; ++i) dot += double(dy[i]) * double(w[i]) * double(x[i]) * double(r);
    const T m = T(dot / D);
    for (int i = 0; i < D; ++i) dx[i] += r * (dy[i] * w[i] - x[i] * r * m);
  }
  // dw: reduce over rows in a fixed order per column (deterministic, no atomics).
#pragma omp parallel for schedule(static) if (N * D > 65536)
  for (int i = 0; i < D; ++i) {
    T acc = 0;
    for (int n = 0; n < N; ++n)
      acc += dout[std::size_t(n) * D + i] * inp[std::size_t(n) * D + i] * rstd[n];
    dw[i] += acc;
  }
}

}  // namespace moe
