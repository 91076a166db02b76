// MoE semantics and gradients beyond the PyTorch fixtures: finite differences in double,
// reductions to dense layers, the documented drop order, ties, expert choice's causality,
// the fine-grained parametrisation, bias balancing, and a tiny MoE model end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "../error_util.h"
#include "../grad_check.h"
#include "moe/core/error.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/model/transformer.h"
#include "moe/scaling/accounting.h"
#include "moe/train/checkpoint.h"
#include "moe/train/optimizer.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

namespace {

using moe::testing::error_of;
using moe::testing::expect_error;

struct Layer {
  MoeSpec spec;
  int B, T, N;
  V router, noise_w, bias, wg, wu, wd, sg, su, sd, x;
  MoeLayer<double> layer;
  Arena arena;

  Layer(MoeSpec s, int b, int t, uint32_t seed, double router_scale = 3.0)
      : spec(s), B(b), T(t), N(b * t), layer(s) {
    const int E = s.E, C = s.C, H = s.H, S = s.n_shared;
    router = randn(std::size_t(E) * C, seed, router_scale / std::sqrt(double(C)));
    noise_w = randn(std::size_t(E) * C, seed + 1, 0.3);
    bias = V(E, 0.0);
    wg = randn(std::size_t(E) * H * C, seed + 2, 0.5);
    wu = randn(std::size_t(E) * H * C, seed + 3, 0.5);
    wd = randn(std::size_t(E) * C * H, seed + 4, 0.5);
    sg = randn(std::size_t(S) * H * C, seed + 5, 0.5);
    su = randn(std::size_t(S) * H * C, seed + 6, 0.5);
    sd = randn(std::size_t(S) * C * H, seed + 7, 0.5);
    x = randn(std::size_t(N) * C, seed + 8);
    Arena m;
    layer.bind(m, B, T);
    arena = Arena(m.used());
    layer.bind(arena, B, T);
  }
  MoeParams<double> params() const {
    const bool glu = spec.act == Activation::kSwiGLU;
    return {router.data(),
            noise_w.data(),
            bias.data(),
            glu ? wg.data() : nullptr,
            wu.data(),
            wd.data(),
            glu && spec.n_shared ? sg.data() : nullptr,
            spec.n_shared ? su.data() : nullptr,
            spec.n_shared ? sd.data() : nullptr};
  }
  V forward(bool training = true) {
    V y(std::size_t(N) * spec.C);
    layer.forward(y.data(), x.data(), params(), B, T, training, 7, 3, 1, 1.0);
    return y;
  }
};

MoeSpec spec_of(RouterKind kind, int E, int k, int C = 6, int H = 5) {
  MoeSpec s;
  s.C = C;
  s.E = E;
  s.H = H;
  s.k = k;
  s.kind = kind;
  return s;
}

// L = Σ y·R + aux + z; analytic gradients vs central differences for x and every weight.
void check_gradients(Layer& L, uint32_t seed) {
  const int C = L.spec.C;
  V R = randn(std::size_t(L.N) * C, seed);
  auto loss = [&] {
    V y = L.forward();
    return dot(y, R) + L.layer.stats().aux_loss + L.layer.stats().z_loss;
  };
  L.forward();
  const bool glu = L.spec.act == Activation::kSwiGLU;
  V dx(L.x.size(), 0.0), gr(L.router.size(), 0.0), gn(L.noise_w.size(), 0.0), gg(L.wg.size(), 0.0),
      gu(L.wu.size(), 0.0), gd(L.wd.size(), 0.0), sgg(L.sg.size(), 0.0), sgu(L.su.size(), 0.0),
      sgd(L.sd.size(), 0.0);
  MoeGrads<double> g{gr.data(),
                     gn.data(),
                     glu ? gg.data() : nullptr,
                     gu.data(),
                     gd.data(),
                     glu && L.spec.n_shared ? sgg.data() : nullptr,
                     L.spec.n_shared ? sgu.data() : nullptr,
                     L.spec.n_shared ? sgd.data() : nullptr};
  L.layer.backward(dx.data(), g, R.data(), L.x.data(), L.params());
  const double tol = 1e-6;
  EXPECT_TRUE(all_close("dx", dx, numeric_grad(L.x, loss), tol, tol));
  EXPECT_TRUE(all_close("d router", gr, numeric_grad(L.router, loss), tol, tol));
  EXPECT_TRUE(all_close("d w_up", gu, numeric_grad(L.wu, loss), tol, tol));
  EXPECT_TRUE(all_close("d w_down", gd, numeric_grad(L.wd, loss), tol, tol));
  if (glu) {
    EXPECT_TRUE(all_close("d w_gate", gg, numeric_grad(L.wg, loss), tol, tol));
  }
  if (L.spec.kind == RouterKind::kNoisyTopK) {
    EXPECT_TRUE(all_close("d w_noise", gn, numeric_grad(L.noise_w, loss), tol, tol));
  }
  if (L.spec.n_shared) {
    EXPECT_TRUE(all_close("d shared w_up", sgu, numeric_grad(L.su, loss), tol, tol));
    EXPECT_TRUE(all_close("d shared w_down", sgd, numeric_grad(L.sd, loss), tol, tol));
  }
}

TEST(MoeGrad, TopKRenormalisedWithDropsSharedAndJitter) {
  MoeSpec s = spec_of(RouterKind::kTopK, 4, 2);
  s.capacity_factor = 1.0f;  // forces drops with these routings
  s.n_shared = 1;
  s.jitter = 0.1f;
  Layer L(s, 2, 4, 11);
  L.forward();
  EXPECT_GT(L.layer.stats().dropped, 0);
  check_gradients(L, 12);
}

TEST(MoeGrad, ExpertDropoutUsesOneMaskInForwardAndBackward) {
  MoeSpec s = spec_of(RouterKind::kTopK, 4, 2);
  s.expert_dropout = 0.3f;
  Layer L(s, 2, 4, 15);
  V y_train = L.forward(true), y_eval = L.forward(false);
  EXPECT_NE(y_train, y_eval);  // dropout acts in training only
  check_gradients(L, 16);
}

TEST(MoeGrad, SwitchSigmoidNoisyGShardExpertChoiceGelu) {
  MoeSpec sw = spec_of(RouterKind::kTopK, 4, 1);
  sw.normalize = false;
  Layer a(sw, 2, 3, 21);
  check_gradients(a, 22);
  MoeSpec sg = spec_of(RouterKind::kTopK, 5, 2);
  sg.sigmoid = true;
  Layer b(sg, 2, 3, 31);
  check_gradients(b, 32);
  Layer c(spec_of(RouterKind::kNoisyTopK, 4, 2), 2, 3, 41);
  check_gradients(c, 42);
  MoeSpec gs = spec_of(RouterKind::kGShard, 4, 2);
  gs.capacity_factor = 1.5f;
  Layer d(gs, 2, 3, 51);
  check_gradients(d, 52);
  MoeSpec ec = spec_of(RouterKind::kExpertChoice, 4, 1);
  ec.capacity_factor = 2.0f;
  ec.act = Activation::kGELU;
  Layer e(ec, 4, 2, 61);
  check_gradients(e, 62);
}

// Dense SwiGLU FFN in double: y = (silu(x·Wgᵀ)∘(x·Wuᵀ))·Wdᵀ for one expert's weights.
V dense_ffn(const V& x, int N, int C, int H, const double* wg, const double* wu, const double* wd) {
  V y(std::size_t(N) * C, 0.0);
  for (int n = 0; n < N; ++n) {
    std::vector<double> h(H);
    for (int j = 0; j < H; ++j) {
      double g = 0, u = 0;
      for (int c = 0; c < C; ++c) {
        g += x[n * C + c] * wg[j * C + c];
        u += x[n * C + c] * wu[j * C + c];
      }
      h[j] = g / (1 + std::exp(-g)) * u;
    }
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < H; ++j) y[n * C + c] += h[j] * wd[c * H + j];
  }
  return y;
}

