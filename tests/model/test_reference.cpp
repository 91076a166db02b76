// The whole model against the PyTorch reference (tools/reference/tiny_model.py, float64):
// logits, loss, every parameter gradient, and 10 AdamW steps (losses, learning rates, gradient
// norms, final parameters). The C++ side runs in float32 from the same float32 initial values.
//
// Tolerances, from float32 error analysis: each logit is a chain of O(10) length-32..64 dot
// products, so its relative error is ~depth·√K·eps32 ≈ 1e-6 of the largest logit (the
// generator measured 4.7e-7 / 2.8e-6 with a float32 torch run). We allow 2e-5 of the largest
// magnitude — 10× margin, still far below any real bug (a wrong term moves values by O(1e-2)).
// Gradients: 1e-4 of each tensor's largest entry (measured ≤ 6e-7 relative). After 10 Adam steps
// (update ≈ lr·sign-like, lr ≤ 1e-2) float32 drift is ≤ 3e-6 (measured); allow 5e-5 absolute.
#include <gtest/gtest.h>

#include <cmath>

#include "../fixture_util.h"
#include "../grad_check.h"
#include "moe/core/safetensors.h"
#include "moe/model/transformer.h"
#include "moe/train/config.h"
#include "moe/train/optimizer.h"

using namespace moe;
using moe::testing::all_close;
using moe::testing::max_abs;

namespace {

class Reference : public ::testing::TestWithParam<const char*> {};

TEST_P(Reference, ForwardBackwardAndTenAdamWSteps) {
  SafeTensorsReader r(moe::testing::fixture_path(GetParam()));
  Config cfg = config_from_json(nlohmann::json::parse(r.meta("config")), r.path());
  std::vector<int64_t> tshape;
  std::vector<int32_t> tokens = r.read_i32("tokens", &tshape), targets = r.read_i32("targets");
  const int B = int(tshape[0]), T = int(tshape[1]), V = cfg.model.vocab_size;
  Transformer model(cfg.model, B, T);
  // Every parameter of the model must be in the fixture and vice versa.
  std::size_t n_fixture_params = 0;
  for (auto& n : r.names()) n_fixture_params += n.rfind("param.", 0) == 0;
  ASSERT_EQ(model.params().all().size(), n_fixture_params);
  for (Param& p : model.params().all()) r.read_into("param." + p.name, DType::F32, p.shape, p.w);

  StepInfo info;
  const double loss_logits_pass = model.forward(tokens.data(), targets.data(), B, T, info, 0.f);
  std::vector<double> ref_logits = r.read_f64("logits");
  std::vector<double> logits(model.logits(), model.logits() + std::size_t(B) * T * V);
  EXPECT_TRUE(all_close("logits", logits, ref_logits, 2e-5 * max_abs(ref_logits), 0));
  const double ref_loss = r.read_f64("loss")[0];
  EXPECT_NEAR(loss_logits_pass, ref_loss, 2e-5 * ref_loss);

  model.params().zero_grad();
  const double loss = model.forward(tokens.data(), targets.data(), B, T, info, 1.f);
  EXPECT_EQ(loss, loss_logits_pass);  // the gradient pass computes the same loss
  model.backward();
  for (Param& p : model.params().all()) {
    std::vector<double> ref = r.read_f64("grad." + p.name);
    std::vector<double> got(p.g, p.g + p.numel);
    EXPECT_TRUE(all_close("grad." + p.name, got, ref, 1e-4 * max_abs(ref) + 1e-12, 0));
  }

  // Ten AdamW steps on the same batch, with warmup, cosine decay and clipping.
  AdamWOptimizer opt(model.params(), cfg.train);
  std::vector<double> ref_losses = r.read_f64("losses"), ref_lrs = r.read_f64("lrs"),
                      ref_norms = r.read_f64("grad_norms");
  ASSERT_EQ(ref_losses.size(), 10u);
  for (int s = 0; s < 10; ++s) {
    model.params().zero_grad();
    const double l = model.forward(tokens.data(), targets.data(), B, T, info, 1.f);
    model.backward();
    const OptimStats st = opt.step(s);
    EXPECT_NEAR(l, ref_losses[s], 5e-5 * std::max(1.0, ref_losses[s])) << "step " << s;
    EXPECT_NEAR(st.lr, ref_lrs[s], 1e-9) << "step " << s;
    EXPECT_NEAR(st.grad_norm, ref_norms[s], 1e-4 * ref_norms[s]) << "step " << s;
  }
  for (Param& p : model.params().all()) {
    std::vector<double> ref = r.read_f64("final." + p.name);
    std::vector<double> got(p.w, p.w + p.numel);
    EXPECT_TRUE(all_close("final." + p.name, got, ref, 5e-5, 0));
  }
}

// A: GQA (4 query / 2 kv heads), QK-norm, untied head, SwiGLU.
// B: multi-head, tied embeddings, GELU.
// C: llama.cpp architecture features: q/k/v biases, per-head QK-norm, interleaved RoPE, GQA with
//    head_dim 8 ≠ d_model / n_heads = 6, untied head, SwiGLU.
INSTANTIATE_TEST_SUITE_P(Model, Reference,
                         ::testing::Values("tiny_model_a.safetensors", "tiny_model_b.safetensors",
                                           "tiny_model_c.safetensors"));

}  // namespace
