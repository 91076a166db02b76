// The inference engine against the training model: for f32 weights its logits equal the
// Transformer's full forward (every FFN kind and attention feature); prefill in one pass equals
// feeding token by token; the bits do not depend on the thread count; bf16 and Q8_0 files give
// the logits of the same file dequantized to f32 within the tolerance their rounding allows; a
// bf16 KV cache gives the attention of its rounded K and V (against double) and the f32 cache's
// logits within the bound its rounding allows.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "../../src/infer/engine_internal.h"
#include "../error_util.h"
#include "../temp_dir.h"
#include "moe/core/half.h"
#include "moe/data/tokenizer.h"
#include "moe/formats/gguf.h"
#include "moe/formats/gguf_model.h"
#include "moe/formats/model_file.h"
#include "moe/infer/engine.h"
#include "moe/model/transformer.h"
#include "moe/train/checkpoint.h"
#include "moe/train/config.h"

using namespace moe;
using namespace moe::testing;

namespace {

Config parse(const std::string& model_json) {
  return config_from_json(
      nlohmann::json::parse(R"({"train": {"seq_len": 16}, "model": )" + model_json + "}"),
      "test.json");
}

// Every parameter random (norms around 1, biases and gates nonzero) so each feature moves the
// logits. ReMoE's λ exponent is training state that must stay an integer, equal in every layer
// (remoe.h), and moves no logit: left at its initial 0.
void randomize(Transformer& m, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  for (Param& p : m.params().all()) {
    if (p.name.ends_with(".router.l1_exponent")) continue;
    const bool vec = p.shape.size() == 1;
    const float scale = vec ? 0.3f : 0.5f / std::sqrt(float(p.shape.back()));
    for (std::size_t i = 0; i < p.numel; ++i)
      p.w[i] = (p.init == Init::kOnes ? 1.f : 0.f) + scale * n(g);
  }
}

struct Case {
  const char* name;
  const char* model;
};

const Case kCases[] = {
    {"dense_gqa_rownorm",
     R"({"vocab_size": 48, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
         "max_seq_len": 64, "qk_norm": "row", "ffn": {"kind": "dense", "d_ff": 64}})"},
    {"moe_every_feature",
     R"({"vocab_size": 40, "d_model": 24, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
         "head_dim": 8, "max_seq_len": 64, "qk_norm": "head", "qkv_bias": true,
         "rope_style": "interleaved", "tie_embeddings": false,
         "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16,
                 "shared_experts": 1, "shared_d_expert": 20, "shared_gate": true,
                 "router": {"normalize": false, "routed_scaling_factor": 1.5}},
         "ffn_overrides": {"0": {"kind": "dense", "d_ff": 32}}})"},
    {"moe_sigmoid_bias_capacity",
     R"({"vocab_size": 40, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 64,
         "ffn": {"kind": "moe", "num_experts": 8, "top_k": 3, "d_expert": 16,
                 "capacity_factor": 1.0, "eval_capacity_factor": 1.0, "shared_experts": 2,
                 "router": {"score": "sigmoid", "bias_balance": true}}})"},
    {"moe_gelu_noisy_gshard",
     R"({"vocab_size": 40, "d_model": 16, "n_layers": 2, "n_heads": 2, "max_seq_len": 64,
         "ffn": {"kind": "moe", "activation": "gelu", "num_experts": 4, "top_k": 2,
                 "d_expert": 24, "router": {"kind": "noisy_topk"}},
         "ffn_overrides": {"1": {"kind": "moe", "num_experts": 4, "d_expert": 8,
                                  "router": {"kind": "gshard"}}}})"},
    {"peer_and_expert_choice",
     R"({"vocab_size": 40, "d_model": 16, "n_layers": 2, "n_heads": 2, "max_seq_len": 64,
         "ffn": {"kind": "moe", "num_experts": 4, "d_expert": 8, "eval_capacity_factor": 2.0,
                 "router": {"kind": "expert_choice"}},
         "ffn_overrides": {"1": {"kind": "peer", "num_experts": 64, "heads": 2, "top_k": 4,
                                  "d_key": 8, "query_norm": "layernorm"}}})"},
    // ReMoE: a variable number of experts per token (docs/MOE.md).
    {"moe_relu",
     R"({"vocab_size": 40, "d_model": 16, "n_layers": 2, "n_heads": 2, "max_seq_len": 64,
         "ffn": {"kind": "moe", "num_experts": 6, "top_k": 2, "d_expert": 8,
                 "router": {"kind": "relu", "normalize": false}}})"},
};

