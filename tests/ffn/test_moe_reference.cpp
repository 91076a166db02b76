// The MoE layer (every router kind, capacity drops, shared experts, GELU) against the PyTorch
// reference in tools/reference/moe_layer.py: output, aux and z losses, the routing decisions,
// and the gradients of L = Σ y·R + aux + z for x and every parameter. The same for issue 20's
// routing rules (tools/reference/moe_routing.py): DeepSeek-V3's group-limited routing with the
// selection bias and the routed scaling factor, the sequence-wise balance loss, and the bias
// update from the loads of one forward or of the micro-batches of one step.
//
// The C++ side runs in double first, so the only differences are summation order: 1e-10
// relative to each tensor's largest entry is ~1e5 ulp of headroom yet catches any wrong term.
// Then in float, which is the path training takes: with AVX-512 and several experts per thread
// the expert products run on our panel GEMM (kernels/grouped_gemm) instead of OpenBLAS, and these
// fixtures' odd sizes exercise its partial tiles and panels. Float tolerance: 2e-5 relative to
// each tensor's largest entry (inputs are rounded to float, ~6e-8 each, and sums of up to a few
// hundred terms accumulate ~1e-6; 2e-5 still catches any wrong or missing term).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../fixture_util.h"
#include "../grad_check.h"
#include "moe/core/safetensors.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/ffn/moe/routing_rules.h"

using namespace moe;
using moe::testing::all_close;
using moe::testing::as_double;
using moe::testing::fixture_path;
using moe::testing::max_abs;

