#include "moe/train/optimizer.h"

#include <cmath>

#include "moe/nn/adamw.h"

namespace moe {

AdamWOptimizer::AdamWOptimizer(ParamStore& params, const TrainConfig& cfg)
    : params_(params), cfg_(cfg), state_(2 * params.numel() * sizeof(float) + 2 * kAlign) {
  m_ = state_.take<float>(params.numel());
  v_ = state_.take<float>(params.numel());
}

bool AdamWOptimizer::decays(const Param& p) const {
  if (p.is_embedding) return cfg_.decay_embeddings;
  return p.decay;
}

OptimStats AdamWOptimizer::step(int64_t s) {
  OptimStats st;
  st.lr = lr_schedule(s, cfg_.lr, cfg_.min_lr, cfg_.warmup_steps, cfg_.steps);
  // Padding between tensors is always zero in the gradient arena, so one pass over it is the
  // norm of the real gradients.
  st.grad_norm = std::sqrt(sum_squares(params_.grads(), params_.numel()));
  float* g = params_.grads();
  if (cfg_.grad_clip > 0) {
    // torch.nn.utils.clip_grad_norm_: coef = max/(norm + 1e-6), applied when < 1.
    const double coef = cfg_.grad_clip / (st.grad_norm + 1e-6);
    if (coef < 1) {
      const float c = float(coef);
      const std::size_t n = params_.numel();
#pragma omp parallel for schedule(static) if (n > 32768)
      for (std::size_t i = 0; i < n; ++i) g[i] *= c;
    }
  }
  const AdamWHyper h{float(st.lr), cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay};
  for (Param& p : params_.all())
    if (p.trainable)
      adamw_update(p.w, m_ + p.offset, v_ + p.offset, p.g, p.numel, h, decays(p), s + 1);
  return st;
}

}  // namespace moe