class EngineVsTransformer : public ::testing::TestWithParam<Case> {};

// Writes a randomized model of `model_json` as our checkpoint; returns its config.
Config write_model(const std::string& path, const std::string& model_json, uint32_t seed) {
  Config cfg = parse(model_json);
  Transformer m(cfg.model, 1, 1);
  m.params().initialize(seed);
  randomize(m, seed);
  CheckpointMeta meta;
  meta.config = cfg;
  save_checkpoint(path, m, nullptr, meta);
  return cfg;
}

std::vector<int32_t> tokens(int n, int V, uint32_t seed) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = int32_t((i * 29 + seed * 7 + 3) % V);
  return t;
}

// The training model's logits [T, V] of `toks` (one sequence, evaluation mode), its weights read
// from r (dequantized to f32 where the file stores another type).
std::vector<float> transformer_logits(const formats::ModelReader& r,
                                      const std::vector<int32_t>& toks) {
  ModelConfig mc = r.config();
  // Generation routes token by token, where capacity never binds: the reference is dropless too.
  for (auto* f : {&mc.ffn})
    if (f->moe.router.kind != RouterConfig::Kind::kExpertChoice) f->moe.eval_capacity_factor = 0;
  for (auto& [l, f] : mc.ffn_overrides)
    if (f.moe.router.kind != RouterConfig::Kind::kExpertChoice) f.moe.eval_capacity_factor = 0;
  const int T = int(toks.size());
  Transformer m(mc, 1, T);
  formats::load_weights(r, m);
  StepInfo info;
  info.training = false;
  m.forward(toks.data(), nullptr, 1, T, info, 0.f);
  return std::vector<float>(m.logits(), m.logits() + std::size_t(T) * mc.vocab_size);
}

float max_abs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Prefill in chunks equals token-by-token feeding (within rounding: other product shapes), and
// 1 and 2 threads give the same bits, with a KV cache of type kv.
void check_prefill_and_threads(const formats::ModelReader& r, int V, infer::KvType kv) {
  const int T = 24;
  const std::vector<int32_t> toks = tokens(T, V, 2);
  infer::EngineOptions o;
  o.max_batch = 7;  // chunks of 7, 7, 7, 3: prefill across chunk boundaries
  o.kv_type = kv;
  auto e = infer::Engine::open(r, o);
  std::vector<float> pre(std::size_t(T) * V), one(std::size_t(T) * V);
  e->feed_all(toks, pre.data());
  e->reset();
  for (int t = 0; t < T; ++t) {
    const float* l = e->feed(std::span<const int32_t>(&toks[t], 1));
    std::copy(l, l + V, one.begin() + std::size_t(t) * V);
  }
  const float tol = 1e-4f * std::max(1.f, max_abs(one));
  for (std::size_t i = 0; i < one.size(); ++i)
    ASSERT_NEAR(pre[i], one[i], tol) << "position " << i / V << " token " << i % V;
  // The whole prompt at once, with 1 and with 2 threads: identical bits.
  const int threads = omp_get_max_threads();
  std::vector<float> t1(std::size_t(T) * V), t2(std::size_t(T) * V);
  omp_set_num_threads(1);
  e->reset();
  e->feed_all(toks, t1.data());
  omp_set_num_threads(2);
  e->reset();
  e->feed_all(toks, t2.data());
  omp_set_num_threads(threads);
  ASSERT_EQ(t1, t2);
}

