// RMSNorm: y = x / sqrt(mean(x²) + eps) · w, over the last dimension D.
#pragma once
#include <cmath>
#include <vector>

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
// dw is reduced over fixed chunks of kRows rows (row-major, vectorizable), whose partial sums are
// then added in chunk order: deterministic whatever the thread count, no atomics.
template <typename T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd,
                      int N, int D) {
  constexpr int kRows = 32;
  const int nchunk = (N + kRows - 1) / kRows;
  static thread_local std::vector<T> partial;  // grows once; no allocation per step after that
  if (partial.size() < std::size_t(nchunk) * D) partial.resize(std::size_t(nchunk) * D);
  T* part = partial.data();
#pragma omp parallel for schedule(static) if (N > 64)
  for (int c = 0; c < nchunk; ++c) {
    T* acc = part + std::size_t(c) * D;
    for (int i = 0; i < D; ++i) acc[i] = 0;
    const int n1 = (c + 1) * kRows < N ? (c + 1) * kRows : N;
    for (int n = c * kRows; n < n1; ++n) {
      const T* x = inp + std::size_t(n) * D;
      const T* dy = dout + std::size_t(n) * D;
      T* dx = dinp + std::size_t(n) * D;
      const T r = rstd[n];
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int i = 0; i < D; ++i) dot += double(dy[i] * w[i] * x[i]);
      const T m = T(dot * double(r) / D);
#pragma omp simd
      for (int i = 0; i < D; ++i) {
        dx[i] += r * (dy[i] * w[i] - x[i] * r * m);
        acc[i] += dy[i] * x[i] * r;
      }
    }
  }
  for (int c = 0; c < nchunk; ++c) {
    const T* acc = part + std::size_t(c) * D;
#pragma omp simd
    for (int i = 0; i < D; ++i) dw[i] += acc[i];
  }
}

}  // namespace moe
