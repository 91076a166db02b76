// BatchNorm over the rows of a batch, per feature f of D:
//   y = (x − μ_f)·rstd_f·γ_f + β_f,   rstd_f = 1 / sqrt(σ²_f + eps).
// Training: μ, σ² (biased) are the batch's, and the running statistics move toward them as in
// torch.nn.BatchNorm1d (momentum; the running variance unbiased, σ²·N/(N − 1)). Evaluation: μ, σ²
// are the running statistics.
// Data parallel: with a communicator of P > 1 ranks, the N rows are this rank's slice of a global
// batch of N·P rows; the per-rank sums are all-reduced (forward: Σx, then Σ(x − μ)²; backward:
// Σd, Σd·x̂), so the P ranks compute the function one process would compute on the whole batch.
// Deterministic: each feature's sums run over the rows in order, in double, one thread per
// contiguous range of features (by_ranges), so the thread count does not change the bits.
#pragma once
#include <cmath>
#include <cstddef>

#include "moe/core/by_ranges.h"
#include "moe/dist/communicator.h"

namespace moe {

struct BatchNormOptions {
  double eps = 1e-5;
  double momentum = 0.1;  // weight of the new batch in the running statistics
  // The ranks of a data-parallel job sharing one global batch; null or size 1: this process.
  Communicator* comm = nullptr;
};

// Ranks sharing the batch statistics of a training step (1 in evaluation and without a comm).
inline int batchnorm_ranks(const BatchNormOptions& o, bool training) {
  return training && o.comm && o.comm->size() > 1 ? o.comm->size() : 1;
}

// out [N,D] (written); mean, rstd [D] (written, saved for backward); running_mean, running_var
// [D] (training: updated, may be null to leave none; evaluation: read); inp [N,D]; w, b [D];
// sums: [2, D] doubles of scratch.
template <typename T>
void batchnorm_forward(T* out, T* mean, T* rstd, T* running_mean, T* running_var, const T* inp,
                       const T* w, const T* b, int N, int D, bool training,
                       const BatchNormOptions& o, double* sums) {
  const int P = batchnorm_ranks(o, training);
  const double Ng = double(N) * P;  // rows in the global batch
  double* ms = sums;                // Σx, then μ
  double* ss = sums + D;            // Σ(x − μ)²
  for (int f = 0; f < 2 * D; ++f) sums[f] = 0.0;
  if (training) {
    // Two passes (the mean, then the centred squares): no cancellation in E[x²] − E[x]².
    by_ranges(D, 64, [&](int f0, int f1) {
      for (int n = 0; n < N; ++n)
        for (int f = f0; f < f1; ++f) ms[f] += double(inp[std::size_t(n) * D + f]);
    });
    if (P > 1) o.comm->allreduce_sum(ms, D);
    for (int f = 0; f < D; ++f) ms[f] /= Ng;
    by_ranges(D, 64, [&](int f0, int f1) {
      for (int n = 0; n < N; ++n)
        for (int f = f0; f < f1; ++f) {
          const double d = double(inp[std::size_t(n) * D + f]) - ms[f];
          ss[f] += d * d;
        }
    });
    if (P > 1) o.comm->allreduce_sum(ss, D);
  }
  for (int f = 0; f < D; ++f) {
    double m = 0, v = 0;
    if (training) {
      m = ms[f];
      v = ss[f] / Ng;
      if (running_mean) {
        const double mo = o.momentum;
        running_mean[f] = T((1 - mo) * double(running_mean[f]) + mo * m);
        running_var[f] =
            T((1 - mo) * double(running_var[f]) + mo * (Ng > 1 ? v * Ng / (Ng - 1) : v));
      }
    } else {
      m = double(running_mean[f]);
      v = double(running_var[f]);
    }
    mean[f] = T(m);
    rstd[f] = T(1.0 / std::sqrt(v + o.eps));
  }
  // Row by row (feature-major loops over [N, D] strode 4·D bytes per element).
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* __restrict x = inp + std::size_t(n) * D;
    T* __restrict y = out + std::size_t(n) * D;
    const T* __restrict mu = mean;
    const T* __restrict rs = rstd;
    const T* __restrict gm = w;
    const T* __restrict bt = b;
#pragma omp simd
    for (int f = 0; f < D; ++f) y[f] = (x[f] - mu[f]) * rs[f] * gm[f] + bt[f];
  }
}

// After a training forward. dinp [N,D] (written; may be dout itself: in place); dw, db [D] (+=);
// dout, inp [N,D]; w, mean, rstd [D]; sums: [2, D] doubles and wb: [2, D] of T, scratch.
// With d = dy·γ and x̂ = (x − μ)·rstd, over the global batch of Ng rows:
//   dx = rstd/Ng·(Ng·d − Σd − x̂·Σd·x̂),  dγ = Σ dy·x̂,  dβ = Σ dy.
// (The loss scale already holds each rank's 1/P share, so the all-reduced sums are the global
// batch's.)
template <typename T>
void batchnorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                        const T* mean, const T* rstd, int N, int D, const BatchNormOptions& o,
                        double* sums, T* wb) {
  const int P = batchnorm_ranks(o, true);
  const double Ng = double(N) * P;
  double* sd = sums;       // Σd per feature
  double* sdx = sums + D;  // Σd·x̂
  for (int f = 0; f < 2 * D; ++f) sums[f] = 0.0;
  // Row by row, each feature's sums over n in increasing order (one thread per feature range).
  // dγ, dβ are summed in scratch the compiler can see is not aliased (through dw it had to
  // assume every store might change inp, dout or the statistics, and ran the loop one element
  // at a time).
  by_ranges(D, 64, [&](int f0, int f1) {
    const int nf = f1 - f0;
    T* __restrict ga = wb + f0;
    T* __restrict ba = wb + D + f0;
    for (int f = 0; f < nf; ++f) {
      ga[f] = dw[f0 + f];
      ba[f] = db[f0 + f];
    }
    const T* __restrict mu = mean + f0;
    const T* __restrict rs = rstd + f0;
    const T* __restrict gm = w + f0;
    double* __restrict s1 = sd + f0;
    double* __restrict s2 = sdx + f0;
    for (int n = 0; n < N; ++n) {
      const T* __restrict x = inp + std::size_t(n) * D + f0;
      const T* __restrict dy = dout + std::size_t(n) * D + f0;
#pragma omp simd
      for (int f = 0; f < nf; ++f) {
        const double xh = double((x[f] - mu[f]) * rs[f]);
        ga[f] += dy[f] * T(xh);
        ba[f] += dy[f];
        s1[f] += double(dy[f]) * double(gm[f]);
        s2[f] += double(dy[f]) * double(gm[f]) * xh;
      }
    }
    for (int f = 0; f < nf; ++f) {
      dw[f0 + f] = ga[f];
      db[f0 + f] = ba[f];
    }
  });
  if (P > 1) o.comm->allreduce_sum(sums, 2 * std::size_t(D));
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* __restrict x = inp + std::size_t(n) * D;
    const T* dy = dout + std::size_t(n) * D;  // may be dx: each element read, then written
    T* dx = dinp + std::size_t(n) * D;
    const T* __restrict mu = mean;
    const T* __restrict rs = rstd;
    const T* __restrict gm = w;
#pragma omp simd
    for (int f = 0; f < D; ++f) {
      const double xh = double((x[f] - mu[f]) * rs[f]);
      const double d = double(dy[f]) * double(gm[f]);
      dx[f] = T(double(rs[f]) / Ng * (Ng * d - sd[f] - xh * sdx[f]));
    }
  }
}

}  // namespace moe