TEST_P(EngineVsTransformer, F32LogitsEqualTheFullForward) {
  TempDir d;
  const std::string path = d.file("m.safetensors");
  const Config cfg = write_model(path, GetParam().model, 3);
  auto r = formats::open_moe_checkpoint(path);
  const int T = 20, V = cfg.model.vocab_size;
  const std::vector<int32_t> toks = tokens(T, V, 1);
  const std::vector<float> want = transformer_logits(*r, toks);
  auto e = infer::Engine::open(*r);
  EXPECT_EQ(e->owned_bytes() < e->weight_bytes(), true);
  std::vector<float> got(std::size_t(T) * V);
  e->feed_all(toks, got.data());
  EXPECT_EQ(e->position(), T);
  // Same arithmetic in f32 with other summation orders (our kernels vs OpenBLAS): a few ulps of
  // the largest logit, accumulated over the layers; 1e-4 leaves room and catches any wrong term.
  const float tol = 1e-4f * std::max(1.f, max_abs(want));
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol) << "position " << i / V << " token " << i % V;
}

TEST_P(EngineVsTransformer, PrefillEqualsTokenByTokenAndThreadsDoNotChangeTheBits) {
  TempDir d;
  const std::string path = d.file("m.safetensors");
  const Config cfg = write_model(path, GetParam().model, 5);
  auto r = formats::open_moe_checkpoint(path);
  for (infer::KvType kv : {infer::KvType::kF32, infer::KvType::kBF16}) {
    SCOPED_TRACE(std::string("KV cache ") + infer::kv_type_name(kv));
    check_prefill_and_threads(*r, cfg.model.vocab_size, kv);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EngineVsTransformer, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Engine, RefusesWhatDoesNotFit) {
  TempDir d;
  const std::string path = d.file("m.safetensors");
  const Config cfg = write_model(path, kCases[0].model, 1);
  auto r = formats::open_moe_checkpoint(path);
  infer::EngineOptions o;
  o.context = 8;
  auto e = infer::Engine::open(*r, o);
  const std::vector<int32_t> nine = tokens(9, cfg.model.vocab_size, 0);
  expect_error([&] { e->feed(nine); }, {"9 tokens at position 0", "context of 8"});
  EXPECT_EQ(e->position(), 0);
  const std::vector<int32_t> bad = {1, 2, 999};
  expect_error([&] { e->feed(bad); }, {"token id 999", "[0, 48)"});
  o.context = 1000;
  expect_error([&] { infer::Engine::open(*r, o); }, {"context of 1000", "max_seq_len 64"});
}

// bf16 and Q8_0 files: the engine reads them in place; the reference is the training model on
// the same file's weights dequantized to f32, so only the engine's activation rounding differs:
// bf16 rounds each product's x to 8 significant bits (relative error ≤ 2⁻⁹), Q8_0 quantizes x in
// blocks of 32 to steps of max|x|/127 (error ≤ max|x|/254 per element). Through two blocks and
// the head these stay below 1% (bf16) and 3% (Q8_0) of the largest logit in this model; a wrong
// scale, block or row would be off by the logits' own size.
TEST(Engine, Bf16AndQ8FilesMatchTheirF32Dequantization) {
  TempDir d;
  const std::string ckpt = d.file("m.safetensors");
  const Config cfg = write_model(ckpt, R"({"vocab_size": 256, "d_model": 64, "n_layers": 2,
      "n_heads": 4, "max_seq_len": 64, "qk_norm": "row", "tie_embeddings": false,
      "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 32,
              "router": {"normalize": false}}})",
                                 9);
  auto src = formats::open_moe_checkpoint(ckpt);
  const auto tok = data::make_byte_tokenizer();
  const int T = 16, V = cfg.model.vocab_size;
  const std::vector<int32_t> toks = tokens(T, V, 4);
  for (auto [type, rel] :
       {std::pair{formats::GgmlType::kBF16, 0.01f}, std::pair{formats::GgmlType::kQ8_0, 0.03f}}) {
    const std::string path = d.file(formats::ggml_type_name(type) + ".gguf");
    formats::write_gguf_model(*src, *tok, type, path);
    auto r = formats::open_model(path);
    auto e = infer::Engine::open(*r);
    EXPECT_LT(e->owned_bytes(), e->weight_bytes() / 4) << "the matrices are read in place";
    const std::vector<float> want = transformer_logits(*r, toks);
    std::vector<float> got(std::size_t(T) * V);
    e->feed_all(toks, got.data());
    const float tol = rel * max_abs(want);
    for (std::size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], tol)
          << formats::ggml_type_name(type) << " position " << i / V << " token " << i % V;
  }
}

