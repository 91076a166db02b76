// The MoE FFN inside a model: the config's fine-grained parametrisation, refused fields, the
// accountant against what is allocated, training end to end (a few experts, and 4,096), and
// upcycling a dense checkpoint.
#include <gtest/gtest.h>

#include <cmath>

#include "../error_util.h"
#include "moe/core/error.h"
#include "moe/model/transformer.h"
#include "moe/scaling/accounting.h"
#include "moe/train/checkpoint.h"
#include "moe/train/optimizer.h"

using namespace moe;
using moe::testing::error_of;

namespace {

TEST(MoeConfig, FineGrainedParametrisationMapsToShapes) {
  Config c = config_from_json(nlohmann::json::parse(R"({"model": {"d_model": 32, "n_layers": 2,
      "n_heads": 2, "ffn": {"kind": "moe", "d_ff": 128, "granularity": 4, "expansion": 8}}})"),
                              "test");
  const FfnConfig& f = c.model.ffn;
  EXPECT_EQ(f.moe.num_experts, 32);
  EXPECT_EQ(f.moe.d_expert, 32);
  EXPECT_EQ(f.moe.top_k, 4);
  Transformer m(c.model, 1, 4);
  Param* up = m.params().find("layers.1.ffn.experts.w_up");
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(up->shape, (std::vector<int64_t>{32, 32, 32}));
  EXPECT_EQ(m.params().find("layers.0.ffn.router.weight")->shape, (std::vector<int64_t>{32, 32}));
  // Active FFN parameters equal the dense FFN's (k_base = 1) plus the router.
  ModelCount mc = count_model(c.model, 4);
  EXPECT_EQ(mc.ffn_active, 2 * (3 * 32 * 128 + 32 * 32));
}

TEST(MoeConfig, BadFieldsAreRejectedByName) {
  auto err = [](const char* t) {
    return error_of([&] { config_from_json(nlohmann::json::parse(t), "m.json"); });
  };
  EXPECT_NE(
      err(R"({"model": {"ffn": {"kind": "moe", "num_experts": 4, "top_k": 5}}})").find("top_k"),
      std::string::npos);
  EXPECT_NE(
      err(R"({"model": {"ffn": {"kind": "moe", "num_experts": 4, "router": {"kind": "hash"}}}})")
          .find("topk, noisy_topk, gshard, expert_choice"),
      std::string::npos);
  EXPECT_NE(
      err(R"({"model": {"ffn": {"kind": "moe", "granularity": 3, "expansion": 2, "d_ff": 128}}})")
          .find("not divisible"),
      std::string::npos);
  EXPECT_NE(err(R"({"model": {"ffn": {"kind": "moe", "num_experts": 4, "capacity_factor": -1}}})")
                .find("capacity_factor"),
            std::string::npos);
  EXPECT_NE(
      err(R"({"model": {"ffn": {"kind": "moe", "num_experts": 4, "router": {"kind": "gshard"}, "top_k": 1}}})")
          .find("top-2"),
      std::string::npos);
}

TEST(MoeModel, AccountantEqualsAllocatedForEveryRouter) {
  for (
      const char* ffn :
      {R"({"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16})",
       R"({"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16, "shared_experts": 2, "activation": "gelu"})",
       R"({"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16, "router": {"kind": "noisy_topk"}})",
       R"({"kind": "moe", "num_experts": 4, "top_k": 1, "d_expert": 16, "router": {"bias_balance": true, "score": "sigmoid"}})",
       R"({"kind": "moe", "d_ff": 64, "granularity": 2, "expansion": 4, "router": {"kind": "expert_choice"}})",
       R"({"kind": "peer", "num_experts": 64, "heads": 2, "top_k": 3, "d_key": 8})",
       R"({"kind": "peer", "num_experts": 49, "heads": 3, "top_k": 2, "d_key": 4, "query_norm": "layernorm", "activation": "relu"})",
       R"({"kind": "peer", "num_experts": 16, "heads": 1, "top_k": 2, "d_key": 6, "query_norm": "none"})"}) {
    nlohmann::json j = {{"model",
                         {{"d_model", 32},
                          {"n_layers", 3},
                          {"n_heads", 2},
                          {"ffn", nlohmann::json::parse(ffn)},
                          {"ffn_overrides", {{"0", {{"kind", "dense"}}}}}}}};
    Config c = config_from_json(j, "test");
    Transformer m(c.model, 2, 4);
    int64_t allocated = 0;
    for (auto& p : m.params().all()) allocated += int64_t(p.numel);
    EXPECT_EQ(count_model(c.model, 4).total, allocated) << ffn;
  }
}

