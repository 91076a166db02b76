#include "moe/ffn/dense.h"

#include <cmath>
#include <fmt/format.h>

#include "moe/core/error.h"
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
    w_gate_ = params.add(prefix + ".w_gate", {H_, C_}, Init::kNormal, model.init_std, true);
  w_up_ = params.add(prefix + ".w_up", {H_, C_}, Init::kNormal, model.init_std, true);
  w_down_ = params.add(prefix + ".w_down", {C_, H_}, Init::kNormal, std_out, true);
}

void DenseFfn::bind(Arena& acts, int max_tokens) {
  const std::size_t n = std::size_t(max_tokens) * H_;
  gate_ = act_ == Activation::kSwiGLU ? acts.take<float>(n) : nullptr;
  up_ = acts.take<float>(n);
  hidden_ = acts.take<float>(n);
}

void DenseFfn::forward(float* out, const float* x, int N, const StepInfo&) {
  const std::size_t n = std::size_t(N) * H_;
  linear_forward(up_, x, w_up_->w, N, C_, H_);
  if (act_ == Activation::kSwiGLU) {
    linear_forward(gate_, x, w_gate_->w, N, C_, H_);
    swiglu_forward(hidden_, gate_, up_, n);
  } else {
    gelu_forward(hidden_, up_, n);
  }
  linear_forward(out, hidden_, w_down_->w, N, H_, C_);
}

void DenseFfn::backward(float* dx, const float* dout, const float* x, int N) {
  const std::size_t n = std::size_t(N) * H_;
  // dW_down += doutᵀ·hidden, then hidden's storage takes d(hidden).
  float* dhidden = hidden_;
  gemm<float>(true, false, C_, H_, N, 1.f, dout, C_, hidden_, H_, 1.f, w_down_->g, H_);
  gemm<float>(false, false, N, H_, C_, 1.f, dout, C_, w_down_->w, H_, 0.f, dhidden, H_);
  if (act_ == Activation::kSwiGLU) {
    swiglu_backward(gate_, up_, dhidden, gate_, up_, n);  // in place: gate_ ← dgate, up_ ← dup
    linear_backward(dx, w_gate_->g, gate_, x, w_gate_->w, N, C_, H_, true);
  } else {
    gelu_backward(up_, dhidden, up_, n);  // in place: up_ ← d(pre-activation)
  }
  linear_backward(dx, w_up_->g, up_, x, w_up_->w, N, C_, H_, true);
}

std::string DenseFfn::describe() const {
  return fmt::format("dense {} d_ff={}", act_ == Activation::kSwiGLU ? "swiglu" : "gelu", H_);
}

std::unique_ptr<FeedForward> make_feed_forward(const FfnConfig& ffn, const ModelConfig& model,
                                               ParamStore& params, const std::string& prefix) {
  if (ffn.kind == "dense") return std::make_unique<DenseFfn>(ffn, model, params, prefix);
  MOE_FAIL("ffn kind '{}' is not available (known: dense)", ffn.kind);
}

}  // namespace moe
