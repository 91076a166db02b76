// The MoE layer (every router kind, capacity drops, shared experts, GELU) against the PyTorch
// reference in tools/reference/moe_layer.py: output, aux and z losses, the routing decisions,
// and the gradients of L = Σ y·R + aux + z for x and every parameter.
//
// The C++ side runs in double here, so the only differences are summation order: 1e-10
// relative to each tensor's largest entry is ~1e5 ulp of headroom yet catches any wrong term.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../fixture_util.h"
#include "../grad_check.h"
#include "moe/core/safetensors.h"
#include "moe/ffn/moe/moe_layer.h"

using namespace moe;
using moe::testing::all_close;
using moe::testing::as_double;
using moe::testing::fixture_path;
using moe::testing::max_abs;

namespace {

class MoeReference : public ::testing::TestWithParam<const char*> {};

TEST_P(MoeReference, MatchesPyTorch) {
  SafeTensorsReader r(fixture_path(std::string("moe_") + GetParam() + ".safetensors"));
  const nlohmann::json L = nlohmann::json::parse(r.meta("layer"));
  FfnConfig f;
  f.kind = "moe";
  f.num_experts = L["num_experts"];
  f.top_k = L["top_k"];
  f.d_expert = L["d_expert"];
  f.capacity_factor = L["capacity_factor"];
  f.eval_capacity_factor = f.capacity_factor;
  f.activation = L["activation"] == "gelu" ? Activation::kGELU : Activation::kSwiGLU;
  f.shared_experts = L["shared_experts"];
  f.aux_loss_coef = L["aux_loss_coef"];
  f.z_loss_coef = L["z_loss_coef"];
  f.router.kind = L["router"];
  f.router.normalize = L["normalize"];
  f.router.score = L["score"];
  const int C = L["d_model"], B = L["batch"], T = L["seq_len"], N = B * T;
  MoeSpec spec = MoeSpec::from_config(f, C);
  const int E = spec.E;

  std::map<std::string, std::vector<double>> P, G;
  for (const char* n : {"router.weight", "router.w_noise", "experts.w_gate", "experts.w_up",
                        "experts.w_down", "shared.w_gate", "shared.w_up", "shared.w_down"}) {
    if (r.has(std::string("param.") + n)) {
      P[n] = as_double(r, std::string("param.") + n);
      G[n] = std::vector<double>(P[n].size(), 0.0);
    }
  }
  auto ptr = [&](const char* n) -> const double* { return P.count(n) ? P[n].data() : nullptr; };
  auto gptr = [&](const char* n) -> double* { return G.count(n) ? G[n].data() : nullptr; };
  MoeParams<double> p{ptr("router.weight"), ptr("router.w_noise"), nullptr,
                      ptr("experts.w_gate"), ptr("experts.w_up"), ptr("experts.w_down"),
                      ptr("shared.w_gate"), ptr("shared.w_up"), ptr("shared.w_down")};
  MoeGrads<double> g{gptr("router.weight"), gptr("router.w_noise"), gptr("experts.w_gate"),
                     gptr("experts.w_up"),  gptr("experts.w_down"), gptr("shared.w_gate"),
                     gptr("shared.w_up"),   gptr("shared.w_down")};
  std::vector<double> x = as_double(r, "x"), R = as_double(r, "R");
  std::vector<double> noise, uniform;
  if (r.has("noise")) noise = as_double(r, "noise");
  if (r.has("uniform")) uniform = as_double(r, "uniform");

  MoeLayer<double> layer(spec);
  Arena measure;
  layer.bind(measure, B, T);
  Arena acts(measure.used());
  layer.bind(acts, B, T);
  std::vector<double> y(std::size_t(N) * C), dx(std::size_t(N) * C, 0.0);
  layer.forward(y.data(), x.data(), p, B, T, /*training=*/true, 1, 0, 0, 1.0,
                {noise.empty() ? nullptr : noise.data(), uniform.empty() ? nullptr : uniform.data()});
  EXPECT_TRUE(all_close("y", y, r.read_f64("y"), 1e-10 * max_abs(r.read_f64("y")), 0));
  EXPECT_NEAR(layer.stats().aux_loss, r.read_f64("aux_loss")[0], 1e-12);
  EXPECT_NEAR(layer.stats().z_loss, r.read_f64("z_loss")[0], 1e-12);
  if (r.has("experts_idx")) {
    EXPECT_EQ(layer.selected_experts(), r.read_i32("experts_idx"));
    EXPECT_EQ(layer.dropped_mask(), r.read_i32("dropped"));
  }
  layer.backward(dx.data(), g, R.data(), x.data(), p);
  std::vector<double> ref = r.read_f64("grad.x");
  EXPECT_TRUE(all_close("grad.x", dx, ref, 1e-10 * max_abs(ref), 0));
  for (auto& [name, grad] : G) {
    ref = r.read_f64("grad." + name);
    EXPECT_TRUE(all_close("grad." + name, grad, ref, 1e-10 * max_abs(ref) + 1e-15, 0));
  }
  (void)E;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MoeReference,
                         ::testing::Values("switch", "mixtral", "capacity", "sigmoid", "noisy",
                                           "gshard", "expert_choice", "shared_gelu"));

}  // namespace
