// The router's backward (router.h): d loss / d logits from the gates' gradients, the balancing
// and z losses (and the noisy router's d/dz), then the router weights' gradients and its share
// of dx. Apart from router.cpp to keep each file readable; the members are instantiated here
// for float and double.
#include <algorithm>
#include <cmath>

#include "moe/ffn/moe/router.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/softmax.h"
#include "moe/kernels/vexp.h"

namespace moe {

template <typename T>
void Router<T>::gate_grads_to_logits() {
  // dlogits_ [N,E] (=) d loss / d logits from the gates' gradients, the aux loss and the z-loss;
  // for noisy_topk, dlogits_ is d/dH and noise_logits_ becomes d/dz (in place).
  const int N = tokens_, E = spec_.E, k = experts_per_token_;
  const Assignments<T>& a = assign_;
  // f_e = global selections / global assignments; d/dq[n,e] = α·E·f_e/N_global, which is
  // α·E·f_e/N · loss_scale here (the trainer's loss_scale carries the 1/P).
  const double denom =
      spec_.kind == RouterKind::kGShard ? double(global_tokens_) : double(global_tokens_) * k;
  // Expert choice: the gate of (n, e) is p[n,e] itself; gather d/dp into dlogits_ first.
  std::fill(dlogits_, dlogits_ + std::size_t(N) * E, T(0));
  if (expert_choice_) {
    for (int i = 0; i < a.count; ++i)
      dlogits_[std::size_t(a.token[i]) * E + a.expert[i]] += a.dgate[i];
  }
  const bool token_choice = !expert_choice_;
  const bool renorm = (spec_.normalize && spec_.kind != RouterKind::kExpertChoice) ||
                      spec_.kind == RouterKind::kGShard;
  const T zc = T(2.0 * spec_.beta / N) * loss_scale_;
  // Aux loss α·E·Σ_e f_e·P_e, P_e = mean_n q[n,e]:  d/dq[n,e] = α·E·f_e/N, the same for every n.
  const bool aux = aux_loss_active();
  const bool per_sequence = aux && spec_.aux_scope == AuxLossScope::kSequence;
  if (per_sequence) {
    // Sequence-wise: α·E/B_global·Σ_b Σ_e f_{b,e}·P_{b,e}, P_{b,e} the mean over T tokens:
    // d/dq[n ∈ b, e] = α·E·f_{b,e}/(T·B_global), which is α·E·f_{b,e}/(T·B)·loss_scale here.
    const int Tn = seq_len_;
    const double fden = spec_.kind == RouterKind::kGShard ? Tn : double(Tn) * k;
    for (int bq = 0; bq < batch_; ++bq)
      for (int e = 0; e < E; ++e)
        aux_grad_[std::size_t(bq) * E + e] =
            T(spec_.alpha * E * (seq_selections_[std::size_t(bq) * E + e] / fden) /
              (double(Tn) * batch_)) *
            loss_scale_;
  } else if (aux && use_step_counts_) {
    // aux_loss_scope global_batch: the same with f_e of the whole optimizer step. The step's loss
    // is the mean of its G micro-batches' (the trainer's loss_scale carries the 1/G as the 1/P).
    for (int e = 0; e < E; ++e)
      aux_grad_[e] = T(spec_.alpha * E * step_fraction(e) / N) * loss_scale_;
  } else {
    for (int e = 0; e < E; ++e)
      aux_grad_[e] = aux ? T(spec_.alpha * E * (selections_[e] / denom) / N) * loss_scale_ : T(0);
  }
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* dq = per_sequence ? aux_grad_ + std::size_t(n / seq_len_) * E : aux_grad_;
    // d: first d/d(score or noisy logit) from the gates, then (in place) d/d(logit).
    T* d = dlogits_ + std::size_t(n) * E;
    const T* sc = scores_ + std::size_t(n) * E;
    const T* r = logits_ + std::size_t(n) * E;
    if (token_choice) {
      const int a0 = n * k;
      if (noisy_) {
        // Gates = softmax over the selected noisy logits: dH_s = g_s·(dg_s − Σ_j g_j·dg_j).
        T dot = 0;
        for (int s = 0; s < k; ++s) dot += a.gate[a0 + s] * a.dgate[a0 + s];
        for (int s = 0; s < k; ++s) d[a.expert[a0 + s]] += a.gate[a0 + s] * (a.dgate[a0 + s] - dot);
      } else if (spec_.routed_scale != 1.f) {
        // g_s = f·ĝ_s (ĝ: the gate before the routed scaling factor f): d ĝ_s = f·dg_s.
        const T f = T(spec_.routed_scale);
        T S = 0, dot = 0;
        for (int s = 0; s < k; ++s) {
          const T pe = sc[a.expert[a0 + s]];
          S += pe;
          dot += f * a.dgate[a0 + s] * pe;
        }
        for (int s = 0; s < k; ++s) {
          const T dg = f * a.dgate[a0 + s];
          d[a.expert[a0 + s]] += renorm ? dg / S - dot / (S * S) : dg;
        }
      } else if (renorm) {
        // g_s = p_s/S, S = Σ_selected p:  dp_s = dg_s/S − Σ_j dg_j·p_j / S².
        T S = 0, dot = 0;
        for (int s = 0; s < k; ++s) {
          const T pe = sc[a.expert[a0 + s]];
          S += pe;
          dot += a.dgate[a0 + s] * pe;
        }
        for (int s = 0; s < k; ++s) d[a.expert[a0 + s]] += a.dgate[a0 + s] / S - dot / (S * S);
      } else {
        for (int s = 0; s < k; ++s) d[a.expert[a0 + s]] += a.dgate[a0 + s];
      }
    }
    if (spec_.sigmoid) {
      // q = p/S_n (S_n = Σ_e p): dp_e += (dq_e − Σ_j dq_j·q_j)/S_n; then σ' = p(1−p).
      const T S = score_sum_[n];
      T dot = 0;
      for (int e = 0; e < E; ++e) dot += dq[e] * sc[e] / S;
      for (int e = 0; e < E; ++e) d[e] = (d[e] + (dq[e] - dot) / S) * sc[e] * (T(1) - sc[e]);
    } else if (noisy_) {
      // dH = gates' part + softmax backward of the aux part through P = softmax(H);
      // then r gets dH and the noise logits z get dH·eps·softplus'(z) = dH·eps·σ(z).
      T dot = 0;
      for (int e = 0; e < E; ++e) dot += sc[e] * dq[e];
      T* z = noise_logits_ + std::size_t(n) * E;
      const T* ep = noise_eps_ + std::size_t(n) * E;
      for (int e = 0; e < E; ++e) {
        const T dH = d[e] + sc[e] * (dq[e] - dot);
        d[e] = dH;
        z[e] = dH * ep[e] / (T(1) + std::exp(-z[e]));  // z ← d(z), in place
      }
    } else {
      // Softmax backward of d/dp (gates + aux), in place.
      for (int e = 0; e < E; ++e) d[e] += dq[e];
      softmax_row_backward(d, sc, d, E);
    }
    // z-loss β·mean_n lse_n²:  d/dr = 2β/N·lse·softmax(r).
    if (spec_.beta > 0)
      for (int e = 0; e < E; ++e) d[e] += zc * logsumexp_[n] * vexp(r[e] - logsumexp_[n]);
  }
}

