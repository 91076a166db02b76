#include "moe/ffn/peer/peer_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "moe/core/by_ranges.h"
#include "moe/core/error.h"
#include "moe/kernels/gemm.h"
#include "moe/nn/batchnorm.h"
#include "moe/nn/layernorm.h"

namespace moe {

namespace {

// z [N, D] (written) = x [N, C]·W_qᵀ + b_q; wq [D, C], bq [D].
template <typename T>
void query_forward(T* z, const T* x, const T* wq, const T* bq, int N, int C, int D) {
  gemm<T>(false, true, N, D, C, T(1), x, C, wq, C, T(0), z, D);
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < D; ++f) z[std::size_t(n) * D + f] += bq[f];
}

// dwq [D, C], dbq [D], dx [N, C] (+=); dz [N, D], x [N, C], wq [D, C]. dbq's sums run over n in
// order, one thread per range of features: deterministic.
template <typename T>
void query_backward(T* dx, T* dwq, T* dbq, const T* dz, const T* x, const T* wq, int N, int C,
                    int D) {
  gemm<T>(true, false, D, C, N, T(1), dz, D, x, C, T(1), dwq, C);
  by_ranges(D, 64, [&](int f0, int f1) {
    for (int n = 0; n < N; ++n)
      for (int f = f0; f < f1; ++f) dbq[f] += dz[std::size_t(n) * D + f];
  });
  gemm<T>(false, false, N, C, D, T(1), dz, D, wq, C, T(1), dx, C);
}

}  // namespace

template <typename T>
PeerLayer<T>::PeerLayer(const PeerSpec& s)
    : spec_(s), retrieval_(s.S, s.d_key, s.k), experts_(s.C, s.heads, s.k, s.experts(), s.gelu) {}

template <typename T>
void PeerLayer<T>::bind(Arena& a, int max_tokens) {
  const std::size_t N = max_tokens, D = std::size_t(spec_.heads) * spec_.d_key, R = N * spec_.heads,
                    A = R * spec_.k;
  max_tokens_ = max_tokens;
  query_ = a.take<T>(N * D);
  query_normed_ = a.take<T>(N * D);
  norm_mean_ = a.take<T>(std::max(D, R));
  norm_rstd_ = a.take<T>(std::max(D, R));
  expert_ids_ = a.take<int32_t>(A);
  scores_ = a.take<T>(A);
  gates_ = a.take<T>(A);
  dgate_ = a.take<T>(A);
  dquery_ = a.take<T>(N * D);
  bn_sums_ = a.take<double>(2 * D);
  bn_affine_grad_ = a.take<T>(2 * D);
  retrieval_.bind(a, int(R));
  experts_.bind(a, max_tokens);
}

template <typename T>
void PeerLayer<T>::forward(T* y, const T* x, const PeerParams<T>& p, int N, bool training) {
  MOE_CHECK(N <= max_tokens_, "PEER forward with {} tokens, bound for {}", N, max_tokens_);
  tokens_ = N;
  training_ = training;
  const int C = spec_.C, D = spec_.heads * spec_.d_key;
  query_forward(query_, x, p.wq, p.bq, N, C, D);
  query_norm_forward(p, N, training);
  retrieval_.forward(expert_ids_, scores_, gates_, query_normed_, p.keys1, p.keys2,
                     N * spec_.heads);
  experts_.forward(y, x, p.u, p.v, expert_ids_, gates_, N);
}

template <typename T>
void PeerLayer<T>::backward(T* dx, const PeerGrads<T>& g, const T* dy, const T* x,
                            const PeerParams<T>& p) {
  MOE_CHECK(training_ || spec_.qnorm != QueryNorm::kBatch,
            "PEER backward after an evaluation-mode forward with batch norm");
  const int N = tokens_, C = spec_.C, D = spec_.heads * spec_.d_key;
  experts_.backward(dx, dgate_, {g.u, g.v, g.u_rule, g.v_rule}, dy, x, p.u, p.v, expert_ids_,
                    gates_, N);
  retrieval_.backward(dquery_, g.keys1, g.keys2, dgate_, gates_, expert_ids_, query_normed_,
                      p.keys1, p.keys2, N * spec_.heads);
  query_norm_backward(g, p, N);
  query_backward(dx, g.wq, g.bq, dquery_, x, p.wq, N, C, D);
}

// query_normed_ [N, D] (written) = norm(query_).
template <typename T>
void PeerLayer<T>::query_norm_forward(const PeerParams<T>& p, int N, bool training) {
  const int h = spec_.heads, dk = spec_.d_key, D = h * dk;
  switch (spec_.qnorm) {
    case QueryNorm::kBatch:
      batchnorm_forward(query_normed_, norm_mean_, norm_rstd_, p.running_mean, p.running_var,
                        query_, p.gamma, p.beta, N, D, training, batchnorm_options(), bn_sums_);
      break;
    case QueryNorm::kLayer:
      layernorm_forward(query_normed_, norm_mean_, norm_rstd_, query_, p.gamma, p.beta, N, h, dk,
                        spec_.bn_eps);
      break;
    case QueryNorm::kNone:
      std::memcpy(query_normed_, query_, sizeof(T) * std::size_t(N) * D);
      break;
  }
}

// dquery_ [N, D]: in, d(normed query); out, d(query) (in place). gamma, beta grads (+=).
template <typename T>
void PeerLayer<T>::query_norm_backward(const PeerGrads<T>& g, const PeerParams<T>& p, int N) {
  const int h = spec_.heads, dk = spec_.d_key, D = h * dk;
  switch (spec_.qnorm) {
    case QueryNorm::kBatch:
      batchnorm_backward(dquery_, g.gamma, g.beta, dquery_, query_, p.gamma, norm_mean_, norm_rstd_,
                         N, D, batchnorm_options(), bn_sums_, bn_affine_grad_);
      break;
    case QueryNorm::kLayer:
      layernorm_backward(dquery_, g.gamma, g.beta, dquery_, query_, p.gamma, norm_mean_, norm_rstd_,
                         N, h, dk);
      break;
    case QueryNorm::kNone:
      break;
  }
}

UsageStats usage_stats(const std::vector<double>& z) {
  UsageStats u;
  double total = 0;
  for (double v : z) total += v;
  const int64_t used = std::count_if(z.begin(), z.end(), [](double v) { return v > 0; });
  if (z.empty() || total <= 0) return u;
  u.usage = double(used) / z.size();
  double s = 0;
  for (double v : z)
    if (v > 0) s += (v / total) * std::log(v / total);
  u.kl = std::log(double(z.size())) + s;
  u.effective = std::exp(-u.kl);
  return u;
}

template class PeerLayer<float>;
template class PeerLayer<double>;

}  // namespace moe
