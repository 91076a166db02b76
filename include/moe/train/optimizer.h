// AdamW over a whole ParamStore: moments in one arena with the store's layout, global-norm
// clipping, the warmup + cosine schedule. Which tensors decay: matrices yes; norm weights never;
// the embedding only with train.decay_embeddings (a tied head shares the embedding's rule).
#pragma once
#include <cstdint>

#include "moe/core/arena.h"
#include "moe/core/params.h"
#include "moe/model/config.h"

namespace moe {

struct OptimStats {
  double lr = 0;
  double grad_norm = 0;  // before clipping
};

class AdamWOptimizer {
 public:
  AdamWOptimizer(ParamStore& params, const TrainConfig& cfg);
  // Applies optimizer step `step` (0-based): schedule, clip, update. Gradients must be complete.
  OptimStats step(int64_t step);
  float* m() { return m_; }
  float* v() { return v_; }
  std::size_t numel() const { return params_.numel(); }
  bool decays(const Param& p) const;

 private:
  ParamStore& params_;
  TrainConfig cfg_;
  Arena state_;
  float *m_ = nullptr, *v_ = nullptr;
};

}  // namespace moe
