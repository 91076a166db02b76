// LayerNorm over the last dimension D, with one affine per group: the input is [N, G, D], each
// row of D is normalised on its own, and group g's rows use w[g], b[g] (PEER's per-head query
// norm; G = 1 is the usual LayerNorm):
//   y = (x − μ)·rstd·γ + β,   μ = mean(x),  rstd = 1 / sqrt(mean((x − μ)²) + eps).
// The statistics are summed in double, two passes (no cancellation in E[x²] − E[x]²). Rows run
// one after the other in order, so dγ, dβ (summed over rows) have one fixed order: deterministic.
#pragma once
#include <cmath>
#include <cstddef>

namespace moe {

// out [N,G,D] (written); mean, rstd [N·G] (written, saved for backward); inp [N,G,D]; w, b [G,D].
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N, int G,
                       int D, double eps) {
  for (int r = 0; r < N * G; ++r) {
    const T* x = inp + std::size_t(r) * D;
    T* y = out + std::size_t(r) * D;
    double m = 0, v = 0;
    for (int i = 0; i < D; ++i) m += double(x[i]);
    m /= D;
    for (int i = 0; i < D; ++i) v += (double(x[i]) - m) * (double(x[i]) - m);
    v /= D;
    mean[r] = T(m);
    rstd[r] = T(1.0 / std::sqrt(v + eps));
    const T* gm = w + std::size_t(r % G) * D;
    const T* bt = b + std::size_t(r % G) * D;
    for (int i = 0; i < D; ++i) y[i] = (x[i] - mean[r]) * rstd[r] * gm[i] + bt[i];
  }
}

// dinp [N,G,D] (written; may be dout itself: in place); dw, db [G,D] (+=); dout, inp [N,G,D];
// w [G,D]; mean, rstd [N·G]. With d = dy·γ and x̂ = (x − μ)·rstd, per row:
//   dx = rstd/D·(D·d − Σd − x̂·Σd·x̂),  dγ += dy·x̂,  dβ += dy.
template <typename T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                        const T* mean, const T* rstd, int N, int G, int D) {
  for (int r = 0; r < N * G; ++r) {
    const std::size_t row = std::size_t(r) * D;
    const std::size_t f0 = std::size_t(r % G) * D;
    double sd = 0, sdx = 0;
    for (int i = 0; i < D; ++i) {
      const double xh = double((inp[row + i] - mean[r]) * rstd[r]);
      const double d = double(dout[row + i]) * double(w[f0 + i]);
      sd += d;
      sdx += d * xh;
      dw[f0 + i] += dout[row + i] * T(xh);
      db[f0 + i] += dout[row + i];
    }
    for (int i = 0; i < D; ++i) {  // dout[row + i] read before dinp[row + i] is written
      const double xh = double((inp[row + i] - mean[r]) * rstd[r]);
      const double d = double(dout[row + i]) * double(w[f0 + i]);
      dinp[row + i] = T(double(rstd[r]) / D * (D * d - sd - xh * sdx));
    }
  }
}

}  // namespace moe