// Double-precision attention of q [hd] over positions 0..len−1 of head kh of K, V [len, row].
std::vector<double> attention_double(const float* q, const std::vector<float>& K,
                                     const std::vector<float>& V, int64_t row, int64_t kh,
                                     int64_t hd, int64_t len, double scale) {
  std::vector<double> s(len), o(hd, 0.0);
  double m = -INFINITY, z = 0;
  for (int64_t j = 0; j < len; ++j) {
    double d = 0;
    for (int64_t e = 0; e < hd; ++e) d += double(q[e]) * K[j * row + kh * hd + e];
    s[j] = d * scale;
    m = std::max(m, s[j]);
  }
  for (int64_t j = 0; j < len; ++j) z += (s[j] = std::exp(s[j] - m));
  for (int64_t j = 0; j < len; ++j)
    for (int64_t e = 0; e < hd; ++e) o[e] += s[j] / z * V[j * row + kh * hd + e];
  return o;
}

// The attention kernel on a bf16 cache is the f32 computation on the rounded K and V: against
// double-precision attention on the same rounded values only f32 rounding differs. Bound, with
// u = 2⁻²⁴: a score s_j = scale·Σ_e q_e·k_je summed in f32 errs by δ ≤ (hd + 1)·u·scale·Σ|q_e
// k_je|; softmax's weights then err by a relative 2δ plus (len + 2)·u for the exp and the sum; the
// weighted sum adds len·u: |o_e − ref_e| ≤ (2δ + (2·len + 2)·u)·max|v|. The test allows twice
// that (libm's exp is within 1 ulp, second-order terms). Against the unrounded K and V the
// bf16 result is off by far more (2⁻⁹ relative per element) than against the rounded ones.
TEST(EngineAttention, Bf16CacheGivesTheAttentionOfItsRoundedValues) {
  const int64_t hd = 64, row = 2 * hd, ctx = 300;
  std::mt19937 g(11);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> q(hd), K(ctx * row), V(ctx * row), Kr(ctx * row), Vr(ctx * row);
  std::vector<uint16_t> Kb(ctx * row), Vb(ctx * row);
  for (float& x : q) x = n(g);
  for (std::size_t i = 0; i < K.size(); ++i) {
    K[i] = n(g);
    V[i] = n(g);
    Kb[i] = f32_to_bf16(K[i]);
    Vb[i] = f32_to_bf16(V[i]);
    Kr[i] = bf16_to_f32(Kb[i]);
    Vr[i] = bf16_to_f32(Vb[i]);
  }
  const float scale = 1.f / std::sqrt(float(hd));
  const double u = std::ldexp(1.0, -24);
  std::vector<float> o(hd), s(ctx);
  for (int64_t len : {int64_t(1), int64_t(7), ctx}) {
    for (int64_t kh : {0, 1}) {
      // The bound from the data: the largest Σ|q·k| and |v| of the positions seen.
      double qk = 0, vmax = 0;
      for (int64_t j = 0; j < len; ++j) {
        double a = 0;
        for (int64_t e = 0; e < hd; ++e) {
          a += std::fabs(double(q[e]) * Kr[j * row + kh * hd + e]);
          vmax = std::max(vmax, double(std::fabs(Vr[j * row + kh * hd + e])));
        }
        qk = std::max(qk, a * scale);
      }
      const double tol = 2 * (2 * (hd + 1) * u * qk + (2 * len + 2) * u) * vmax;
      for (infer::KvType t : {infer::KvType::kBF16, infer::KvType::kF32}) {
        const bool bf = t == infer::KvType::kBF16;
        const infer::detail::KvLayer kv = {t, bf ? (const void*)Kb.data() : K.data(),
                                           bf ? (const void*)Vb.data() : V.data(), row};
        infer::detail::attend_head(o.data(), s.data(), q.data(), kv, kh, hd, len, scale);
        const std::vector<double> want =
            attention_double(q.data(), bf ? Kr : K, bf ? Vr : V, row, kh, hd, len, scale);
        for (int64_t e = 0; e < hd; ++e)
          ASSERT_NEAR(o[e], want[e], tol)
              << infer::kv_type_name(t) << " len " << len << " head " << kh << " element " << e;
        if (bf && len == ctx) {
          // The reference is the right one: the kernel's distance to it is a small fraction of
          // its distance to the attention of the unrounded K and V.
          const std::vector<double> exact =
              attention_double(q.data(), K, V, row, kh, hd, len, scale);
          double off = 0, err = 0;
          for (int64_t e = 0; e < hd; ++e) {
            off = std::max(off, std::fabs(o[e] - exact[e]));
            err = std::max(err, std::fabs(o[e] - want[e]));
          }
          EXPECT_GT(off, 10 * err) << "the bf16 rounding is visible against the unrounded K, V";
        }
      }
    }
  }
}

