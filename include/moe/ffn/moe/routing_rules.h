// Routing rules the router applies per token or per step, kept apart from its state so the
// tests (and the inference engine) can hold each to its definition (docs/MOE.md):
// - DeepSeek-V3's group-limited top-k (router.n_group, router.topk_group);
// - DeepSeek-V3's selection-bias update (router.bias_update), once per optimizer step.
#pragma once
#include <cstdint>

#include "moe/ffn/moe/moe_spec.h"

namespace moe {

// The per-thread scratch group_limited_topk needs: T values and int32 indices.
inline std::size_t group_topk_scratch_values(int E, int n_group) {
  return std::size_t(E) + 2 * std::size_t(n_group);
}
inline std::size_t group_topk_scratch_indices(int n_group) { return std::size_t(n_group); }

// Group-limited top-k of one token's selection keys key [E] (scores, plus the bias when
// bias_balance): the E experts form n_group groups of E/n_group consecutive experts; a group's
// score is the sum of its two largest keys; the topk_group best groups are chosen (ties to the
// lower group index), and the k best keys among their experts go to idx [k] (best first, ties to
// the lower expert index), their keys to val [k]. The other groups' experts are never selected
// (DeepSeek-V3's inference/model.py masks them with −inf). Requires E % n_group == 0,
// E/n_group >= 2, 1 <= topk_group <= n_group and k <= topk_group·E/n_group (MoeSpec::validate).
// scratch: group_topk_scratch_values(E, n_group) values; iscratch: _indices(n_group) int32.
template <typename T>
void group_limited_topk(int32_t* idx, T* val, const T* key, int E, int k, int n_group,
                        int topk_group, T* scratch, int32_t* iscratch);

// DeepSeek-V3's aux-loss-free balancing step from per-expert loads [E] (selections before
// capacity, summed over every micro-batch and rank of the optimizer step):
//   b_e += γ·sign(mean_e' load_e' − load_e)                       (kSign)
//   then b_e −= mean_e' b_e'                                       (kSignCentred)
// The mean load and the mean bias are taken in double, in expert order.
template <typename T>
void update_selection_bias(T* bias, const double* loads, int E, float rate, BiasUpdate rule);

}  // namespace moe
