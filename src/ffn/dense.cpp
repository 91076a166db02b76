#include "moe/ffn/dense.h"

#include <fmt/format.h>

#include <cmath>

#include "moe/nn/activations.h"
#include "moe/nn/linear.h"

namespace moe {

DenseFfn::DenseFfn(const FfnConfig& ffn, const ModelConfig& model, ParamStore& params,
                   const std::string& prefix)
    : act_(ffn.activation), C_(model.d_model), H_(ffn.d_ff) {
  // Output projections get the GPT-2 residual scaling 1/sqrt(2·n_layers) so the residual
  // stream's variance does not grow with depth.
  const float std_out = model.init_std / std::sqrt(2.f * model.n_layers);
  if (act_ == Activation::kSwiGLU)
    w_gate_ = params.add(prefix + ".w_gate", {H_, C_}, Init::kNormal, model.init_std, true,
                         /*contiguous_next=*/true);
  w_up_ = params.add(prefix + ".w_up", {H_, C_}, Init::kNormal, model.init_std, true);
  w_down_ = params.add(prefix + ".w_down", {C_, H_}, Init::kNormal, std_out, true);
}

void DenseFfn::bind(Arena& acts, int max_batch, int max_seq) {
  const std::size_t n = std::size_t(max_batch) * max_seq * H_;
  gu_ = acts.take<float>(act_ == Activation::kSwiGLU ? 2 * n : n);
  hidden_ = acts.take<float>(n);
}

// The first weight matrix: [W_gate; W_up] as one [2H, C] matrix for SwiGLU (they were
// registered contiguously), W_up [H, C] for GELU. Same for its gradient.
static int first_rows(Activation a, int H) { return a == Activation::kSwiGLU ? 2 * H : H; }

void DenseFfn::forward(float* out, const float* x, int N, const StepInfo&) {
  const bool glu = act_ == Activation::kSwiGLU;
  const float* w1 = glu ? w_gate_->w : w_up_->w;
  linear_forward(gu_, x, w1, N, C_, first_rows(act_, H_));
  if (glu)
    swiglu_forward(hidden_, gu_, N, H_);
  else
    gelu_forward(hidden_, gu_, std::size_t(N) * H_);
  linear_forward(out, hidden_, w_down_->w, N, H_, C_);
}

void DenseFfn::backward(float* dx, const float* dout, const float* x, int N) {
  const bool glu = act_ == Activation::kSwiGLU;
  // dW_down += doutᵀ·hidden, then hidden's storage takes d(hidden).
  float* dhidden = hidden_;
  gemm<float>(true, false, C_, H_, N, 1.f, dout, C_, hidden_, H_, 1.f, w_down_->g, H_);
  gemm<float>(false, false, N, H_, C_, 1.f, dout, C_, w_down_->w, H_, 0.f, dhidden, H_);
  if (glu)
    swiglu_backward(gu_, dhidden, gu_, N, H_);  // in place: gu_ ← d(gate) | d(up)
  else
    gelu_backward(gu_, dhidden, gu_, std::size_t(N) * H_);
  linear_backward(dx, glu ? w_gate_->g : w_up_->g, gu_, x, glu ? w_gate_->w : w_up_->w, N, C_,
                  first_rows(act_, H_), true);
}

std::string DenseFfn::describe() const {
  return fmt::format("dense {} d_ff={}", enum_name(act_), H_);
}

}  // namespace moe
