// Scaling laws, the compute-optimal planner, and exact parameter counts of published models.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/scaling/accounting.h"
#include "moe/scaling/laws.h"
#include "moe/train/config.h"

using namespace moe;
using namespace moe::scaling;

TEST(ScalingLaw, ValuesAtHandComputedPoints) {
  // Values computed by hand (Python, double) from the papers' coefficients.
  EXPECT_NEAR(law_by_name("moe-e64").loss(1e9, 1e10, 8), 3.241494165028021, 1e-12);
  EXPECT_NEAR(law_by_name("dense").loss(1e9, 1e10), 3.101132501404672, 1e-12);
  // Chinchilla at its own optimum (70B parameters, 1.4T tokens): ≈ 1.94 nats.
  EXPECT_NEAR(law_by_name("chinchilla").loss(70e9, 1.4e12), 1.9366454705587173, 1e-12);
  EXPECT_NEAR(law_by_name("moe-e16").loss(3e8, 5e9, 4), 3.5545031007026684, 1e-12);
  // Granularity only helps, with diminishing returns.
  const Law l = law_by_name("moe-e64");
  EXPECT_LT(l.loss(1e9, 1e10, 16), l.loss(1e9, 1e10, 8));
  EXPECT_THROW(law_by_name("gpt"), Error);
}

TEST(ScalingLaw, BrentFindsTheMinimum) {
  auto f = [](double x, const void*) { return (x - 2.5) * (x - 2.5) + 1.0; };
  EXPECT_NEAR(brent_minimize(f, nullptr, -10, 10), 2.5, 1e-6);
}

TEST(Planner, MeetsTheBudgetAndIsAMinimum) {
  for (double F : {1e18, 1e20, 1e22}) {
    std::vector<Plan> per_g;
    const Plan p = plan_moe(F, 64, &per_g);
    const Shape s = shape_for(p.n_blocks, 64, p.granularity);
    EXPECT_NEAR(p.tokens * s.flops_per_token / F, 1.0, 1e-12) << F;
    EXPECT_NEAR(s.d_model, 64 * p.n_blocks, 1e-9);
    EXPECT_NEAR(p.n_total, s.d_model * s.d_model * (8 * 64 + 4) * p.n_blocks, 1e-3 * p.n_total);
    // Neighbouring sizes at the same G and budget are worse.
    const Law law = law_by_name("moe-e64");
    for (double f : {0.97, 1.03}) {
      const Shape q = shape_for(p.n_blocks * f, 64, p.granularity);
      EXPECT_GT(law.loss(q.n_total, F / q.flops_per_token, p.granularity), p.loss);
    }
    // Every other granularity's optimum is worse.
    for (const Plan& q : per_g) {
      if (q.granularity != p.granularity) {
        EXPECT_GT(q.loss, p.loss);
      }
    }
    EXPECT_GT(p.granularity, 1);  // G = 1 is not optimal (Krajewski et al.)
  }
  // The optimal G grows with the budget.
  EXPECT_LE(plan_moe(1e18, 64).granularity, plan_moe(1e20, 64).granularity);
  EXPECT_LT(plan_moe(1e18, 64).granularity, plan_moe(1e22, 64).granularity);
  EXPECT_THROW(plan_moe(1e20, 32), Error);
}

TEST(Planner, DenseNeedsAboutTwentyTimesTheComputeAt1e20) {
  const Plan p = plan_moe(1e20, 64);
  const double mult = dense_compute_multiplier(p.loss, 1e20);
  // The paper: ~20× at ~1e20 FLOPs, and the gap widens with scale.
  EXPECT_GT(mult, 15);
  EXPECT_LT(mult, 30);
  EXPECT_NEAR(plan_dense(1e20 * mult).loss, p.loss, 1e-9);
  EXPECT_GT(dense_compute_multiplier(plan_moe(1e22, 64).loss, 1e22), mult);
  // The dense optimum uses its budget: 6·N·D = F.
  const Plan d = plan_dense(1e20);
  EXPECT_NEAR(6 * d.n_total * d.tokens / 1e20, 1.0, 1e-12);
}

static ModelCount count_preset(const std::string& name) {
  Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/presets/" + name + ".json");
  return count_model(c.model, c.train.seq_len);
}

TEST(Presets, CountsEqualThePublishedModels) {
  // Exact counts of the released checkpoints (sum of their tensor sizes); the papers round
  // them to 46.7B / 12.9B, 16.4B / 2.8B, 6.9B / 1.3B.
  ModelCount m = count_preset("mixtral-8x7b");
  EXPECT_EQ(m.total, 46702792704);
  EXPECT_NEAR(m.active / 1e9, 12.9, 0.05);
  ModelCount d = count_preset("deepseek-moe-16b");
  EXPECT_EQ(d.total, 16375728128);
  EXPECT_NEAR(d.active / 1e9, 2.8, 0.05);
  ModelCount o = count_preset("olmoe-1b-7b");
  EXPECT_EQ(o.total, 6919161856);
  EXPECT_NEAR(o.active / 1e9, 1.3, 0.05);
}

TEST(Accounting, MoeAndPeerFlopsMatchHandCounts) {
  // One MoE block (C=32, E=4, k=2, H=16, SwiGLU) and one PEER block (h=2, k=3, d_key=8, S=8),
  // byte vocabulary, tied head, T=8 (4 heads of 8).
  Config c = config_from_json(nlohmann::json::parse(R"({"model": {"d_model": 32, "n_layers": 2,
      "n_heads": 4, "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16},
      "ffn_overrides": {"1": {"kind": "peer", "num_experts": 64, "heads": 2, "top_k": 3,
      "d_key": 8}}}, "train": {"seq_len": 8}})"),
                              "test");
  ModelCount m = count_model(c.model, 8);
  const double attn = 2 * 4.0 * 32 * 32, head = 256.0 * 32;
  const double moe_active = 2 * 3.0 * 32 * 16, router = 32.0 * 4;
  const double peer_experts = 2.0 * 2 * 3 * 32, retrieval = 2 * (32.0 * 16 + 2.0 * 8 * 8);
  const double matmul = attn + moe_active + peer_experts + head;
  const double attention_fwd = 2 * 2 * 2 * 32 * 9 / 2.0;
  EXPECT_DOUBLE_EQ(m.flops_train, 6 * matmul + 14 * router + 3 * retrieval + 3 * attention_fwd);
  EXPECT_DOUBLE_EQ(m.flops_fwd, 2 * matmul + 2 * router + retrieval + attention_fwd);
}
