// Row softmax and log-sum-exp: the one copy every layer calls (the MoE routers' scores and
// gates, expert choice's scores, PEER's gates, attention's rows in training and decoding), with a
// plain double reference beside them for the tests.
//
//   softmax_row:    p [n] (=) = exp(x − max x) / Σ_i exp(x_i − max x)
//   softmax_row_simd:     the same in place, with vectorised reductions (attention's rows)
//   softmax_row_backward: dx [n] (=) = p·(dp − Σ p·dp)
//   logsumexp_row:  log Σ_i exp(x_i)
//
// The sums run in a fixed order (index order; log-sum-exp's double sum in the vector order
// `omp simd` fixes at compile time), so a row gives the same bits on any thread count.
// Subtracting the maximum first keeps every exp ≤ 1: no overflow for any finite logits.
#pragma once
#include <algorithm>
#include <cmath>

#include "moe/kernels/vexp.h"

namespace moe {

// Which exp a softmax takes. kFast: vexp (vectorised; ~1-2 ulp in float, std::exp in double).
// kLibm: std::exp per element (a scalar call), what the expert-choice scores and the noisy
// gates have always used: switching them would change the bits of recorded runs.
enum class SoftmaxExp { kFast, kLibm };

// p [n] (=) softmax of x [n], n ≥ 1. p may alias x (each element is read before it is written).
template <typename T>
inline void softmax_row(T* p, const T* x, int n, SoftmaxExp exp_kind = SoftmaxExp::kFast) {
  T mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  if (exp_kind == SoftmaxExp::kFast) {
    for (int i = 0; i < n; ++i) p[i] = vexp(x[i] - mx);  // vectorised (std::exp is a call)
  } else {
    for (int i = 0; i < n; ++i) p[i] = std::exp(x[i] - mx);
  }
  T sum = 0;
  for (int i = 0; i < n; ++i) sum += p[i];
  for (int i = 0; i < n; ++i) p[i] /= sum;
}

// x [n] (in place) softmax of itself, every loop vectorised: the max and the sum as SIMD
// reductions (a fixed lane order the compiler sets, the same on every run and thread count) and
// one reciprocal. Attention's rows take it: T×T per head, far more than the routers' rows.
// stats, when given, receives {max, 1/sum}: softmax_row_from_stats rebuilds the row from them.
template <typename T>
inline void softmax_row_simd(T* x, int n, T* stats = nullptr) {
  T mx = x[0];
  // This operand order (and i from 0) is the form GCC vectorizes as a max reduction.
#pragma omp simd reduction(max : mx)
  for (int i = 0; i < n; ++i) mx = mx > x[i] ? mx : x[i];
    // Separate loops: GCC vectorizes the exp loop only without the reduction in it.
#pragma omp simd
  for (int i = 0; i < n; ++i) x[i] = vexp(x[i] - mx);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) sum += x[i];
  const T inv = T(1) / sum;
#pragma omp simd
  for (int i = 0; i < n; ++i) x[i] *= inv;
  if (stats) {
    stats[0] = mx;
    stats[1] = inv;
  }
}

// x [n] (in place, the scores softmax_row_simd saw) = the probabilities it computed, from its
// stats {max, 1/sum}: vexp(x − max)·(1/sum), the same two rounded operations on the same values,
// so the same bits (vexp is plain arithmetic; -ffp-contract=off fuses nothing). Attention's bf16
// backward recomputes P this way instead of keeping the T×T probabilities.
template <typename T>
inline void softmax_row_from_stats(T* x, int n, const T* stats) {
  const T mx = stats[0], inv = stats[1];
#pragma omp simd
  for (int i = 0; i < n; ++i) x[i] = vexp(x[i] - mx) * inv;
}

// dx [n] (=) the softmax's backward: dx = p·(dp − Σ_i p_i·dp_i), for p [n] the forward's output
// and dp [n] = d(loss)/d(p). dx may alias dp (the dot product is complete before any write).
template <typename T>
inline void softmax_row_backward(T* dx, const T* p, const T* dp, int n) {
  T dot = 0;
  for (int i = 0; i < n; ++i) dot += p[i] * dp[i];
  for (int i = 0; i < n; ++i) dx[i] = p[i] * (dp[i] - dot);
}

// log Σ_i exp(x_i) of x [n], n ≥ 1: max plus the log of a double sum of vexp(x − max).
// Float: the vectorised vexp (a scalar libm exp per logit had cost ~1 ms per step at E = 64,
// 4096 tokens); double: std::exp.
template <typename T>
inline T logsumexp_row(const T* x, int n) {
  T mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int i = 0; i < n; ++i) sum += double(vexp(T(x[i] - mx)));
  return T(double(mx) + std::log(sum));
}

// The scalar references, in double: the textbook formulas, written for clarity.
inline void softmax_reference(double* p, const double* x, int n) {
  double mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
  for (int i = 0; i < n; ++i) p[i] = std::exp(x[i] - mx) / sum;
}

inline double logsumexp_reference(const double* x, int n) {
  double mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
  return mx + std::log(sum);
}

}  // namespace moe
