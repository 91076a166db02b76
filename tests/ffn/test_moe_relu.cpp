// ReMoE (router.kind relu, arXiv 2412.14711): the layer against the PyTorch float64 reference
// tools/reference/moe_relu.py (y, the load-balanced L1 loss, the gradients of Σ y·R + L_reg for
// x and every parameter), its gradients against central differences (op harness, with jitter),
// the λ schedule against a direct recomputation of the paper's rule, and the refusals.
//
// Tolerances as test_moe_reference.cpp's: double 1e-10 relative to each tensor's largest entry
// (summation order only), float 2e-5 (float inputs, sums of up to a few hundred terms).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>

#include "../fixture_util.h"
#include "../grad_check.h"
#include "moe/core/error.h"
#include "moe/core/safetensors.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/ffn/moe/remoe.h"
#include "moe/model/transformer.h"
#include "moe/scaling/accounting.h"
#include "moe/train/config.h"
#include "moe_test_util.h"

using namespace moe;
using moe::testing::all_close;
using moe::testing::as_double;
using moe::testing::fixture_path;
using moe::testing::max_abs;

namespace {

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
void run_relu_fixture(double rel, double loss_tol) {
  SafeTensorsReader r(fixture_path("moe_relu.safetensors"));
  const nlohmann::json L = nlohmann::json::parse(r.meta("layer"));
  const int C = L["d_model"], B = L["batch"], Tn = L["seq_len"], N = B * Tn;
  MoeSpec spec;
  spec.C = C;
  spec.E = L["num_experts"];
  spec.H = L["d_expert"];
  spec.k = L["top_k"];
  spec.kind = RouterKind::kRelu;
  spec.normalize = false;
  std::map<std::string, std::vector<T>> P, G;
  for (const char* n : {"router.weight", "experts.w_gate", "experts.w_up", "experts.w_down"}) {
    P[n] = cast<T>(as_double(r, std::string("param.") + n));
    G[n] = std::vector<T>(P[n].size(), T(0));
  }
  MoeParams<T> p{P["router.weight"].data(),
                 nullptr,
                 nullptr,
                 P["experts.w_gate"].data(),
                 P["experts.w_up"].data(),
                 P["experts.w_down"].data()};
  MoeGrads<T> g{G["router.weight"].data(), nullptr, G["experts.w_gate"].data(),
                G["experts.w_up"].data(), G["experts.w_down"].data()};
  std::vector<T> x = cast<T>(as_double(r, "x")), R = cast<T>(as_double(r, "R"));
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
  step.relu_l1 = L["relu_l1"];
  layer.forward(y.data(), x.data(), p, step);
  auto d = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
  EXPECT_TRUE(all_close("y", d(y), r.read_f64("y"), rel * max_abs(r.read_f64("y")), 0));
  const MoeStats& st = layer.stats();
  const double active = r.read_f64("active")[0];
  EXPECT_EQ(st.assignments, int64_t(active));
  EXPECT_DOUBLE_EQ(st.active_per_token, active / N);
  EXPECT_DOUBLE_EQ(st.sparsity, 1 - active / (double(N) * spec.E));
  EXPECT_NEAR(st.l1_loss, r.read_f64("l1_loss")[0], loss_tol * 100);
  EXPECT_NEAR(st.aux_loss, r.read_f64("aux_loss")[0], loss_tol * 100);
  EXPECT_EQ(st.z_loss, 0.0);
  EXPECT_TRUE(layer.selected_experts().empty());  // no fixed slots per token
  layer.backward(dx.data(), g, R.data(), x.data(), p);
  std::vector<double> ref = r.read_f64("grad.x");
  EXPECT_TRUE(all_close("grad.x", d(dx), ref, rel * max_abs(ref), 0));
  for (auto& [name, grad] : G) {
    ref = r.read_f64("grad." + name);
    EXPECT_TRUE(all_close("grad." + name, d(grad), ref, rel * max_abs(ref) + 1e-15, 0));
  }
}

// loss_tol scaled by 100 above: L_reg here is ~4 (the fixture's coefficient 0.37 × L1 ~10).
TEST(MoeRelu, MatchesPyTorch) { run_relu_fixture<double>(1e-10, 1e-12); }
TEST(MoeRelu, FloatMatchesPyTorch) { run_relu_fixture<float>(2e-5, 1e-6); }

// The paper's rule recomputed directly: λ multiplied by α when the step's mean sparsity is
// below 1 − k/E, divided when above, kept when equal; the mean over layers and forwards.
TEST(MoeRelu, ScheduleFollowsThePapersRule) {
  const double init = 1e-8, rate = 1.2;
  const int k = 2, E = 8;  // target sparsity 0.75
  std::vector<Param> ps(3);
  std::vector<float> w(3, 0.f);
  ReluL1Schedule s(init, rate, k, E);
  for (int l = 0; l < 3; ++l) {
    ps[l].name = "layers." + std::to_string(l) + ".ffn.router.l1_exponent";
    ps[l].numel = 1;
    ps[l].w = &w[l];
    s.add_layer(&ps[l]);
  }
  EXPECT_EQ(s.lambda(), init);
  EXPECT_DOUBLE_EQ(s.layer_coefficient(), init / 3);
  // Per step: 3 layers × 2 micro-batches of sparsities.
  const std::vector<std::vector<double>> steps = {
      {0.5, 0.5, 0.5, 0.5, 0.5, 0.5},        // dense: λ·α
      {0.6, 0.7, 0.8, 0.7, 0.7, 0.6},        // mean 0.6833: λ·α
      {0.9, 0.9, 0.8, 0.8, 0.7, 0.7},        // mean 0.8: λ/α
      {0.75, 0.75, 0.75, 0.75, 0.75, 0.75},  // at the target: kept
      {0.74, 0.74, 0.74, 0.74, 0.74, 0.74},  // λ·α
  };
  double direct = init;
  for (const auto& st : steps) {
    double sum = 0;
    for (double v : st) {
      s.add_sparsity(v);
      sum += v;
    }
    const double S = sum / st.size();
    if (S < 0.75) direct *= rate;
    if (S > 0.75) direct /= rate;
    s.end_step();
    s.end_step();  // the other layers' end_step of the same step: no forwards, no change
    EXPECT_DOUBLE_EQ(s.last_sparsity(), S);
    EXPECT_NEAR(s.lambda(), direct, 1e-12 * direct);
    EXPECT_EQ(w[0], w[1]);
    EXPECT_EQ(w[0], w[2]);
  }
  EXPECT_EQ(w[0], 2.f);  // +1 +1 −1 0 +1
  EXPECT_EQ(relu_l1_direction(0.75, k, E), 0);
  // A checkpoint whose layers disagree is refused with the tensor named.
  w[2] = 5.f;
  try {
    (void)s.lambda();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.2.ffn.router.l1_exponent"), std::string::npos);
  }
}

TEST(MoeRelu, RefusesWhatDoesNotApply) {
  auto refused = [](const std::function<void(MoeSpec&)>& edit, const char* field) {
    MoeSpec s = moe::testing::spec_of(RouterKind::kRelu, 4, 2);
    s.normalize = false;
    edit(s);
    try {
      s.validate();
      ADD_FAILURE() << "accepted; expected an error naming " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  refused([](MoeSpec& s) { s.capacity_factor = 1.f; }, "capacity_factor");
  refused([](MoeSpec& s) { s.eval_capacity_factor = 1.f; }, "capacity_factor");
  refused([](MoeSpec& s) { s.bias_balance = true; }, "bias_balance");
  refused([](MoeSpec& s) { s.normalize = true; }, "normalize");
  refused([](MoeSpec& s) { s.sigmoid = true; }, "score");
  refused([](MoeSpec& s) { s.n_group = 2; }, "n_group");
  refused([](MoeSpec& s) { s.routed_scale = 2.f; }, "routed_scaling_factor");
}

// Compute accounting (moe params / moe compare): a relu layer counts top_k active experts (the
// target) and its router as top-k's, so at equal k the two have the same active parameters and
// FLOPs; the total counts the l1_exponent ([1] per layer) and equals what the model allocates.
// A model whose relu layers disagree on k is refused when its layers are linked.
TEST(MoeRelu, AccountingCountsTheTargetK) {
  auto cfg = [](const char* router, int k) {
    return moe::config_from_json(
        nlohmann::json::parse(fmt::format(
            R"({{"model": {{"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn": {{"kind": "moe",
            "num_experts": 8, "top_k": {}, "d_expert": 16, "router": {{"kind": "{}",
            "normalize": false}}}}}}}})",
            k, router)),
        "test");
  };
  const Config relu = cfg("relu", 2), topk = cfg("topk", 2);
  Transformer m(relu.model, 1, 4);
  int64_t allocated = 0;
  for (auto& p : m.params().all()) allocated += int64_t(p.numel);
  const ModelCount a = count_model(relu.model, 16), b = count_model(topk.model, 16);
  EXPECT_EQ(a.total, allocated);
  EXPECT_EQ(a.total, b.total + 2);  // the two l1_exponent tensors
  EXPECT_EQ(a.active, b.active + 2);
  EXPECT_EQ(a.flops_train, b.flops_train);
  EXPECT_EQ(a.flops_fwd, b.flops_fwd);
  Config mixed = relu;
  FfnConfig other = mixed.model.ffn;
  other.moe.top_k = 3;
  mixed.model.ffn_overrides.push_back({1, other});
  try {
    Transformer bad(mixed.model, 1, 4);
    ADD_FAILURE() << "relu layers with different top_k were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("share one L1 coefficient"), std::string::npos)
        << e.what();
  }
}

}  // namespace

// Central differences of Σ y·R + r_aux·L_reg for every input and parameter, and float against
// double (tests/op_test.h). Router init 3/√C keeps logits well away from ReLU's kink at 0
// relative to the difference step; jitter on, so the router's input is the jittered one.
namespace moe::testing {
inline MoeLayerOp relu_op() {
  MoeSpec s = spec_of(RouterKind::kRelu, 5, 2);
  s.normalize = false;
  s.jitter = 0.1f;
  MoeLayerOp op{s, 2, 3};
  op.relu_l1 = 0.37;
  return op;
}
}  // namespace moe::testing
MOE_OP_TEST(MoeReluJitter, moe::testing::relu_op());
