// The features real MoE architectures need, as llama.cpp computes them (src/models/{llama,
// olmoe,qwen2moe,qwen3moe,deepseek,qwen3}.cpp, llama-graph.cpp build_moe_ffn): RoPE pairings,
// the MoE FFN with routed scaling and Qwen2-MoE's gated shared expert of its own width (a
// plain-loop twin in double), the config spellings, KV-cache decoding with every feature on,
// and a tiny model with every feature on that trains deterministically. The attention features
// against PyTorch: test_reference.cpp (tiny_model_c); the MoE gradients: test_moe.cpp's op tests.
#include <gtest/gtest.h>

#include <cmath>

#include "../error_util.h"
#include "../grad_check.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/model/transformer.h"
#include "moe/nn/rope.h"
#include "moe/train/config.h"
#include "moe/train/optimizer.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

namespace {

// x [N, heads·hd] rotated by llama.cpp's rule: pair i of a head is (2i, 2i+1) (NORM) or
// (i, i+hd/2) (NEOX), turned by pos·θ^(−2i/hd).
V rope_twin(const V& x, int N, int T, int heads, int hd, double theta, bool interleaved) {
  V y = x;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const double a = (n % T) * std::pow(theta, -2.0 * i / hd);
        const int j0 = interleaved ? 2 * i : i, j1 = interleaved ? 2 * i + 1 : i + hd / 2;
        const std::size_t o = std::size_t(n) * heads * hd + h * hd;
        y[o + j0] = x[o + j0] * std::cos(a) - x[o + j1] * std::sin(a);
        y[o + j1] = x[o + j1] * std::cos(a) + x[o + j0] * std::sin(a);
      }
  return y;
}

TEST(ArchFeatures, RopeStylesAreLlamaCppPairingsAndInvertible) {
  const int N = 10, T = 5, heads = 3, hd = 8;
  const V x = randn(std::size_t(N) * heads * hd, 3);
  for (bool inter : {false, true}) {
    SCOPED_TRACE(inter ? "interleaved" : "half");
    RopeTable<double> tab(T, hd, 500.0, inter);
    V y = x;
    rope_apply(y.data(), tab, N, T, 0, heads, false);
    EXPECT_TRUE(all_close("rope", y, rope_twin(x, N, T, heads, hd, 500.0, inter), 1e-14, 1e-14));
    rope_apply(y.data(), tab, N, T, 0, heads, true);  // the backward is the inverse rotation
    EXPECT_TRUE(all_close("inverse", y, x, 1e-14, 1e-14));
  }
}

// ---------------------------------------------------------------------------------------------
// The MoE FFN against a plain-loop twin of llama.cpp's build_moe_ffn (+ the shared branch of
// qwen2moe.cpp / deepseek.cpp): probs = softmax(W_r·x) over all E; the top-k experts; weights =
// their probs, divided by their sum when norm_w; × w_scale; y = Σ w·SwiGLU_e(x) + shared, where
// shared = σ(w_sg·x)·Σ_s SwiGLU_s(x) with the gate, Σ_s SwiGLU_s(x) without.

double swiglu_row(const double* x, int C, int H, const double* wg, const double* wu,
                  const double* wd, int c_out) {
  double y = 0;
  for (int j = 0; j < H; ++j) {
    double g = 0, u = 0;
    for (int c = 0; c < C; ++c) {
      g += wg[j * C + c] * x[c];
      u += wu[j * C + c] * x[c];
    }
    y += wd[c_out * H + j] * g / (1 + std::exp(-g)) * u;
  }
  return y;
}

struct MoeTwinCase {
  bool norm_w;
  float scale;
  int shared, Hs;
  bool gate;
};

class MoeTwin : public ::testing::TestWithParam<MoeTwinCase> {};

