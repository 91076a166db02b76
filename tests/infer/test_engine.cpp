// The inference engine against the training model: for f32 weights its logits equal the
// Transformer's full forward (every FFN kind and attention feature); prefill in one pass equals
// feeding token by token; the bits do not depend on the thread count; bf16 and Q8_0 files give
// the logits of the same file dequantized to f32 within the tolerance their rounding allows.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "../error_util.h"
#include "../temp_dir.h"
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
// logits.
void randomize(Transformer& m, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  for (Param& p : m.params().all()) {
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
  const int T = 24, V = cfg.model.vocab_size;
  const std::vector<int32_t> toks = tokens(T, V, 2);
  infer::EngineOptions o;
  o.max_batch = 7;  // chunks of 7, 7, 7, 3: prefill across chunk boundaries
  auto e = infer::Engine::open(*r, o);
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

}  // namespace