namespace {

using V = std::vector<double>;

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

FfnConfig ffn_of(const nlohmann::json& L) {
  FfnConfig f;
  f.kind = FfnConfig::Kind::kMoe;
  f.moe.num_experts = L["num_experts"];
  f.moe.top_k = L["top_k"];
  f.moe.d_expert = L["d_expert"];
  f.moe.capacity_factor = L["capacity_factor"];
  f.moe.eval_capacity_factor = f.moe.capacity_factor;
  f.activation = L["activation"] == "gelu" ? Activation::kGELU : Activation::kSwiGLU;
  f.moe.shared_experts = L["shared_experts"];
  f.moe.aux_loss_coef = L["aux_loss_coef"];
  f.moe.z_loss_coef = L["z_loss_coef"];
  f.moe.router.kind = *enum_from_name<RouterConfig::Kind>(L["router"]);
  f.moe.router.normalize = L["normalize"];
  f.moe.router.score = *enum_from_name<RouterConfig::Score>(L["score"]);
  // moe_routing.py's fields (absent from moe_layer.py's fixtures: the defaults).
  f.moe.router.n_group = L.value("n_group", 1);
  f.moe.router.topk_group = L.value("topk_group", 1);
  f.moe.router.routed_scaling_factor = L.value("routed_scaling_factor", 1.0);
  f.moe.router.bias_balance = L.value("bias_balance", false);
  f.moe.router.bias_rate = L.value("bias_rate", 1e-3);
  f.moe.aux_loss_scope =
      *enum_from_name<MoeFfnConfig::AuxLossScope>(L.value("aux_loss_scope", "micro_batch"));
  return f;
}

template <typename T>
void run_fixture(const char* name, double rel, double loss_tol) {
  SafeTensorsReader r(fixture_path(std::string("moe_") + name + ".safetensors"));
  const nlohmann::json L = nlohmann::json::parse(r.meta("layer"));
  const FfnConfig f = ffn_of(L);
  const int C = L["d_model"], B = L["batch"], Tn = L["seq_len"], N = B * Tn;
  MoeSpec spec = MoeSpec::from_config(f, C);
  const int E = spec.E;

  std::map<std::string, std::vector<T>> P, G;
  for (const char* n : {"router.weight", "router.w_noise", "experts.w_gate", "experts.w_up",
                        "experts.w_down", "shared.w_gate", "shared.w_up", "shared.w_down"}) {
    if (r.has(std::string("param.") + n)) {
      P[n] = cast<T>(as_double(r, std::string("param.") + n));
      G[n] = std::vector<T>(P[n].size(), T(0));
    }
  }
  auto ptr = [&](const char* n) -> const T* { return P.count(n) ? P[n].data() : nullptr; };
  auto gptr = [&](const char* n) -> T* { return G.count(n) ? G[n].data() : nullptr; };
  const std::vector<T> bias = r.has("bias") ? cast<T>(as_double(r, "bias")) : std::vector<T>();
  MoeParams<T> p{ptr("router.weight"),  ptr("router.w_noise"), bias.empty() ? nullptr : bias.data(),
                 ptr("experts.w_gate"), ptr("experts.w_up"),   ptr("experts.w_down"),
                 ptr("shared.w_gate"),  ptr("shared.w_up"),    ptr("shared.w_down")};
  MoeGrads<T> g{gptr("router.weight"), gptr("router.w_noise"), gptr("experts.w_gate"),
                gptr("experts.w_up"),  gptr("experts.w_down"), gptr("shared.w_gate"),
                gptr("shared.w_up"),   gptr("shared.w_down")};
  std::vector<T> x = cast<T>(as_double(r, "x")), R = cast<T>(as_double(r, "R"));
  std::vector<T> noise, uniform;
  if (r.has("noise")) noise = cast<T>(as_double(r, "noise"));
  if (r.has("uniform")) uniform = cast<T>(as_double(r, "uniform"));

  MoeLayer<T> layer(spec);
  Arena measure;
  layer.bind(measure, B, Tn);
  Arena acts(measure.used());
  layer.bind(acts, B, Tn);
  std::vector<T> y(std::size_t(N) * C), dx(std::size_t(N) * C, T(0));
  MoeStep<T> step;
  step.batch = B;
  step.seq_len = Tn;
  step.training = true;
  step.seed = 1;
  step.noise = {noise.empty() ? nullptr : noise.data(), uniform.empty() ? nullptr : uniform.data()};
  layer.forward(y.data(), x.data(), p, step);
  auto d = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
  EXPECT_TRUE(all_close("y", d(y), r.read_f64("y"), rel * max_abs(r.read_f64("y")), 0));
  EXPECT_NEAR(layer.stats().aux_loss, r.read_f64("aux_loss")[0], loss_tol);
  EXPECT_NEAR(layer.stats().z_loss, r.read_f64("z_loss")[0], loss_tol);
  if (r.has("experts_idx")) {
    EXPECT_EQ(layer.selected_experts(), r.read_i32("experts_idx"));
    EXPECT_EQ(layer.dropped_mask(), r.read_i32("dropped"));
  }
  layer.backward(dx.data(), g, R.data(), x.data(), p);
  std::vector<double> ref = r.read_f64("grad.x");
  EXPECT_TRUE(all_close("grad.x", d(dx), ref, rel * max_abs(ref), 0));
  for (auto& [gname, grad] : G) {
    ref = r.read_f64("grad." + gname);
    EXPECT_TRUE(all_close("grad." + gname, d(grad), ref, rel * max_abs(ref) + 1e-15, 0));
  }
  (void)E;
}

class MoeReference : public ::testing::TestWithParam<const char*> {};

TEST_P(MoeReference, MatchesPyTorch) { run_fixture<double>(GetParam(), 1e-10, 1e-12); }

TEST_P(MoeReference, FloatMatchesPyTorch) { run_fixture<float>(GetParam(), 2e-5, 1e-6); }

INSTANTIATE_TEST_SUITE_P(Fixtures, MoeReference,
                         ::testing::Values("switch", "mixtral", "capacity", "sigmoid", "noisy",
                                           "gshard", "expert_choice", "shared_gelu"));
INSTANTIATE_TEST_SUITE_P(Routing, MoeReference,
                         ::testing::Values("grouped_sigmoid_bias", "grouped_softmax", "seq_aux",
                                           "seq_aux_deepseek_v3", "seq_aux_gshard"));

// The bias update against the fixture's: from the loads of the whole forward (update_bias), and
// from the loads summed over two micro-batches of half the batch each, as training sums them
// over a step (add_selections + update_selection_bias; dropless top-k routes every token alone,
// so the halves' loads add up to the whole's). sign and sign_centred.
TEST(MoeReferenceBias, UpdateFromOneForwardAndFromMicroBatches) {
  for (const char* name : {"grouped_sigmoid_bias", "seq_aux_deepseek_v3"}) {
    SCOPED_TRACE(name);
    SafeTensorsReader r(fixture_path(std::string("moe_") + name + ".safetensors"));
    const nlohmann::json L = nlohmann::json::parse(r.meta("layer"));
    const int C = L["d_model"], B = L["batch"], Tn = L["seq_len"];
    const V x = as_double(r, "x"), bias = as_double(r, "bias");
    std::map<std::string, V> P;
    for (const char* n : {"router.weight", "experts.w_gate", "experts.w_up", "experts.w_down"})
      P[n] = as_double(r, std::string("param.") + n);
    const MoeParams<double> p{P["router.weight"].data(),
                              nullptr,
                              bias.data(),
                              P["experts.w_gate"].data(),
                              P["experts.w_up"].data(),
                              P["experts.w_down"].data()};
    for (BiasUpdate rule : {BiasUpdate::kSign, BiasUpdate::kSignCentred}) {
      MoeSpec spec = MoeSpec::from_config(ffn_of(L), C);
      spec.bias_update = rule;
      const char* want_name =
          rule == BiasUpdate::kSign ? "bias_next_sign" : "bias_next_sign_centred";
      const V want = r.read_f64(want_name);
      MoeLayer<double> layer(spec);
      Arena measure;
      layer.bind(measure, B, Tn);
      Arena acts(measure.used());
      layer.bind(acts, B, Tn);
      V y(x.size());
      MoeStep<double> step;
      step.batch = B;
      step.seq_len = Tn;
      step.training = true;
      layer.forward(y.data(), x.data(), p, step);
      V b = bias;
      layer.update_bias(b.data());
      EXPECT_TRUE(all_close(want_name, b, want, 1e-15, 0));
      // Two micro-batches of B/2 sequences, their loads summed, one update.
      V loads(spec.E, 0.0);
      step.batch = B / 2;
      const std::size_t half = std::size_t(B / 2) * Tn * C;
      for (int m = 0; m < 2; ++m) {
        layer.forward(y.data(), x.data() + m * half, p, step);
        layer.add_selections(loads.data());
      }
      b = bias;
      update_selection_bias(b.data(), loads.data(), spec.E, spec.bias_rate, rule);
      EXPECT_TRUE(all_close(std::string(want_name) + " (2 micro-batches)", b, want, 1e-15, 0));
    }
  }
}

}  // namespace