TEST_P(MoeTwin, LayerEqualsLlamaCppMoeFfn) {
  const MoeTwinCase tc = GetParam();
  MoeSpec s;
  s.C = 6;
  s.E = 5;
  s.H = 4;
  s.k = 2;
  s.normalize = tc.norm_w;
  s.routed_scale = tc.scale;
  s.n_shared = tc.shared;
  s.Hs = tc.Hs;
  s.shared_gate = tc.gate;
  const int N = 7, C = s.C, E = s.E, H = s.H, S = s.n_shared, Hs = s.shared_H();
  const V x = randn(std::size_t(N) * C, 1), wr = randn(std::size_t(E) * C, 2, 1.5),
          wg = randn(std::size_t(E) * H * C, 3, 0.5), wu = randn(std::size_t(E) * H * C, 4, 0.5),
          wd = randn(std::size_t(E) * C * H, 5, 0.5), sg = randn(std::size_t(S) * Hs * C, 6, 0.5),
          su = randn(std::size_t(S) * Hs * C, 7, 0.5), sd = randn(std::size_t(S) * C * Hs, 8, 0.5),
          wsg = randn(C, 9);
  MoeLayer<double> layer(s);
  Arena m;
  layer.bind(m, 1, N);
  Arena a(m.used());
  layer.bind(a, 1, N);
  MoeStep<double> st;
  st.batch = 1;
  st.seq_len = N;
  V y(std::size_t(N) * C);
  layer.forward(
      y.data(), x.data(),
      {wr.data(), nullptr, nullptr, wg.data(), wu.data(), wd.data(), S ? sg.data() : nullptr,
       S ? su.data() : nullptr, S ? sd.data() : nullptr, tc.gate ? wsg.data() : nullptr},
      st);
  V ref(y.size(), 0.0);
  for (int n = 0; n < N; ++n) {
    const double* xn = x.data() + n * C;
    V p(E);
    double mx = -1e300, z = 0;
    for (int e = 0; e < E; ++e) {
      p[e] = 0;
      for (int c = 0; c < C; ++c) p[e] += wr[e * C + c] * xn[c];
      mx = std::max(mx, p[e]);
    }
    for (int e = 0; e < E; ++e) z += (p[e] = std::exp(p[e] - mx));
    for (int e = 0; e < E; ++e) p[e] /= z;
    // Top-2 by repeated arg-max (the random logits have no ties).
    int e0 = 0;
    for (int e = 1; e < E; ++e) e0 = p[e] > p[e0] ? e : e0;
    int e1 = e0 == 0 ? 1 : 0;
    for (int e = 0; e < E; ++e) e1 = e != e0 && p[e] > p[e1] ? e : e1;
    double w0 = p[e0], w1 = p[e1];
    if (tc.norm_w) {
      const double sum = w0 + w1;
      w0 /= sum;
      w1 /= sum;
    }
    w0 *= tc.scale;
    w1 *= tc.scale;
    double gate = 1;
    if (tc.gate) {
      double t = 0;
      for (int c = 0; c < C; ++c) t += wsg[c] * xn[c];
      gate = 1 / (1 + std::exp(-t));
    }
    for (int c = 0; c < C; ++c) {
      double r = 0;
      for (auto [e, w] : {std::pair{e0, w0}, std::pair{e1, w1}})
        r += w * swiglu_row(xn, C, H, &wg[std::size_t(e) * H * C], &wu[std::size_t(e) * H * C],
                            &wd[std::size_t(e) * C * H], c);
      double sh = 0;
      for (int j = 0; j < S; ++j)
        sh += swiglu_row(xn, C, Hs, &sg[std::size_t(j) * Hs * C], &su[std::size_t(j) * Hs * C],
                         &sd[std::size_t(j) * C * Hs], c);
      ref[n * C + c] = r + gate * sh;
    }
  }
  EXPECT_TRUE(all_close("y", y, ref, 1e-12, 1e-10));
}

// Mixtral / Qwen3-MoE (norm_w), OLMoE (plain), Qwen2-MoE (plain, gated shared expert of its own
// width), DeepSeek V1 (plain, expert_weights_scale, shared experts n_shared·H wide), and both
// with the scale after a renormalisation.
INSTANTIATE_TEST_SUITE_P(Arch, MoeTwin,
                         ::testing::Values(MoeTwinCase{true, 1.f, 0, 0, false},
                                           MoeTwinCase{false, 1.f, 0, 0, false},
                                           MoeTwinCase{false, 1.f, 1, 9, true},
                                           MoeTwinCase{false, 1.5f, 1, 8, false},
                                           MoeTwinCase{true, 2.5f, 2, 3, true}));

// ---------------------------------------------------------------------------------------------
// Config spellings

Config parse(const std::string& model_json) {
  return config_from_json(nlohmann::json::parse("{\"model\": " + model_json + "}"), "test.json");
}

TEST(ArchFeatures, ConfigSpellingsAndRules) {
  // Older configs and checkpoints: qk_norm was a boolean.
  EXPECT_EQ(parse(R"({"qk_norm": false})").model.qk_norm, QkNorm::kNone);
  EXPECT_EQ(parse(R"({"qk_norm": true})").model.qk_norm, QkNorm::kRow);
  const Config c = parse(
      R"({"qk_norm": "head", "qkv_bias": true, "rope_style": "interleaved",
          "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "shared_experts": 1,
                  "shared_d_expert": 24, "shared_gate": true,
                  "router": {"routed_scaling_factor": 2.5}}})");
  EXPECT_EQ(c.model.qk_norm, QkNorm::kHead);
  EXPECT_TRUE(c.model.qkv_bias);
  EXPECT_EQ(c.model.rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ(c.model.ffn.moe.shared_d_expert, 24);
  EXPECT_TRUE(c.model.ffn.moe.shared_gate);
  EXPECT_EQ(c.model.ffn.moe.router.routed_scaling_factor, 2.5f);
  // to_json writes the strings, and they read back to the same config.
  const nlohmann::json j = c.to_json();
  EXPECT_EQ(j["model"]["qk_norm"], "head");
  EXPECT_EQ(j["model"]["rope_style"], "interleaved");
  EXPECT_EQ(config_from_json(j, "round trip").to_json(), j);
  expect_error([] { parse(R"({"qk_norm": "rows"})"); }, {"model.qk_norm", "none, row, head"});
  expect_error([] { parse(R"({"rope_style": "neox"})"); }, {"model.rope_style", "half"});
  expect_error(
      [] {
        parse(R"({"ffn": {"kind": "moe", "num_experts": 4, "top_k": 2,
                          "router": {"kind": "gshard", "routed_scaling_factor": 2}}})");
      },
      {"model.ffn.router.routed_scaling_factor", "topk"});
  expect_error([] { parse(R"({"ffn": {"kind": "moe", "num_experts": 4, "shared_gate": true}})"); },
               {"model.ffn.shared_gate", "shared_experts"});
}