// The float layer takes a different GEMM than the double one: with AVX-512 and several experts
// per thread, kernels/panel_gemm (packed B, 12×32 tiles, k passes of 256). At sizes where every
// expert has ~300 rows (two k passes in the weight-gradient products) and H = 72 (the
// [W_gate; W_up] split inside a 32-column panel), it must give the double (OpenBLAS) result up to
// float rounding: 1e-4 of each tensor's largest entry (float sums of ≤ 300 O(1) terms stay
// within ~300·6e-8 ≈ 2e-5 relative; a wrong tile or offset is O(1)).
TEST(MoeKernels, FloatPanelPathMatchesDoubleAtRealSizes) {
  // SwiGLU; GELU; SwiGLU with expert dropout (the same mask redrawn in the backward), capacity
  // drops (dropped assignments get no gate gradient) and router jitter.
  for (int variant = 0; variant < 3; ++variant) {
    const Activation act = variant == 1 ? Activation::kGELU : Activation::kSwiGLU;
    MoeSpec s = spec_of(RouterKind::kTopK, 8, 2, 96, 72);
    s.act = act;
    if (variant == 2) {
      s.expert_dropout = 0.25f;
      s.capacity_factor = 0.9f;
      s.jitter = 0.01f;  // its backward borrows a panel buffer as scratch
    }
    SCOPED_TRACE(::testing::Message() << "variant " << variant);
    Layer L(s, 2, 600, 301);
    const V y = L.forward();
    const int C = s.C;
    const V R = randn(std::size_t(L.N) * C, 302);
    const bool glu = act == Activation::kSwiGLU;
    V dx(L.x.size(), 0.0), gr(L.router.size(), 0.0), gg(L.wg.size(), 0.0), gu(L.wu.size(), 0.0),
        gd(L.wd.size(), 0.0);
    L.layer.backward(dx.data(),
                     {gr.data(), nullptr, glu ? gg.data() : nullptr, gu.data(), gd.data()},
                     R.data(), L.x.data(), L.params());

    auto f = [](const V& v) { return std::vector<float>(v.begin(), v.end()); };
    std::vector<float> x = f(L.x), router = f(L.router), wg = f(L.wg), wu = f(L.wu), wd = f(L.wd),
                       Rf = f(R);
    MoeLayer<float> layer(s);
    Arena m;
    layer.bind(m, L.B, L.T);
    Arena acts(m.used());
    layer.bind(acts, L.B, L.T);
    MoeParams<float> p{router.data(), nullptr,  nullptr, glu ? wg.data() : nullptr,
                       wu.data(),     wd.data()};
    std::vector<float> yf(y.size()), dxf(x.size(), 0.f), grf(router.size(), 0.f),
        ggf(wg.size(), 0.f), guf(wu.size(), 0.f), gdf(wd.size(), 0.f);
    layer.forward(yf.data(), x.data(), p, L.B, L.T, true, 7, 3, 1, 1.f);
    layer.backward(dxf.data(),
                   {grf.data(), nullptr, glu ? ggf.data() : nullptr, guf.data(), gdf.data()},
                   Rf.data(), x.data(), p);
    EXPECT_EQ(layer.selected_experts(), L.layer.selected_experts());
    auto close = [](const char* what, const std::vector<float>& got, const V& ref) {
      return all_close(what, V(got.begin(), got.end()), ref, 1e-4 * max_abs(ref), 0);
    };
    EXPECT_TRUE(close("y", yf, y));
    EXPECT_TRUE(close("dx", dxf, dx));
    EXPECT_TRUE(close("d router", grf, gr));
    EXPECT_TRUE(close("d w_up", guf, gu));
    EXPECT_TRUE(close("d w_down", gdf, gd));
    if (glu) {
      EXPECT_TRUE(close("d w_gate", ggf, gg));
    }
  }
}

