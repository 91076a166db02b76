// Issue 20's routing rules beyond the PyTorch fixtures (test_moe_reference.cpp): gradients of
// the group-limited router and of the sequence-wise balance loss against central differences in
// double (and float against double), group-limited top-k against its definition, the bias
// update's formulas, and the one-line errors of the new fields.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "../error_util.h"
#include "../grad_check.h"
#include "moe/ffn/moe/routing_rules.h"
#include "moe/kernels/topk.h"
#include "moe/train/config.h"
#include "moe_test_util.h"

using namespace moe;
using namespace moe::testing;

// Gradients (central differences in double) and the float path of the MoE layer with each new
// rule, through the declarative op of moe_test_util.h. Group-limited routing selects on
// piecewise-constant masks, so its gradient is the plain gate gradient of the chosen experts.
MOE_OP_TEST(MoeGroupedSigmoidScaled, MoeLayerOp{with(spec_of(RouterKind::kTopK, 8, 3),
                                                     [](MoeSpec& s) {
                                                       s.sigmoid = true;  // DeepSeek-V3
                                                       s.n_group = 4;
                                                       s.topk_group = 2;
                                                       s.routed_scale = 2.5f;
                                                     }),
                                                2, 3});
MOE_OP_TEST(MoeGroupedSoftmaxCapacity, MoeLayerOp{with(spec_of(RouterKind::kTopK, 6, 2),
                                                       [](MoeSpec& s) {
                                                         s.n_group = 3;
                                                         s.topk_group = 1;
                                                         s.capacity_factor = 1.0f;
                                                       }),
                                                  2, 4});
MOE_OP_TEST(MoeSequenceAuxTopK, MoeLayerOp{with(spec_of(RouterKind::kTopK, 4, 2),
                                                [](MoeSpec& s) {
                                                  s.aux_scope = AuxLossScope::kSequence;
                                                  s.alpha = 0.3;  // large: a visible gradient
                                                }),
                                           3, 4});
MOE_OP_TEST(MoeSequenceAuxSigmoidGrouped, MoeLayerOp{with(spec_of(RouterKind::kTopK, 8, 2),
                                                          [](MoeSpec& s) {
                                                            s.sigmoid = true;
                                                            s.n_group = 4;
                                                            s.topk_group = 2;
                                                            s.routed_scale = 2.5f;
                                                            s.aux_scope = AuxLossScope::kSequence;
                                                            s.alpha = 0.3;
                                                          }),
                                                     2, 5});
MOE_OP_TEST(MoeSequenceAuxNoisy, MoeLayerOp{with(spec_of(RouterKind::kNoisyTopK, 4, 2),
                                                 [](MoeSpec& s) {
                                                   s.aux_scope = AuxLossScope::kSequence;
                                                   s.alpha = 0.3;
                                                 }),
                                            2, 3});
MOE_OP_TEST(MoeSequenceAuxGShard, MoeLayerOp{with(spec_of(RouterKind::kGShard, 4, 2),
                                                  [](MoeSpec& s) {
                                                    s.capacity_factor = 1.5f;
                                                    s.aux_scope = AuxLossScope::kSequence;
                                                    s.alpha = 0.3;
                                                  }),
                                             3, 3});

