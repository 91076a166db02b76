// RMSNorm: y = x / sqrt(mean(x²) + eps) · w, over the last dimension D.
#pragma once
#include <cmath>
#include <cstddef>

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

// The backward reduces dw over fixed chunks of this many rows (see rmsnorm_backward).
inline constexpr int kRmsNormChunkRows = 32;

// Floats of scratch rmsnorm_backward needs for N rows of width D: one partial dw [D] per chunk.
inline std::size_t rmsnorm_backward_scratch_size(int N, int D) {
  return std::size_t((N + kRmsNormChunkRows - 1) / kRmsNormChunkRows) * std::size_t(D);
}

// dinp [N,D] (+=), dw [D] (+=), partial [rmsnorm_backward_scratch_size(N, D)] (scratch,
// overwritten); dout [N,D], inp [N,D], w [D], rstd [N].
// With x̂ = x·r:  dx = r·(dy·w − x̂·mean(dy·w·x̂)),  dw = Σ_n dy·x̂.
// dw is reduced over fixed chunks of kRmsNormChunkRows rows (row-major, vectorizable), whose
// partial sums are then added in chunk order: deterministic whatever the thread count, no
// atomics. The caller owns the scratch (the model carves it from its activation arena), so a
// training step allocates nothing here.
template <typename T>
void rmsnorm_backward(T* dinp, T* dw, T* partial, const T* dout, const T* inp, const T* w,
                      const T* rstd, int N, int D) {
  constexpr int kRows = kRmsNormChunkRows;
  const int nchunk = (N + kRows - 1) / kRows;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int c = 0; c < nchunk; ++c) {
    T* acc = partial + std::size_t(c) * D;
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
    const T* acc = partial + std::size_t(c) * D;
#pragma omp simd
    for (int i = 0; i < D; ++i) dw[i] += acc[i];
  }
}

}  // namespace moe
