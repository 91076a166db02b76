#include "moe/ffn/moe/routing_rules.h"

#include <algorithm>

#include "moe/kernels/topk.h"

namespace moe {

template <typename T>
void group_limited_topk(int32_t* idx, T* val, const T* key, int E, int k, int n_group,
                        int topk_group, T* scratch, int32_t* iscratch) {
  const int Eg = E / n_group;
  // scratch: [group scores n_group | the chosen groups' scores n_group | the chosen groups'
  // keys, compacted, topk_group·Eg <= E]
  T* gscore = scratch;
  T* gval = scratch + n_group;
  T* kept = scratch + 2 * std::size_t(n_group);
  for (int g = 0; g < n_group; ++g) {
    // The two largest keys of the group (the first of equal keys counts as the larger).
    const T* kg = key + std::size_t(g) * Eg;
    T a = kg[0], b = kg[1];
    if (b > a) std::swap(a, b);
    for (int j = 2; j < Eg; ++j) {
      if (kg[j] > a) {
        b = a;
        a = kg[j];
      } else if (kg[j] > b) {
        b = kg[j];
      }
    }
    gscore[g] = a + b;
  }
  // The best topk_group groups (ties to the lower group), then in group order, so that the
  // compacted keys keep expert order and topk_scan's ties still go to the lower expert.
  topk_scan(iscratch, gval, gscore, n_group, topk_group);
  std::sort(iscratch, iscratch + topk_group);
  for (int j = 0; j < topk_group; ++j)
    std::copy(key + std::size_t(iscratch[j]) * Eg, key + std::size_t(iscratch[j] + 1) * Eg,
              kept + std::size_t(j) * Eg);
  topk_scan(idx, val, kept, topk_group * Eg, k);
  for (int s = 0; s < k; ++s) idx[s] = iscratch[idx[s] / Eg] * Eg + idx[s] % Eg;
}

template <typename T>
void update_selection_bias(T* bias, const double* loads, int E, float rate, BiasUpdate rule) {
  double mean = 0;
  for (int e = 0; e < E; ++e) mean += loads[e];
  mean /= E;
  for (int e = 0; e < E; ++e) {
    const double d = mean - loads[e];
    bias[e] += T(rate) * T(d > 0 ? 1 : d < 0 ? -1 : 0);
  }
  if (rule != BiasUpdate::kSignCentred) return;
  double mb = 0;
  for (int e = 0; e < E; ++e) mb += double(bias[e]);
  mb /= E;
  for (int e = 0; e < E; ++e) bias[e] = T(double(bias[e]) - mb);
}

template void group_limited_topk<float>(int32_t*, float*, const float*, int, int, int, int, float*,
                                        int32_t*);
template void group_limited_topk<double>(int32_t*, double*, const double*, int, int, int, int,
                                         double*, int32_t*);
template void update_selection_bias<float>(float*, const double*, int, float, BiasUpdate);
template void update_selection_bias<double>(double*, const double*, int, float, BiasUpdate);

}  // namespace moe
