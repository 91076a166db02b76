// MoE semantics and gradients beyond the PyTorch fixtures: finite differences in double,
// reductions to dense layers, the documented drop order, ties, expert choice's causality,
// the fine-grained parametrisation, bias balancing, thousands of experts. The layer inside a
// model: test_moe_model.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>

#include "../error_util.h"
#include "../grad_check.h"
#include "../op_test.h"
#include "moe/core/error.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe_test_util.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

namespace {

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
    layer.forward(y.data(), x.data(), params(), step_of<double>(B, T, training));
    return y;
  }
};

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

}  // namespace

MOE_OP_TEST(MoeTopKDropsSharedJitter, MoeLayerOp{with(spec_of(RouterKind::kTopK, 4, 2),
                                                      [](MoeSpec& s) {
                                                        s.capacity_factor = 1.0f;
                                                        s.n_shared = 1;
                                                        s.jitter = 0.1f;
                                                      }),
                                                 2, 4});
MOE_OP_TEST(MoeSwitchTopOne, MoeLayerOp{with(spec_of(RouterKind::kTopK, 4, 1),
                                             [](MoeSpec& s) { s.normalize = false; }),
                                        2, 3});
MOE_OP_TEST(MoeSigmoid,
            MoeLayerOp{with(spec_of(RouterKind::kTopK, 5, 2), [](MoeSpec& s) { s.sigmoid = true; }),
                       2, 3});
// Qwen2-MoE: plain top-k, shared expert of its own width behind a sigmoid gate; and DeepSeek:
// renormalised or not, the routed scaling factor, two shared experts of another width.
MOE_OP_TEST(MoeQwen2SharedGateAndWidth, MoeLayerOp{with(spec_of(RouterKind::kTopK, 4, 2),
                                                        [](MoeSpec& s) {
                                                          s.normalize = false;
                                                          s.n_shared = 1;
                                                          s.Hs = 7;
                                                          s.shared_gate = true;
                                                        }),
                                                   2, 3});
MOE_OP_TEST(MoeRoutedScaleRenormalised, MoeLayerOp{with(spec_of(RouterKind::kTopK, 5, 2),
                                                        [](MoeSpec& s) {
                                                          s.routed_scale = 2.5f;
                                                          s.n_shared = 2;
                                                          s.Hs = 3;
                                                        }),
                                                   2, 3});
MOE_OP_TEST(MoeRoutedScalePlain, MoeLayerOp{with(spec_of(RouterKind::kTopK, 4, 2),
                                                 [](MoeSpec& s) {
                                                   s.normalize = false;
                                                   s.routed_scale = 0.75f;
                                                 }),
                                            2, 3});
MOE_OP_TEST(MoeSigmoidRoutedScale, MoeLayerOp{with(spec_of(RouterKind::kTopK, 5, 2),
                                                   [](MoeSpec& s) {
                                                     s.sigmoid = true;  // DeepSeek-V3's gates
                                                     s.routed_scale = 2.5f;
                                                   }),
                                              2, 3});
MOE_OP_TEST(MoeNoisyTopK, MoeLayerOp{spec_of(RouterKind::kNoisyTopK, 4, 2), 2, 3});
MOE_OP_TEST(MoeGShard, MoeLayerOp{with(spec_of(RouterKind::kGShard, 4, 2),
                                       [](MoeSpec& s) { s.capacity_factor = 1.5f; }),
                                  2, 3});
MOE_OP_TEST(MoeExpertChoiceGelu, MoeLayerOp{with(spec_of(RouterKind::kExpertChoice, 4, 1),
                                                 [](MoeSpec& s) {
                                                   s.capacity_factor = 2.0f;
                                                   s.act = Activation::kGELU;
                                                 }),
                                            4, 2});