TEST(MoeModel, TinyMoeModelTrainsDeterministically) {
  auto run = [] {
    Config c = config_from_json(nlohmann::json::parse(R"({"model": {"d_model": 32, "n_layers": 2,
        "n_heads": 2, "max_seq_len": 16, "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2,
        "d_expert": 32, "capacity_factor": 1.25, "router": {"kind": "noisy_topk"}}},
        "train": {"lr": 0.01, "warmup_steps": 0, "steps": 30, "seq_len": 16}})"),
                                "test");
    Transformer m(c.model, 4, 16);
    m.params().initialize(5);
    AdamWOptimizer opt(m.params(), c.train);
    std::vector<int32_t> x(64), y(64);
    for (int i = 0; i < 64; ++i) {
      x[i] = (i * 7) % 23;
      y[i] = (i * 7 + 7) % 23;
    }
    std::vector<double> losses;
    for (int s = 0; s < 30; ++s) {
      m.params().zero_grad();
      StepInfo info;
      info.step = s;
      losses.push_back(m.forward(x.data(), y.data(), 4, 16, info, 1.f) + m.aux_loss());
      m.backward();
      opt.step(s);
    }
    return losses;
  };
  std::vector<double> a = run(), b = run();
  EXPECT_EQ(a, b);
  EXPECT_LT(a.back(), 0.7 * a.front());
}

TEST(MoeModel, UpcycledCopiesReproduceTheDenseModel) {
  // Every expert a copy of the dense FFN, renormalised top-2, dropless: Σ gates = 1, so the MoE
  // model computes exactly the dense model's function (up to float summation order).
  const char* dense_cfg = R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2,
      "max_seq_len": 8, "ffn": {"d_ff": 64}}, "train": {"seq_len": 8}})";
  Config dc = config_from_json(nlohmann::json::parse(dense_cfg), "dense");
  Transformer dense(dc.model, 2, 8);
  dense.params().initialize(9);
  const std::string path = ::testing::TempDir() + "/moe_upcycle_dense.safetensors";
  save_checkpoint(path, dense, nullptr, {dc, {}, "byte", ""});
  nlohmann::json mj = nlohmann::json::parse(dense_cfg);
  mj["model"]["ffn"] = {{"kind", "moe"}, {"num_experts", 4}, {"top_k", 2}, {"d_ff", 64}};
  Config mc = config_from_json(mj, "moe");
  Transformer moe(mc.model, 2, 8);
  moe.params().initialize(10);
  EXPECT_GT(upcycle_from_dense(path, moe), 0);
  std::vector<int32_t> x(16);
  for (int i = 0; i < 16; ++i) x[i] = (i * 29 + 3) % 256;
  StepInfo info;
  info.training = false;
  dense.forward(x.data(), nullptr, 2, 8, info, 0.f);
  moe.forward(x.data(), nullptr, 2, 8, info, 0.f);
  for (int i = 0; i < 16 * 256; ++i) ASSERT_NEAR(moe.logits()[i], dense.logits()[i], 1e-4) << i;
  // Fine-grained: d_expert = d_ff/2, expert e holds hidden units [(e mod 2)·32, +32).
  mj["model"]["ffn"] = {{"kind", "moe"}, {"num_experts", 4}, {"top_k", 2}, {"d_expert", 32}};
  Config gc = config_from_json(mj, "fine");
  Transformer fine(gc.model, 2, 8);
  upcycle_from_dense(path, fine);
  const Param* up = fine.params().find("layers.1.ffn.experts.w_up");
  const Param* dup = dense.params().find("layers.1.ffn.w_up");
  const Param* down = fine.params().find("layers.1.ffn.experts.w_down");
  const Param* ddown = dense.params().find("layers.1.ffn.w_down");
  for (int e = 0; e < 4; ++e)
    for (int i = 0; i < 32; ++i)
      for (int c = 0; c < 32; ++c) {
        ASSERT_EQ(up->w[(e * 32 + i) * 32 + c], dup->w[((e % 2) * 32 + i) * 32 + c]);
        ASSERT_EQ(down->w[(e * 32 + c) * 32 + i], ddown->w[c * 64 + (e % 2) * 32 + i]);
      }
}

// Any number of experts trains (every buffer is sized at bind from the config): a tiny model
// with 4,096 experts per layer, top-2 with capacity drops and the selection bias, lowers its
// loss on a small synthetic text.
TEST(MoeModel, FourThousandExpertsTrain) {
  Config c = config_from_json(nlohmann::json::parse(R"({"model": {"d_model": 16, "n_layers": 2,
      "n_heads": 2, "max_seq_len": 8, "ffn": {"kind": "moe", "num_experts": 4096, "top_k": 2,
      "d_expert": 8, "capacity_factor": 1.25, "router": {"bias_balance": true}}},
      "train": {"lr": 0.01, "warmup_steps": 0, "steps": 12, "seq_len": 8}})"),
                              "test");
  Transformer m(c.model, 4, 8);
  m.params().initialize(5);
  EXPECT_EQ(m.params().find("layers.0.ffn.experts.w_up")->shape,
            (std::vector<int64_t>{4096, 8, 16}));
  AdamWOptimizer opt(m.params(), c.train);
  std::vector<int32_t> x(32), y(32);
  for (int i = 0; i < 32; ++i) {
    x[i] = (i * 7) % 23;
    y[i] = (i * 7 + 7) % 23;
  }
  std::vector<double> losses;
  for (int s = 0; s < 12; ++s) {
    m.params().zero_grad();
    StepInfo info;
    info.step = s;
    losses.push_back(m.forward(x.data(), y.data(), 4, 8, info, 1.f) + m.aux_loss());
    m.backward();
    opt.step(s);
    ASSERT_TRUE(std::isfinite(losses.back())) << "step " << s;
  }
  EXPECT_LT(losses.back(), 0.8 * losses.front());
}

}  // namespace
