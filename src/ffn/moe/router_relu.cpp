// ReMoE's router (Wang, Zhu, Chen, "ReMoE: Fully Differentiable Mixture-of-Experts with ReLU
// Routing", arXiv 2412.14711, §3.2–3.4; docs/MOE.md): gates R = ReLU(x·W_rᵀ), each expert with
// R_e > 0 gets the token, and the load-balanced L1 loss
//
//   L_reg,lb = relu_l1 · (1/N)·Σ_n Σ_e f_e·R_e(x_n),   f_e = E/(k·N)·Σ_n 1{R_e(x_n) > 0}
//
// with f_e a constant (not differentiated), N the tokens of the (global) batch, relu_l1 = λ_i/L.
// Kept apart from router.cpp so the softmax routers' code (and its bits) stay as they were.
#include <algorithm>

#include "moe/core/error.h"
#include "moe/ffn/moe/router.h"

namespace moe {

template <typename T>
void Router<T>::select_relu() {
  // logits_ [N,E] → scores_ [N,E] = ReLU(logits); the assignments are the positive gates,
  // token-major and experts ascending (the combine's fixed order per token).
  const int N = tokens_, E = spec_.E;
  const std::size_t NE = std::size_t(N) * E;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) {
      const std::size_t i = std::size_t(n) * E + e;
      scores_[i] = logits_[i] > T(0) ? logits_[i] : T(0);
    }
  Assignments<T>& a = assign_;
  std::vector<int64_t>& kept = stats_.tokens_per_expert;
  std::fill(kept.begin(), kept.end(), 0);
  a.count = 0;
  for (std::size_t i = 0; i < NE; ++i) {
    if (!(scores_[i] > T(0))) continue;
    const int j = a.count++, e = int(i % E);
    a.expert[j] = e;
    a.token[j] = int32_t(i / E);
    a.gate[j] = scores_[i];
    a.fate[j] = AssignmentFate::kKept;
    ++kept[e];
  }
  // f_e needs the counts of the global batch before the backward: summed over ranks here, in the
  // forward, where every rank reaches this collective in the same order.
  double* count = slot_counts_;
  for (int e = 0; e < E; ++e) count[e] = double(kept[e]);
  if (distributed_) comm_->allreduce_sum(count, E);
  stats_.assignments = a.count;  // this rank's; finish_relu_stats sums over ranks
  stats_.dropped = 0;
}

template <typename T>
void Router<T>::finish_relu_stats() {
  // [kept per expert E | Σ_n R(n, e) E | assignments], summed over ranks when distributed.
  const int N = tokens_, E = spec_.E;
  double* b = stats_sums_;
  const std::size_t n_sums = 2 * std::size_t(E) + 1;
  std::fill(b, b + n_sums, 0.0);
  for (int e = 0; e < E; ++e) b[e] = double(stats_.tokens_per_expert[e]);
  double* rsum = b + E;
  for (int n = 0; n < N; ++n)  // token order: the same sums for any thread count
    for (int e = 0; e < E; ++e) rsum[e] += double(scores_[std::size_t(n) * E + e]);
  b[2 * E] = double(stats_.assignments);
  if (distributed_) comm_->allreduce_sum(b, n_sums);
  const double Ng = double(global_tokens_);
  int64_t mx = 0, tot = 0;
  stats_.unused_experts = 0;
  double l1 = 0;
  for (int e = 0; e < E; ++e) {
    const int64_t c = int64_t(b[e]);
    stats_.tokens_per_expert[e] = c;
    mx = std::max(mx, c);
    tot += c;
    stats_.unused_experts += c == 0;
    // f_e·(1/N)·Σ_n R_e, f_e = E·c_e/(k·N) from the forward's global counts (= b[e]).
    l1 += (double(E) * slot_counts_[e] / (double(spec_.k) * Ng)) * (rsum[e] / Ng);
  }
  stats_.assignments = int64_t(b[2 * E]);
  stats_.dropped = 0;
  stats_.max_over_mean_load = tot > 0 ? double(mx) / (double(tot) / E) : 0;
  stats_.router_entropy = 0;  // no distribution over experts to take an entropy of
  stats_.z_loss = 0;          // the z-loss is for softmax routers (docs/MOE.md)
  stats_.l1_loss = l1;
  stats_.aux_loss = relu_l1_ * l1;
  stats_.active_per_token = double(stats_.assignments) / Ng;
  stats_.sparsity = 1.0 - double(stats_.assignments) / (Ng * E);
}

template <typename T>
void Router<T>::relu_grads_to_logits() {
  // dlogits_ [N,E] (=): for R_e > 0, d/dr = dgate + relu_l1·f_e/N_global (the L1 term), scaled
  // like the aux loss: relu_l1·f_e/N·loss_scale here (the trainer's loss_scale carries the 1/P);
  // for R_e = 0 (r ≤ 0) ReLU passes no gradient (PyTorch's convention at r = 0 too).
  const int N = tokens_, E = spec_.E;
  const double Ng = double(global_tokens_);
  for (int e = 0; e < E; ++e)
    aux_grad_[e] =
        T(relu_l1_ * (double(E) * slot_counts_[e] / (double(spec_.k) * Ng)) / N) * loss_scale_;
  std::fill(dlogits_, dlogits_ + std::size_t(N) * E, T(0));
  const Assignments<T>& a = assign_;
  for (int i = 0; i < a.count; ++i)
    dlogits_[std::size_t(a.token[i]) * E + a.expert[i]] = a.dgate[i] + aux_grad_[a.expert[i]];
}

template void Router<float>::select_relu();
template void Router<double>::select_relu();
template void Router<float>::finish_relu_stats();
template void Router<double>::finish_relu_stats();
template void Router<float>::relu_grads_to_logits();
template void Router<double>::relu_grads_to_logits();

}  // namespace moe
