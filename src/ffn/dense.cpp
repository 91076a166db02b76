#include "moe/ffn/dense.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "moe/core/error.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/nn/activations.h"
#include "moe/nn/linear.h"
#include "moe/nn/linear_bf16.h"

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
  max_tokens_ = max_batch * max_seq;
}

// The first weight matrix: [W_gate; W_up] as one [2H, C] matrix for SwiGLU (they were
// registered contiguously), W_up [H, C] for GELU. Same for its gradient.
static int first_rows(Activation a, int H) { return a == Activation::kSwiGLU ? 2 * H : H; }

void DenseFfn::bind_low_precision(Arena& a) {
  const std::size_t N = max_tokens_, R = first_rows(act_, H_);
  w1_b_ = a.take<uint16_t>(R * C_);
  w_down_b_ = a.take<uint16_t>(std::size_t(C_) * H_);
  x_b_ = a.take<uint16_t>(N * C_);
  hidden_b_ = a.take<uint16_t>(N * H_);
  dout_b_ = a.take<uint16_t>(N * std::max<std::size_t>(C_, R));
}

void DenseFfn::set_precision(Precision p) {
  precision_ = p;
  low_ = Arena();
  if (p == Precision::kFp32) return;
  MOE_CHECK(max_tokens_ > 0, "dense FFN: set_precision before bind");
  Arena measure;
  bind_low_precision(measure);
  low_ = Arena(measure.used());
  bind_low_precision(low_);
  refresh_low_precision();
}

void DenseFfn::refresh_low_precision() {
  if (precision_ == Precision::kFp32) return;
  // [W_gate; W_up] are contiguous (registered so): one rounding covers both.
  const Param* w1 = act_ == Activation::kSwiGLU ? w_gate_ : w_up_;
  round_to_bf16(w1_b_, w1->w, std::size_t(first_rows(act_, H_)) * C_);
  round_to_bf16(w_down_b_, w_down_->w, w_down_->numel);
}

void DenseFfn::forward(float* out, const float* x, int N, const StepInfo&) {
  const bool glu = act_ == Activation::kSwiGLU;
  const bool low = precision_ == Precision::kBf16;
  const float* w1 = glu ? w_gate_->w : w_up_->w;
  const int H = H_;
  if (low) {
    linear_forward_bf16(gu_, x_b_, x, w1_b_, N, C_, first_rows(act_, H));
    rounded_rows(hidden_b_, N, H, [&](float* row, int n) {
      if (glu) {
        const float* g = gu_ + std::size_t(n) * 2 * H;
        swiglu_forward_row(row, g, g + H, H);
      } else {
        const float* u = gu_ + std::size_t(n) * H;
        for (int i = 0; i < H; ++i) row[i] = gelu(u[i]);
      }
    });
    linear_forward_bf16_rounded(out, hidden_b_, w_down_b_, N, H, C_);
    return;
  }
  linear_forward(gu_, x, w1, N, C_, first_rows(act_, H));
  if (glu)
    swiglu_forward(hidden_, gu_, N, H);
  else
    gelu_forward(hidden_, gu_, std::size_t(N) * H);
  linear_forward(out, hidden_, w_down_->w, N, H, C_);
}

void DenseFfn::backward(float* dx, const float* dout, const float* x, int N) {
  const bool glu = act_ == Activation::kSwiGLU;
  // dW_down += doutᵀ·hidden, then hidden's storage takes d(hidden).
  float* dhidden = hidden_;
  const int H = H_, R = first_rows(act_, H);
  Param* w1 = glu ? w_gate_ : w_up_;
  if (precision_ == Precision::kBf16) {
    // The forward saved bf16(hidden) in hidden_b_ (hidden_ is not written in bf16), so hidden_
    // takes d(hidden); d(gate|up) goes straight into dout_b_ rounded, row by row (rounded_rows).
    linear_backward_bf16(dhidden, w_down_->g, dout_b_, dout, hidden_b_, w_down_b_, N, H, C_, false);
    rounded_rows(dout_b_, N, R, [&](float* row, int n) {
      const float* d = dhidden + std::size_t(n) * H;
      if (glu) {
        const float* g = gu_ + std::size_t(n) * 2 * H;
        swiglu_backward_row(row, row + H, d, g, g + H, H);
      } else {
        const float* u = gu_ + std::size_t(n) * H;
        for (int i = 0; i < H; ++i) row[i] = gelu_grad(d[i], u[i]);
      }
    });
    linear_backward_bf16_rounded(dx, w1->g, dout_b_, x_b_, w1_b_, N, C_, R, true);
    return;
  }
  gemm<float>(true, false, C_, H, N, 1.f, dout, C_, hidden_, H, 1.f, w_down_->g, H);
  gemm<float>(false, false, N, H, C_, 1.f, dout, C_, w_down_->w, H, 0.f, dhidden, H);
  if (glu)
    swiglu_backward(gu_, dhidden, gu_, N, H);  // in place: gu_ ← d(gate) | d(up)
  else
    gelu_backward(gu_, dhidden, gu_, std::size_t(N) * H);
  linear_backward(dx, w1->g, gu_, x, w1->w, N, C_, R, true);
}

std::string DenseFfn::describe() const {
  return fmt::format("dense {} d_ff={}{}", enum_name(act_), H_,
                     precision_ == Precision::kBf16 ? " bf16" : "");
}

}  // namespace moe