namespace {

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

// Every router kind's gradients and float path: the MOE_OP_TEST registrations above.

// At E = 2048 the gradients still match central differences in double. Checked: all of dx;
// the router rows of the experts the tokens chose and every 32nd other row (the softmax, aux and
// z-loss reach every row); the chosen experts' weights. Every other expert's weight gradient
// must be exactly zero. (A full check would take ~2·10⁵ forwards.)
TEST(MoeGrad, TwoThousandExpertsMatchCentralDifferences) {
  MoeSpec s = spec_of(RouterKind::kTopK, 2048, 2, 4, 3);
  s.capacity_factor = 256.0f;  // cap = ⌈256·8·2/2048⌉ = 2 per expert
  s.jitter = 0.1f;
  Layer L(s, 2, 4, 2048);
  const int E = s.E, C = s.C, H = s.H;
  const V R = randn(std::size_t(L.N) * C, 2049);
  auto loss = [&] {
    V y = L.forward();
    return dot(y, R) + L.layer.stats().aux_loss + L.layer.stats().z_loss;
  };
  L.forward();
  const std::vector<int32_t> chosen = L.layer.selected_experts();
  V dx(L.x.size(), 0.0), gr(L.router.size(), 0.0), gg(L.wg.size(), 0.0), gu(L.wu.size(), 0.0),
      gd(L.wd.size(), 0.0);
  L.layer.backward(dx.data(), {gr.data(), nullptr, gg.data(), gu.data(), gd.data()}, R.data(),
                   L.x.data(), L.params());
  const double tol = 1e-6;
  EXPECT_TRUE(all_close("dx", dx, numeric_grad(L.x, loss), tol, tol));
  // Central difference of the loss in one element.
  auto numeric = [&](V& w, std::size_t i) {
    const double old = w[i], h = 1e-6;
    w[i] = old + h;
    const double lp = loss();
    w[i] = old - h;
    const double lm = loss();
    w[i] = old;
    return (lp - lm) / (2 * h);
  };
  std::vector<bool> is_chosen(E, false);
  for (int32_t e : chosen) is_chosen[e] = true;
  V got, want;
  for (int e = 0; e < E; ++e) {
    if (!is_chosen[e] && e % 32 != 0) continue;
    for (int c = 0; c < C; ++c) {
      got.push_back(gr[std::size_t(e) * C + c]);
      want.push_back(numeric(L.router, std::size_t(e) * C + c));
    }
  }
  EXPECT_TRUE(all_close("d router (sampled rows)", got, want, tol, tol));
  for (int e = 0; e < E; ++e) {
    const std::size_t n = std::size_t(H) * C, o = std::size_t(e) * n;
    for (std::size_t i = o; i < o + n; ++i) {
      if (!is_chosen[e]) {
        ASSERT_EQ(gg[i], 0.0) << "expert " << e;
        ASSERT_EQ(gu[i], 0.0) << "expert " << e;
        ASSERT_EQ(gd[i], 0.0) << "expert " << e;
        continue;
      }
      ASSERT_NEAR(gg[i], numeric(L.wg, i), tol + tol * std::abs(gg[i])) << "w_gate " << i;
      ASSERT_NEAR(gu[i], numeric(L.wu, i), tol + tol * std::abs(gu[i])) << "w_up " << i;
      ASSERT_NEAR(gd[i], numeric(L.wd, i), tol + tol * std::abs(gd[i])) << "w_down " << i;
    }
  }
  EXPECT_EQ(L.layer.stats().dropped, 0);
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
// The float layer (forward and backward, at seed `seed`) against the same layer in double, up to
// float rounding: 1e-4 of each tensor's largest entry.
void check_float_matches_double(Layer& L, uint32_t seed) {
  const MoeSpec& s = L.spec;
  const V y = L.forward();
  const int C = s.C;
  const V R = randn(std::size_t(L.N) * C, seed);
  const bool glu = s.act == Activation::kSwiGLU;
  V dx(L.x.size(), 0.0), gr(L.router.size(), 0.0), gg(L.wg.size(), 0.0), gu(L.wu.size(), 0.0),
      gd(L.wd.size(), 0.0);
  L.layer.backward(dx.data(), {gr.data(), nullptr, glu ? gg.data() : nullptr, gu.data(), gd.data()},
                   R.data(), L.x.data(), L.params());

  auto f = [](const V& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> x = f(L.x), router = f(L.router), bias = f(L.bias), wg = f(L.wg), wu = f(L.wu),
                     wd = f(L.wd), Rf = f(R);
  MoeLayer<float> layer(s);
  Arena m;
  layer.bind(m, L.B, L.T);
  Arena acts(m.used());
  layer.bind(acts, L.B, L.T);
  MoeParams<float> p{router.data(), nullptr,  bias.data(), glu ? wg.data() : nullptr,
                     wu.data(),     wd.data()};
  std::vector<float> yf(y.size()), dxf(x.size(), 0.f), grf(router.size(), 0.f), ggf(wg.size(), 0.f),
      guf(wu.size(), 0.f), gdf(wd.size(), 0.f);
  layer.forward(yf.data(), x.data(), p, step_of<float>(L.B, L.T, true));
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

TEST(MoeKernels, FloatPanelPathMatchesDoubleAtRealSizes) {
  // SwiGLU; GELU; SwiGLU with expert dropout (the same mask redrawn in the backward), capacity
  // drops (dropped assignments get no gate gradient) and router jitter; SwiGLU on OpenBLAS
  // (expert_gemm = blas).
  for (int variant = 0; variant < 4; ++variant) {
    MoeSpec s = spec_of(RouterKind::kTopK, 8, 2, 96, 72);
    s.act = variant == 1 ? Activation::kGELU : Activation::kSwiGLU;
    if (variant == 2) {
      s.expert_dropout = 0.25f;
      s.capacity_factor = 0.9f;
      s.jitter = 0.01f;  // its backward borrows a panel buffer as scratch
    }
    if (variant == 3) s.expert_gemm = ExpertGemm::kBlas;
    SCOPED_TRACE(::testing::Message() << "variant " << variant);
    Layer L(s, 2, 600, 301);
    check_float_matches_double(L, 302);
  }
}

// No limit on the number of experts but memory: at E = 2048 (beyond the old stack arrays'
// 1024) the float layer, with the selection bias (per-thread key scratch) and capacity drops,
// gives the double layer's result.
TEST(MoeKernels, FloatMatchesDoubleAtTwoThousandExperts) {
  MoeSpec s = spec_of(RouterKind::kTopK, 2048, 2, 32, 16);
  s.bias_balance = true;
  s.capacity_factor = 1.5f;
  Layer L(s, 2, 512, 311);
  L.bias = randn(std::size_t(s.E), 312, 0.05);
  check_float_matches_double(L, 313);
  EXPECT_GT(L.layer.stats().dropped, 0);
}

// Every entry point (trainer, `moe bench moe`, tests) builds the layer from a MoeSpec, and the
// constructor refuses a spec it cannot run, naming the config field and the value.
TEST(MoeSemantics, LayerRefusesAnInvalidSpecByFieldName) {
  auto refused = [](MoeSpec s, std::vector<std::string> parts) {
    expect_error([&] { MoeLayer<float> layer(s); }, parts);
  };
  refused(spec_of(RouterKind::kTopK, 4, 5), {"model.ffn.top_k", "5", "1..num_experts = 4"});
  refused(spec_of(RouterKind::kTopK, 0, 1), {"model.ffn.num_experts", "0"});
  refused(spec_of(RouterKind::kGShard, 4, 1), {"model.ffn.top_k", "top-2"});
  MoeSpec s = spec_of(RouterKind::kTopK, 4, 2);
  s.capacity_factor = -1;
  refused(s, {"model.ffn.capacity_factor", "-1"});
  s = spec_of(RouterKind::kNoisyTopK, 4, 2);
  s.sigmoid = true;
  refused(s, {"model.ffn.router.score", "topk"});
  s = spec_of(RouterKind::kTopK, 4, 2);
  s.expert_dropout = 1;
  refused(s, {"model.ffn.expert_dropout", "[0, 1)"});
}

TEST(MoeKernels, ExpertGemmComesFromTheConfig) {
  // model.ffn.expert_gemm picks the experts' GEMM (it changes the bits, so it is config and in
  // the checkpoint; the environment plays no part).
  FfnConfig f;
  f.kind = FfnConfig::Kind::kMoe;
  f.moe.num_experts = 4;
  f.moe.top_k = 2;
  f.moe.d_expert = 8;
  ::setenv("MOE_PANEL_GEMM", "1", 1);  // the old variable: ignored now
  EXPECT_EQ(MoeSpec::from_config(f, 16).expert_gemm, ExpertGemm::kAuto);
  ::unsetenv("MOE_PANEL_GEMM");
  f.moe.expert_gemm = MoeFfnConfig::ExpertGemm::kBlas;
  EXPECT_EQ(MoeSpec::from_config(f, 16).expert_gemm, ExpertGemm::kBlas);
  f.moe.expert_gemm = MoeFfnConfig::ExpertGemm::kPanel;
  EXPECT_EQ(MoeSpec::from_config(f, 16).expert_gemm, ExpertGemm::kPanel);
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

}  // namespace