// The engine with a bf16 KV cache against the same engine with an f32 one. Each cached element
// changes by a relative ≤ 2⁻⁹, so (bound above with 2⁻⁹ for u) each attention output moves by at
// most (2·2⁻⁹·max_j scale·Σ|q·k| + 2⁻⁹)·max|v|: in these unit-gain random models (scaled scores
// up to ~4) about 1.8% of max|v|, and only the attention half of each block carries it. Through
// the blocks' norms and the head the logits stay within 2% of the largest (measured 0.2%); a
// cache read at the wrong position or head is off by the logits' own size. The two must differ
// (the bf16 cache is in use). Dense models only: a router's top-k is discontinuous, so a
// perturbation of 2⁻⁹ may flip a near tie and move a logit by a whole expert's output, which no
// rounding bound covers (the MoE cases check bf16's prefill, decode and threads above).
TEST(Engine, Bf16KvCacheMatchesTheF32CacheWithinItsRounding) {
  const Case dense_rope_interleaved = {
      "dense_bias_headnorm_interleaved",
      R"({"vocab_size": 40, "d_model": 24, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
          "head_dim": 8, "max_seq_len": 64, "qk_norm": "head", "qkv_bias": true,
          "rope_style": "interleaved", "tie_embeddings": false,
          "ffn": {"kind": "dense", "d_ff": 32}})"};
  for (const Case& c : {kCases[0], dense_rope_interleaved}) {
    SCOPED_TRACE(c.name);
    TempDir d;
    const std::string path = d.file("m.safetensors");
    const Config cfg = write_model(path, c.model, 7);
    auto r = formats::open_moe_checkpoint(path);
    const int T = 40, V = cfg.model.vocab_size;
    const std::vector<int32_t> toks = tokens(T, V, 3);
    std::vector<float> f32(std::size_t(T) * V), bf16(std::size_t(T) * V);
    infer::EngineOptions o;
    infer::Engine::open(*r, o)->feed_all(toks, f32.data());
    o.kv_type = infer::KvType::kBF16;
    auto e = infer::Engine::open(*r, o);
    EXPECT_EQ(e->kv_bytes() * 2, infer::Engine::open(*r)->kv_bytes());
    e->feed_all(toks, bf16.data());
    const float tol = 0.02f * max_abs(f32);
    float worst = 0;
    for (std::size_t i = 0; i < f32.size(); ++i) {
      ASSERT_NEAR(bf16[i], f32[i], tol) << "position " << i / V << " token " << i % V;
      worst = std::max(worst, std::fabs(bf16[i] - f32[i]));
    }
    EXPECT_GT(worst, 0.f);
    std::printf("[ info ] %s: bf16 KV vs f32 KV: max |Δlogit| = %.3g%% of max |logit|\n", c.name,
                100 * worst / max_abs(f32));
  }
}

TEST(Engine, KvTypeParsesAndRefusesOthers) {
  EXPECT_EQ(infer::parse_kv_type("f32", "--kv-type"), infer::KvType::kF32);
  EXPECT_EQ(infer::parse_kv_type("bf16", "--kv-type"), infer::KvType::kBF16);
  expect_error([] { infer::parse_kv_type("f16", "--kv-type"); },
               {"--kv-type 'f16': expected f32 or bf16"});
}

}  // namespace
