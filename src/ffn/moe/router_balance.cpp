// The router's balancing bookkeeping (router.h): the per-sequence counts and sum of the
// sequence-wise balance loss, and the loads of the selection-bias update. Apart from router.cpp
// to keep each file readable; the members are instantiated here for float and double.
#include <algorithm>
#include <vector>

#include "moe/ffn/moe/router.h"
#include "moe/ffn/moe/routing_rules.h"

namespace moe {

template <typename T>
void Router<T>::count_sequence_selections() {
  // c[b, e]: sequence b's selections of expert e before capacity (GShard: first choices only),
  // the per-sequence counts of f_e.
  const int E = spec_.E, k = experts_per_token_;
  const int slots = spec_.kind == RouterKind::kGShard ? 1 : k;
  std::fill(seq_selections_, seq_selections_ + std::size_t(batch_) * E, 0.0);
  for (int n = 0; n < tokens_; ++n) {
    double* c = seq_selections_ + std::size_t(n / seq_len_) * E;
    for (int s = 0; s < slots; ++s) c[assign_.expert[std::size_t(n) * k + s]] += 1;
  }
}

template <typename T>
double Router<T>::sequence_balance_sum() const {
  // Σ_b Σ_e f_{b,e}·P_{b,e} over this rank's sequences: f_{b,e} = c[b,e]/(T·k) (GShard: first
  // choices / T), P_{b,e} = the mean over the sequence's T tokens of the balance probability.
  const int E = spec_.E, Tn = seq_len_;
  const double denom = spec_.kind == RouterKind::kGShard ? Tn : double(Tn) * experts_per_token_;
  double total = 0;
  for (int b = 0; b < batch_; ++b) {
    const double* c = seq_selections_ + std::size_t(b) * E;
    double acc = 0;
    for (int e = 0; e < E; ++e) {
      double P = 0;
      for (int t = 0; t < Tn; ++t) P += double(balance_prob(b * Tn + t, e));
      acc += c[e] / denom * (P / Tn);
    }
    total += acc;
  }
  return total;
}

template <typename T>
void Router<T>::add_step_selections() {
  // aux_loss_scope global_batch, a counting forward: selections_ are already summed over the
  // ranks (apply_capacity), so every rank holds the same step counts.
  for (int e = 0; e < spec_.E; ++e) step_selections_[e] += selections_[e];
  step_tokens_ += global_tokens_;
}

template <typename T>
double Router<T>::step_fraction(int e) const {
  // f_e over the step: its selections of e / its selections (GShard: first choices / tokens).
  const double per_token = spec_.kind == RouterKind::kGShard ? 1.0 : double(experts_per_token_);
  return step_selections_[e] / (double(step_tokens_) * per_token);
}

template <typename T>
void Router<T>::update_bias(T* bias) const {
  // Load = selections per expert in this forward (before capacity), as DeepSeek-V3 counts it.
  const int E = spec_.E;
  std::vector<double> loads(selections_, selections_ + E);
  update_selection_bias(bias, loads.data(), E, spec_.bias_rate, spec_.bias_update);
}

template <typename T>
void Router<T>::add_selections(double* loads) const {
  for (int e = 0; e < spec_.E; ++e) loads[e] += selections_[e];
}

#define MOE_ROUTER_BALANCE(T)                              \
  template void Router<T>::count_sequence_selections();    \
  template void Router<T>::add_step_selections();          \
  template double Router<T>::step_fraction(int e) const;   \
  template double Router<T>::sequence_balance_sum() const; \
  template void Router<T>::update_bias(T* bias) const;     \
  template void Router<T>::add_selections(double* loads) const;
MOE_ROUTER_BALANCE(float)
MOE_ROUTER_BALANCE(double)
#undef MOE_ROUTER_BALANCE

}  // namespace moe