TEST(MoeKernels, BadPanelGemmSettingIsRefusedByName) {
  // MOE_PANEL_GEMM takes 0, 1 or nothing; anything else is an error naming it and the value.
  ::setenv("MOE_PANEL_GEMM", "yes", 1);
  MoeLayer<float> layer(spec_of(RouterKind::kTopK, 4, 2, 16, 8));
  Arena m;
  expect_error([&] { layer.bind(m, 1, 8); }, {"MOE_PANEL_GEMM", "'yes'", "expected 0"});
  ::unsetenv("MOE_PANEL_GEMM");
}

TEST(MoeSemantics, OneExpertTopOneIsTheDenseFfn) {
  MoeSpec s = spec_of(RouterKind::kTopK, 1, 1);
  s.normalize = false;  // p = softmax over one expert = 1 exactly
  Layer L(s, 2, 3, 71);
  V y = L.forward();
  EXPECT_TRUE(all_close(
      "y", y, dense_ffn(L.x, L.N, s.C, s.H, L.wg.data(), L.wu.data(), L.wd.data()), 1e-12, 1e-12));
}

TEST(MoeSemantics, TwoExpertsTopTwoIsTheProbabilityWeightedSum) {
  MoeSpec s = spec_of(RouterKind::kTopK, 2, 2);
  Layer L(s, 2, 3, 81);
  V y = L.forward();
  const int C = s.C, H = s.H;
  V y0 = dense_ffn(L.x, L.N, C, H, L.wg.data(), L.wu.data(), L.wd.data());
  V y1 = dense_ffn(L.x, L.N, C, H, L.wg.data() + H * C, L.wu.data() + H * C, L.wd.data() + C * H);
  V ref(y.size());
  for (int n = 0; n < L.N; ++n) {
    double r0 = 0, r1 = 0;
    for (int c = 0; c < C; ++c) {
      r0 += L.x[n * C + c] * L.router[c];
      r1 += L.x[n * C + c] * L.router[C + c];
    }
    const double p0 = 1 / (1 + std::exp(r1 - r0)), p1 = 1 - p0;
    for (int c = 0; c < C; ++c) ref[n * C + c] = p0 * y0[n * C + c] + p1 * y1[n * C + c];
  }
  EXPECT_TRUE(all_close("y", y, ref, 1e-12, 1e-10));
}