namespace {

// An op's inputs and loss weights drawn as run_op_test draws them (out[1]'s weight is the loss
// scale of the aux and z gradients).
OpData<double> make_op_data(const MoeLayerOp& op, uint32_t seed) {
  std::vector<std::vector<double>> xin, r;
  const std::vector<OpArg> args = op.args();
  const std::vector<OpOut> outs = op.outs();
  for (std::size_t i = 0; i < args.size(); ++i)
    xin.push_back(randn(args[i].numel, seed + 17 * uint32_t(i), args[i].scale));
  for (std::size_t j = 0; j < outs.size(); ++j)
    r.push_back(randn(outs[j].numel, seed + 1000 + 31 * uint32_t(j)));
  return make_data<double>(args, outs, xin, r);
}

// The definition: mask every expert outside the topk_group groups with the largest top-2 sums
// (a stable sort: ties to the lower group) to −∞, then the stable top-k of all E.
template <typename T>
std::vector<int32_t> grouped_definition(const std::vector<T>& key, int k, int G, int kg) {
  const int E = int(key.size()), Eg = E / G;
  std::vector<T> gs(G);
  for (int g = 0; g < G; ++g) {
    std::vector<T> v(key.begin() + g * Eg, key.begin() + (g + 1) * Eg);
    std::sort(v.begin(), v.end(), std::greater<T>());
    gs[g] = v[0] + v[1];
  }
  std::vector<int32_t> gidx(G), idx(k);
  std::vector<T> gval(G), val(k), masked(key);
  topk_reference(gidx.data(), gval.data(), gs.data(), G, kg);
  for (int e = 0; e < E; ++e)
    if (std::find(gidx.begin(), gidx.begin() + kg, e / Eg) == gidx.begin() + kg)
      masked[e] = -std::numeric_limits<T>::infinity();
  topk_reference(idx.data(), val.data(), masked.data(), E, k);
  return idx;
}

template <typename T>
void check_grouped_topk_against_definition() {
  uint32_t seed = 1;
  for (const auto& [E, G, kg, k] : std::vector<std::array<int, 4>>{{8, 4, 2, 3},
                                                                   {8, 2, 1, 4},
                                                                   {6, 3, 3, 6},
                                                                   {64, 8, 4, 8},
                                                                   {256, 8, 4, 8},
                                                                   {12, 6, 1, 2}}) {
    for (int rep = 0; rep < 20; ++rep) {
      const std::vector<double> d = randn(E, seed++);
      std::vector<T> key(d.begin(), d.end());
      if (rep % 4 == 3)  // coarse values: many equal keys and equal group scores
        for (T& v : key) v = T(std::round(double(v) * 2));
      std::vector<int32_t> idx(k);
      std::vector<T> val(k), scratch(group_topk_scratch_values(E, G));
      std::vector<int32_t> iscratch(group_topk_scratch_indices(G));
      group_limited_topk(idx.data(), val.data(), key.data(), E, k, G, kg, scratch.data(),
                         iscratch.data());
      ASSERT_EQ(idx, grouped_definition(key, k, G, kg))
          << "E " << E << " G " << G << " topk_group " << kg << " k " << k << " rep " << rep;
      for (int s = 0; s < k; ++s) ASSERT_EQ(val[s], key[idx[s]]);
    }
  }
}

TEST(MoeRouting, GroupLimitedTopKIsItsDefinition) {
  check_grouped_topk_against_definition<float>();
  check_grouped_topk_against_definition<double>();
}

TEST(MoeRouting, GroupsAreScoredByTheirTwoBestKeysNotTheBest) {
  // Group 0 = {0.9, 0.0}: best 0.9, top-2 sum 0.9; group 1 = {0.6, 0.5}: best 0.6, sum 1.1.
  // DeepSeek-V3 picks group 1 (V2's max rule would pick group 0).
  const std::vector<double> key = {0.9, 0.0, 0.6, 0.5};
  std::vector<int32_t> idx(2), is(group_topk_scratch_indices(2));
  std::vector<double> val(2), sc(group_topk_scratch_values(4, 2));
  group_limited_topk(idx.data(), val.data(), key.data(), 4, 2, 2, 1, sc.data(), is.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{2, 3}));
  // Equal group scores: the lower group.
  const std::vector<double> tie = {0.5, 0.5, 0.6, 0.4};
  group_limited_topk(idx.data(), val.data(), tie.data(), 4, 2, 2, 1, sc.data(), is.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1}));
}

TEST(MoeRouting, OneGroupOfAllIsPlainTopK) {
  // topk_group = n_group keeps every expert: the layer routes exactly as without groups.
  MoeSpec s = spec_of(RouterKind::kTopK, 8, 3);
  s.sigmoid = true;
  MoeSpec g = s;
  g.n_group = 4;
  g.topk_group = 4;
  MoeLayerOp a{s, 2, 5}, b{g, 2, 5};
  OpData<double> da = make_op_data(a, 5), db = make_op_data(b, 5);
  a.forward(da);
  b.forward(db);
  EXPECT_EQ(da.out, db.out);
}

