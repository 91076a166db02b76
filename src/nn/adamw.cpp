#include "moe/nn/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace moe {

namespace {

// Σ g² over g[0..n) in double with 8 independent lanes (lane j takes i ≡ j mod 8; the lanes are
// added 0..7, then the tail): a fixed order, so deterministic, and vectorisable (one serial
// chain of dependent adds was latency-bound: ~4 cycles per element).
double lane_sum_squares(const float* g, std::size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += double(g[i + j]) * double(g[i + j]);
  double s = 0;
  for (int j = 0; j < 8; ++j) s += acc[j];
  for (; i < n; ++i) s += double(g[i]) * double(g[i]);
  return s;
}

// Σ term(i) over i in [0, n), added in index order: deterministic whatever the thread count.
// The terms are computed in parallel (when n > min_parallel) a batch of kBatch at a time into a
// block on the stack, then added in order: the same sums in the same order as storing all n terms
// first, with no buffer that grows with n (so nothing allocates, and any thread may call it).
// 2048 terms (16 KiB of stack) keep the parallel regions few: a row table's ~2·10^5 rows of 1 KiB
// take ~100 of them.
template <class Term>
double ordered_sum(std::size_t n, std::size_t min_parallel, const Term& term) {
  constexpr std::size_t kBatch = 2048;
  double part[kBatch];
  double total = 0;
  for (std::size_t b0 = 0; b0 < n; b0 += kBatch) {
    const auto m = std::ptrdiff_t(std::min(kBatch, n - b0));
#pragma omp parallel for schedule(static) if (n > min_parallel)
    for (std::ptrdiff_t i = 0; i < m; ++i) part[i] = term(b0 + std::size_t(i));
    for (std::ptrdiff_t i = 0; i < m; ++i) total += part[i];
  }
  return total;
}

// The AdamW rule on p, m, v [i0, i1) (see adamw_update). Serial and inlinable: the row-lazy
// pass calls it once per ~256-float row from its own parallel loop, where a nested OpenMP
// region per row (even one that runs on one thread) cost a runtime call each time.
struct AdamStep {
  float step, inv_sqrt_bc2, shrink, b1, b2, eps;
  AdamStep(const AdamWHyper& h, bool decay, int64_t t)
      : AdamStep(h, decay, 1.0 - std::pow(double(h.beta1), double(t)),
                 1.0 - std::pow(double(h.beta2), double(t))) {}
  // From the bias corrections bc1 = 1 − β1^t, bc2 = 1 − β2^t.
  AdamStep(const AdamWHyper& h, bool decay, double bc1, double bc2) {
    // torch: p -= lr·wd·p; m,v updated; p -= (lr/bc1) · m / (sqrt(v)/sqrt(bc2) + eps)
    step = float(h.lr / bc1);
    inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
    shrink = decay ? 1.f - h.lr * h.weight_decay : 1.f;
    b1 = h.beta1;
    b2 = h.beta2;
    eps = h.eps;
  }
  void apply(float* p, float* m, float* v, const float* g, std::size_t i0, std::size_t i1) const {
    for (std::size_t i = i0; i < i1; ++i) {
      const float gi = g[i];
      const float mi = b1 * m[i] + (1.f - b1) * gi;
      const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * shrink - step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
    }
  }
};

// One row of the row-lazy rule (no decay, the row's own step count). With want_sq, returns the
// row's Σ g² as sum_squares_rows forms it (else 0). bias: when given, the bias corrections by
// step count (BiasCorrections), else std::pow per row.
double update_row(float* p, float* m, float* v, const float* g, std::size_t row_len, int32_t& steps,
                  const AdamWHyper& h, const BiasCorrections* bias, bool want_sq) {
  const double sq = want_sq ? lane_sum_squares(g, row_len) : 0.0;
  const int64_t t = ++steps;
  if (bias && t < int64_t(bias->bc1.size()))
    AdamStep(h, false, bias->bc1[t], bias->bc2[t]).apply(p, m, v, g, 0, row_len);
  else
    AdamStep(h, false, t).apply(p, m, v, g, 0, row_len);
  return sq;
}

}  // namespace