TEST(MoeSemantics, DroplessEqualsInfiniteCapacity) {
  MoeSpec s = spec_of(RouterKind::kTopK, 4, 2);
  Layer a(s, 2, 4, 91);
  s.capacity_factor = 1e6f;
  Layer b(s, 2, 4, 91);
  EXPECT_EQ(a.forward(), b.forward());
  EXPECT_EQ(b.layer.stats().dropped, 0);
}

TEST(MoeSemantics, DropOrderIsFirstChoicesFirstThenTokenIndex) {
  // Every token prefers expert 0 (first choice) then expert 1; capacity 3 per expert.
  MoeSpec s = spec_of(RouterKind::kTopK, 3, 2);
  s.capacity_factor = 1.5f;  // cap = ceil(1.5·6·2/3) = 6
  Layer L(s, 1, 6, 101);
  for (auto& v : L.x) v = std::abs(v) + 0.5;  // positive inputs
  for (int c = 0; c < s.C; ++c) {
    L.router[0 * s.C + c] = 2.0;  // expert 0 largest, then 1, then 2
    L.router[1 * s.C + c] = 1.0;
    L.router[2 * s.C + c] = 0.0;
  }
  s.capacity_factor = 0.75f;  // cap = ceil(0.75·6·2/3) = 3
  Layer M(s, 1, 6, 101);
  M.x = L.x;
  M.router = L.router;
  M.forward();
  // Slot 0 (expert 0): tokens 0,1,2 kept, 3,4,5 dropped; slot 1 (expert 1): the same.
  const std::vector<int32_t> expect_drop = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1};
  EXPECT_EQ(M.layer.dropped_mask(), expect_drop);
  const std::vector<int32_t> expect_sel = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
  EXPECT_EQ(M.layer.selected_experts(), expect_sel);
  // Dropped tokens contribute nothing: their output is exactly zero (no shared experts).
  V y = M.forward();
  for (int n = 3; n < 6; ++n)
    for (int c = 0; c < s.C; ++c) EXPECT_EQ(y[n * s.C + c], 0.0);
}

TEST(MoeSemantics, TiesGoToTheLowerExpertIndex) {
  MoeSpec s = spec_of(RouterKind::kTopK, 5, 2);
  Layer L(s, 1, 4, 111);
  std::fill(L.router.begin(), L.router.end(), 0.0);  // all logits equal
  L.forward();
  EXPECT_EQ(L.layer.selected_experts(), (std::vector<int32_t>{0, 1, 0, 1, 0, 1, 0, 1}));
}

TEST(MoeSemantics, ExpertChoiceNeverLooksAtLaterTokensOfTheSameSequence) {
  MoeSpec s = spec_of(RouterKind::kExpertChoice, 4, 1);
  s.capacity_factor = 1.0f;
  const int B = 4, T = 5;
  Layer L(s, B, T, 121);
  V y1 = L.forward();
  for (int c = 0; c < s.C; ++c) L.x[(0 * T + 4) * s.C + c] += 3.0;  // sequence 0, last position
  V y2 = L.forward();
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T - 1; ++t)
      for (int c = 0; c < s.C; ++c)
        ASSERT_EQ(y1[(b * T + t) * s.C + c], y2[(b * T + t) * s.C + c]) << b << "," << t;
}

TEST(MoeSemantics, BiasBalanceRaisesTheBiasOfUnderloadedExperts) {
  MoeSpec s = spec_of(RouterKind::kTopK, 4, 1);
  s.bias_balance = true;
  s.bias_rate = 0.01f;
  Layer L(s, 2, 8, 131);
  for (int c = 0; c < s.C; ++c) L.router[c] = 5.0;  // expert 0 attracts (almost) everyone
  for (auto& v : L.x) v = std::abs(v);
  L.forward();
  V b(4, 0.0);
  L.layer.update_bias(b.data());
  EXPECT_LT(b[0], 0);
  EXPECT_GT(b[1] + b[2] + b[3], 0);
}

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

}  // namespace
