// Dense FFN: SwiGLU  y = (silu(x·W_gateᵀ) ∘ x·W_upᵀ)·W_downᵀ   or   GELU  y =
// gelu(x·W_upᵀ)·W_downᵀ. Parameters (checkpoint names under <prefix>): w_gate [H,C] (SwiGLU only),
// w_up [H,C], w_down [C,H]. In bf16 (set_precision) the four products take bf16 operands with
// f32 accumulation (nn/linear_bf16.h); the activation and its derivative stay f32.
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
  void set_precision(Precision p) override;
  void refresh_low_precision() override;
  std::size_t low_precision_bytes() const override { return low_.capacity(); }

 private:
  Activation act_;
  int C_, H_;
  Param *w_gate_ = nullptr, *w_up_ = nullptr, *w_down_ = nullptr;
  // SwiGLU: gu [N,2H] holds gate | up pre-activations (one GEMM against the contiguous
  // [W_gate; W_up]); GELU: gu [N,H] holds the pre-activation. hidden [N,H] is the activated
  // hidden. Backward reuses both in place for their own gradients.
  float *gu_ = nullptr, *hidden_ = nullptr;
  int max_tokens_ = 0;  // from bind
  // bf16: shadows w1_b [R,C] (R = 2H SwiGLU, H GELU) and w_down_b [C,H]; the saved rounded
  // inputs of the products x_b [N,C] and hidden_b [N,H]; dout_b [N, max(C,R)] scratch for a
  // rounded output gradient. All in low_, allocated by set_precision.
  Precision precision_ = Precision::kFp32;
  Arena low_;
  uint16_t *w1_b_ = nullptr, *w_down_b_ = nullptr, *x_b_ = nullptr, *hidden_b_ = nullptr,
           *dout_b_ = nullptr;
  void bind_low_precision(Arena& a);
};

}  // namespace moe