template <typename T>
void Router<T>::backward(T* dx, const MoeGrads<T>& g, const T* x, const MoeParams<T>& p,
                         T* scratch) {
  const int N = tokens_, E = spec_.E, C = spec_.C;
  if (spec_.kind == RouterKind::kRelu)
    relu_grads_to_logits();
  else
    gate_grads_to_logits();
  const T* xr = jittered_ ? jittered_x_ : x;
  gemm<T>(true, false, E, C, N, T(1), dlogits_, E, xr, C, T(1), g.router, C);
  if (noisy_) gemm<T>(true, false, E, C, N, T(1), noise_logits_, E, xr, C, T(1), g.w_noise, C);
  if (jittered_) {
    // dx += (dr·W_r [+ dz·W_noise]) ∘ u, the jitter factors.
    gemm<T>(false, false, N, C, E, T(1), dlogits_, E, p.router, C, T(0), scratch, C);
    if (noisy_)
      gemm<T>(false, false, N, C, E, T(1), noise_logits_, E, p.w_noise, C, T(1), scratch, C);
    for (std::size_t i = 0; i < std::size_t(N) * C; ++i) dx[i] += scratch[i] * jitter_factors_[i];
  } else {
    gemm<T>(false, false, N, C, E, T(1), dlogits_, E, p.router, C, T(1), dx, C);
    if (noisy_) gemm<T>(false, false, N, C, E, T(1), noise_logits_, E, p.w_noise, C, T(1), dx, C);
  }
}

#define MOE_ROUTER_BACKWARD(T)                     \
  template void Router<T>::gate_grads_to_logits(); \
  template void Router<T>::backward(T*, const MoeGrads<T>&, const T*, const MoeParams<T>&, T*);
MOE_ROUTER_BACKWARD(float)
MOE_ROUTER_BACKWARD(double)
#undef MOE_ROUTER_BACKWARD

}  // namespace moe
