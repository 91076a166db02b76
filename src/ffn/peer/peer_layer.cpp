#include "moe/ffn/peer/peer_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "moe/core/by_ranges.h"
#include "moe/core/error.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/nn/batchnorm.h"
#include "moe/nn/layernorm.h"
#include "moe/nn/linear_bf16.h"

namespace moe {

namespace {

// z [N, D] += b_q [D].
template <typename T>
void add_bias(T* z, const T* bq, int N, int D) {
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < D; ++f) z[std::size_t(n) * D + f] += bq[f];
}

// dbq [D] += Σ_n dz [N, D]: the sums run over n in order, one thread per range of features
// (deterministic).
template <typename T>
void bias_backward(T* dbq, const T* dz, int N, int D) {
  by_ranges(D, 64, [&](int f0, int f1) {
    for (int n = 0; n < N; ++n)
      for (int f = f0; f < f1; ++f) dbq[f] += dz[std::size_t(n) * D + f];
  });
}

// z [N, D] (written) = x [N, C]·W_qᵀ + b_q; wq [D, C], bq [D].
template <typename T>
void query_forward(T* z, const T* x, const T* wq, const T* bq, int N, int C, int D) {
  gemm<T>(false, true, N, D, C, T(1), x, C, wq, C, T(0), z, D);
  add_bias(z, bq, N, D);
}

// dwq [D, C], dbq [D], dx [N, C] (+=); dz [N, D], x [N, C], wq [D, C].
template <typename T>
void query_backward(T* dx, T* dwq, T* dbq, const T* dz, const T* x, const T* wq, int N, int C,
                    int D) {
  gemm<T>(true, false, D, C, N, T(1), dz, D, x, C, T(1), dwq, C);
  bias_backward(dbq, dz, N, D);
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
void PeerLayer<T>::bind_bf16(Arena& a) {
  MOE_CHECK((std::is_same_v<T, float>), "PEER: bf16 products need float");
  MOE_CHECK(max_tokens_ > 0, "PEER: bind_bf16 before bind");
  const std::size_t N = max_tokens_, D = std::size_t(spec_.heads) * spec_.d_key, C = spec_.C;
  wq_b_ = a.take<uint16_t>(D * C);
  x_b_ = a.take<uint16_t>(N * C);
  dquery_b_ = a.take<uint16_t>(N * D);
  retrieval_.bind_bf16(a);
}

template <typename T>
Arena PeerLayer<T>::enable_bf16() {
  Arena measure;
  bind_bf16(measure);  // a measuring arena hands out nulls: bf16 stays off until the real one
  Arena a(measure.used());
  bind_bf16(a);
  return a;
}

template <typename T>
void PeerLayer<T>::refresh_bf16(const PeerParams<T>& p) {
  if constexpr (std::is_same_v<T, float>) {
    MOE_CHECK(wq_b_, "PEER: refresh_bf16 before enable_bf16");
    round_to_bf16(wq_b_, p.wq, std::size_t(spec_.heads) * spec_.d_key * spec_.C);
    retrieval_.pack_keys_bf16(p.keys1, p.keys2);
  }
}

template <typename T>
void PeerLayer<T>::disable_bf16() {
  wq_b_ = x_b_ = dquery_b_ = nullptr;
  retrieval_.disable_bf16();
}

template <typename T>
void PeerLayer<T>::forward(T* y, const T* x, const PeerParams<T>& p, int N, bool training) {
  MOE_CHECK(N <= max_tokens_, "PEER forward with {} tokens, bound for {}", N, max_tokens_);
  tokens_ = N;
  training_ = training;
  const int C = spec_.C, D = spec_.heads * spec_.d_key;
  if (wq_b_) {  // bf16 (float only: bind_bf16 refuses double)
    if constexpr (std::is_same_v<T, float>) {
      linear_forward_bf16(query_, x_b_, x, wq_b_, N, C, D);
      add_bias(query_, p.bq, N, D);
    }
  } else {
    query_forward(query_, x, p.wq, p.bq, N, C, D);
  }
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
  if (wq_b_) {  // bf16 (float only): the forward's bf16(x) is still in x_b_
    if constexpr (std::is_same_v<T, float>) {
      linear_backward_bf16(dx, g.wq, dquery_b_, dquery_, x_b_, wq_b_, N, C, D, true);
      bias_backward(g.bq, dquery_, N, D);
    }
  } else {
    query_backward(dx, g.wq, g.bq, dquery_, x, p.wq, N, C, D);
  }
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
