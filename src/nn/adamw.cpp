#include "moe/nn/adamw.h"

#include <cmath>
#include <vector>

namespace moe {

void adamw_update(float* p, float* m, float* v, const float* g, std::size_t n, const AdamWHyper& h,
                  bool decay, int64_t t) {
  const double bc1 = 1.0 - std::pow(double(h.beta1), double(t));
  const double bc2 = 1.0 - std::pow(double(h.beta2), double(t));
  // torch: p -= lr·wd·p; m,v updated; p -= (lr/bc1) · m / (sqrt(v)/sqrt(bc2) + eps)
  const float step = float(h.lr / bc1);
  const float inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  const float shrink = decay ? 1.f - h.lr * h.weight_decay : 1.f;
  const float b1 = h.beta1, b2 = h.beta2, eps = h.eps;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (std::size_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + (1.f - b1) * gi;
    const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * shrink - step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

double lr_schedule(int64_t s, double lr, double min_lr, int64_t warmup, int64_t total) {
  if (s < warmup) return lr * double(s + 1) / double(warmup);
  const int64_t span = total - warmup > 1 ? total - warmup : 1;
  double progress = double(s - warmup) / double(span);
  if (progress > 1) progress = 1;
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

double sum_squares(const float* g, std::size_t n) {
  // Fixed blocks, partial sums stored per block and added in block order: the result does not
  // depend on the thread count. The partials buffer only grows (no allocation per step).
  constexpr std::size_t kBlock = 4096;
  const std::size_t nb = (n + kBlock - 1) / kBlock;
  static thread_local std::vector<double> partial;
  if (partial.size() < nb) partial.resize(nb);
  double* part = partial.data();
#pragma omp parallel for schedule(static) if (nb > 8)
  for (std::size_t b = 0; b < nb; ++b) {
    double s = 0;
    const std::size_t e = (b + 1) * kBlock < n ? (b + 1) * kBlock : n;
    for (std::size_t i = b * kBlock; i < e; ++i) s += double(g[i]) * double(g[i]);
    part[b] = s;
  }
  double total = 0;
  for (std::size_t b = 0; b < nb; ++b) total += part[b];
  return total;
}

}  // namespace moe