void BiasCorrections::cover(int64_t t_max, float beta1, float beta2) {
  if (beta1 != b1 || beta2 != b2) {
    bc1.clear();
    bc2.clear();
    b1 = beta1;
    b2 = beta2;
  }
  // The expressions AdamStep would evaluate for step count t: the same bits.
  for (int64_t t = int64_t(bc1.size()); t <= t_max; ++t) {
    bc1.push_back(1.0 - std::pow(double(beta1), double(t)));
    bc2.push_back(1.0 - std::pow(double(beta2), double(t)));
  }
}

double SparseRowRule::apply(int64_t r, const float* g) const {
  const std::size_t o = std::size_t(r) * row_len;
  return update_row(p + o, m + o, v + o, g, row_len, steps[r], h, bias, true);
}

void adamw_update(float* p, float* m, float* v, const float* g, std::size_t n, const AdamWHyper& h,
                  bool decay, int64_t t) {
  const AdamStep a(h, decay, t);
  if (n <= 32768) {
    a.apply(p, m, v, g, 0, n);
    return;
  }
  // Fixed blocks: each element's update is independent, so this is only about speed.
  constexpr std::size_t kBlock = 4096;
  const std::size_t nb = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (std::size_t b = 0; b < nb; ++b)
    a.apply(p, m, v, g, b * kBlock, std::min(n, (b + 1) * kBlock));
}

double lr_schedule(int64_t s, double lr, double min_lr, int64_t warmup, int64_t total) {
  if (s < warmup) return lr * double(s + 1) / double(warmup);
  const int64_t span = total - warmup > 1 ? total - warmup : 1;
  double progress = double(s - warmup) / double(span);
  if (progress > 1) progress = 1;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

double sum_squares(const float* g, std::size_t n) {
  // Fixed blocks, partial sums added in block order: the result does not depend on the thread
  // count.
  constexpr std::size_t kBlock = 4096;
  const std::size_t nb = (n + kBlock - 1) / kBlock;
  return ordered_sum(nb, 8, [&](std::size_t b) {
    const std::size_t e = (b + 1) * kBlock < n ? (b + 1) * kBlock : n;
    return lane_sum_squares(g + b * kBlock, e - b * kBlock);
  });
}

double sum_squares_rows(const float* g, std::size_t row_len, const int32_t* rows,
                        std::size_t n_rows) {
  // One partial per row, added in the given row order: independent of the thread count.
  return ordered_sum(n_rows, 64, [&](std::size_t i) {
    return lane_sum_squares(g + std::size_t(rows[i]) * row_len, row_len);
  });
}

void adamw_update_rows(float* p, float* m, float* v, float* g, std::size_t row_len,
                       const int32_t* rows, std::size_t n_rows, int32_t* steps, const AdamWHyper& h,
                       const BiasCorrections* bias, double* sum_sq) {
  // Rows are independent: parallel over them, each row the serial rule with its own step count.
  // (Software prefetch of the next rows was tried: no gain measurable over this VM's noise.)
  auto update = [&](std::size_t i) {
    const int32_t r = rows[i];
    const std::size_t o = std::size_t(r) * row_len;
    const double sq =
        update_row(p + o, m + o, v + o, g + o, row_len, steps[r], h, bias, sum_sq != nullptr);
    std::memset(g + o, 0, row_len * sizeof(float));  // in cache now; zero_grad would reload it
    return sq;
  };
  if (sum_sq) {
    *sum_sq = ordered_sum(n_rows, 64, update);  // each row's Σ g², added in row order
    return;
  }
  const auto n = std::ptrdiff_t(n_rows);
#pragma omp parallel for schedule(static) if (n > 64)
  for (std::ptrdiff_t i = 0; i < n; ++i) update(std::size_t(i));
}

}  // namespace moe
