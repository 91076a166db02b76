// Dense FFN: SwiGLU  y = (silu(x·W_gateᵀ) ∘ x·W_upᵀ)·W_downᵀ   or   GELU  y =
// gelu(x·W_upᵀ)·W_downᵀ. Parameters (checkpoint names under <prefix>): w_gate [H,C] (SwiGLU only),
// w_up [H,C], w_down [C,H].
#pragma once
#include "moe/ffn/feed_forward.h"

namespace moe {

class DenseFfn final : public FeedForward {
 public:
  DenseFfn(const FfnConfig& ffn, const ModelConfig& model, ParamStore& params,
           const std::string& prefix);
  void bind(Arena& acts, int max_batch, int max_seq) override;
  void forward(float* out, const float* x, int n_tokens, const StepInfo& info) override;
  void backward(float* dx, const float* dout, const float* x, int n_tokens) override;
  std::string describe() const override;

 private:
  Activation act_;
  int C_, H_;
  Param *w_gate_ = nullptr, *w_up_ = nullptr, *w_down_ = nullptr;
  // SwiGLU: gu [N,2H] holds gate | up pre-activations (one GEMM against the contiguous
  // [W_gate; W_up]); GELU: gu [N,H] holds the pre-activation. hidden [N,H] is the activated
  // hidden. Backward reuses both in place for their own gradients.
  float *gu_ = nullptr, *hidden_ = nullptr;
};

}  // namespace moe