// ---------------------------------------------------------------------------------------------
// A whole model with every feature on: a leading dense block (DeepSeek's
// n_layer_dense_lead), then MoE blocks; GQA, head_dim ≠ d_model / n_heads, untied head.

Config all_features() {
  return parse(R"({"vocab_size": 40, "d_model": 24, "n_layers": 3, "n_heads": 4,
      "n_kv_heads": 2, "head_dim": 8, "max_seq_len": 128, "qk_norm": "head", "qkv_bias": true,
      "rope_style": "interleaved", "tie_embeddings": false,
      "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16,
              "shared_experts": 1, "shared_d_expert": 20, "shared_gate": true,
              "router": {"normalize": false, "routed_scaling_factor": 1.5}},
      "ffn_overrides": {"0": {"kind": "dense", "d_ff": 32}}})");
}

// Random nonzero values for the parameters that start at zero or one (biases, the shared gate,
// norms), so every feature moves the logits.
void perturb(Transformer& m) {
  uint32_t seed = 100;
  for (Param& p : m.params().all())
    if (p.shape.size() == 1) {
      const V r = randn(p.numel, seed++, 0.3);
      for (std::size_t i = 0; i < p.numel; ++i)
        p.w[i] = float((p.init == Init::kOnes ? 1.0 : 0.0) + r[i]);
    }
}

TEST(ArchFeatures, DecodeStepEqualsFullForwardWithEveryFeature) {
  const Config cfg = all_features();
  const int T = 12;
  Transformer full(cfg.model, 1, T), step(cfg.model, 1, 1);
  full.params().initialize(5);
  step.params().initialize(5);
  perturb(full);
  perturb(step);
  ASSERT_NE(full.params().find("layers.1.attn.bq"), nullptr);
  EXPECT_EQ(full.params().find("layers.1.attn.q_norm")->numel, 8u);         // [head_dim]
  EXPECT_EQ(full.params().find("layers.2.ffn.shared.gate")->numel, 24u);    // [C]
  EXPECT_EQ(full.params().find("layers.2.ffn.shared.w_up")->shape[1], 20);  // [S, Hs, C]
  std::vector<int32_t> toks(T);
  for (int i = 0; i < T; ++i) toks[i] = (i * 17 + 3) % 40;
  StepInfo info;
  info.training = false;
  full.forward(toks.data(), nullptr, 1, T, info, 0.f);
  KVCache cache = step.make_cache(T);
  const int V = cfg.model.vocab_size;
  for (int t = 0; t < T; ++t) {
    const float* l = step.decode_step(toks[t], t, cache);
    for (int v = 0; v < V; ++v)
      ASSERT_NEAR(l[v], full.logits()[t * V + v], 1e-4) << "position " << t << " token " << v;
  }
}

// Fifteen AdamW steps on one batch; returns the losses (loss + aux).
std::vector<double> train_losses(const Config& cfg) {
  const int B = 2, T = 12;
  Transformer m(cfg.model, B, T);
  m.params().initialize(9);
  AdamWOptimizer opt(m.params(), cfg.train);
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (int i = 0; i < B * T; ++i) {
    tok[i] = (i * 7 + 1) % 40;
    tgt[i] = (i * 7 + 8) % 40;
  }
  StepInfo info;
  info.training = true;
  std::vector<double> losses;
  for (int s = 0; s < 15; ++s) {
    info.step = s;
    m.params().zero_grad();
    losses.push_back(m.forward(tok.data(), tgt.data(), B, T, info, 1.f) + m.aux_loss());
    m.backward();
    opt.step(s);
  }
  return losses;
}

TEST(ArchFeatures, TinyModelWithEveryFeatureTrainsDeterministically) {
  Config cfg = all_features();
  cfg.train.lr = 2e-2f;
  cfg.train.min_lr = 1e-3f;
  cfg.train.warmup_steps = 3;
  cfg.train.steps = 15;
  const std::vector<double> a = train_losses(cfg), b = train_losses(cfg);
  EXPECT_EQ(a, b);  // bit for bit
  EXPECT_LT(a.back(), 0.7 * a.front()) << "first " << a.front() << " last " << a.back();
}

}  // namespace