TEST(MoeRouting, BiasUpdateFormulas) {
  // loads 6, 2, 4, 4 (mean 4): b += γ·(−1, +1, 0, 0); centred: minus the new mean.
  const std::vector<double> loads = {6, 2, 4, 4};
  std::vector<double> b = {0.1, -0.2, 0.3, 0.0};
  update_selection_bias(b.data(), loads.data(), 4, 0.5f, BiasUpdate::kSign);
  EXPECT_EQ(b, (std::vector<double>{0.1 - 0.5, -0.2 + 0.5, 0.3, 0.0}));
  std::vector<double> c = {0.1, -0.2, 0.3, 0.0};
  update_selection_bias(c.data(), loads.data(), 4, 0.5f, BiasUpdate::kSignCentred);
  const double mean = ((0.1 - 0.5) + (-0.2 + 0.5) + 0.3 + 0.0) / 4;
  for (int e = 0; e < 4; ++e) EXPECT_DOUBLE_EQ(c[e], b[e] - mean) << e;
  double sum = 0;
  for (double v : c) sum += v;
  EXPECT_NEAR(sum, 0.0, 1e-16);
}

TEST(MoeRouting, SequenceScopeWithOneSequenceIsTheMicroBatchLoss) {
  // B = 1: the sequence is the micro-batch, so loss and gradients are the same.
  for (RouterKind kind : {RouterKind::kTopK, RouterKind::kGShard, RouterKind::kNoisyTopK}) {
    MoeSpec s = spec_of(kind, 4, 2);
    s.alpha = 0.3;
    MoeSpec q = s;
    q.aux_scope = AuxLossScope::kSequence;
    MoeLayerOp a{s, 1, 7}, b{q, 1, 7};
    OpData<double> da = make_op_data(a, 9), db = make_op_data(b, 9);
    a.forward(da);
    b.forward(db);
    EXPECT_NEAR(da.out[1][0], db.out[1][0], 1e-15);
    a.backward(da);
    b.backward(db);
    for (std::size_t i = 0; i < da.din.size(); ++i)
      EXPECT_TRUE(all_close(fmt::format("d{}", i), da.din[i], db.din[i], 1e-15, 1e-12));
  }
}

TEST(MoeRouting, NewFieldsRefuseBadValuesInOneLine) {
  auto refused = [](MoeSpec s, std::vector<std::string> parts) {
    expect_error([&] { MoeLayer<float> layer(s); }, parts);
  };
  MoeSpec s = spec_of(RouterKind::kTopK, 8, 2);
  s.n_group = 3;
  refused(s, {"model.ffn.router.n_group", "3", "divisor of num_experts = 8"});
  s.n_group = 8;  // one expert per group: no top-2
  refused(s, {"model.ffn.router.n_group", "8", ">= 2 experts per group"});
  s.n_group = 4;
  s.topk_group = 5;
  refused(s, {"model.ffn.router.topk_group", "5", "1..n_group = 4"});
  s.topk_group = 1;
  s.k = 3;  // one group of 2 experts
  refused(s, {"model.ffn.top_k", "3", "= 2"});
  s = spec_of(RouterKind::kGShard, 8, 2);
  s.n_group = 2;
  refused(s, {"model.ffn.router.n_group", "2", "topk router"});
  // And in the config file, where the router's own fields can tell.
  auto cfg_error = [](const char* router) {
    return error_of([&] {
      config_from_json(nlohmann::json::parse(std::string(R"({"model": {"ffn": {"kind": "moe",
          "num_experts": 8, "top_k": 2, "router": )") +
                                             router + "}}}"),
                       "test.json");
    });
  };
  EXPECT_NE(cfg_error(R"({"n_group": 4, "topk_group": 6})").find("topk_group"), std::string::npos);
  EXPECT_NE(cfg_error(R"({"kind": "noisy_topk", "n_group": 2})").find("n_group"),
            std::string::npos);
  EXPECT_NE(cfg_error(R"({"bias_update": "centred"})").find("sign_centred"), std::string::npos);
  const Config c = config_from_json(
      nlohmann::json::parse(R"({"model": {"ffn": {"kind": "moe", "num_experts": 8, "top_k": 2,
          "aux_loss_scope": "sequence", "router": {"n_group": 4, "topk_group": 2,
          "bias_update": "sign_centred"}}}})"),
      "test.json");
  const MoeSpec m = MoeSpec::from_config(c.model.ffn, 16);
  EXPECT_EQ(m.n_group, 4);
  EXPECT_EQ(m.topk_group, 2);
  EXPECT_EQ(m.bias_update, BiasUpdate::kSignCentred);
  EXPECT_EQ(m.aux_scope, AuxLossScope::kSequence);
}

}  // namespace
