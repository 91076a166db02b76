// Generation: the Transformer's KV-cache decoding equals its full forward; the generation loop
// (infer/generator.h) over an engine feeds the prompt once and each drawn token after it, ends
// at a stop string and at a full context, and refuses a prompt with no room. The loop runs here
// over a stand-in engine made of Transformer::decode_step, so it is tested apart from the engine's
// own kernels (those are tests/infer/test_engine.cpp); `moe generate` on the real engine is
// tests/python/test_generate.py.
#include <gtest/gtest.h>

#include <cmath>

#include "../error_util.h"
#include "../train_util.h"
#include "moe/data/tokenizer.h"
#include "moe/infer/generator.h"
#include "moe/model/transformer.h"
#include "moe/train/trainer.h"

using namespace moe;
using namespace moe::testing;
using namespace moe::infer;

namespace {

TEST(Generation, KvCacheDecodingEqualsFullForward) {
  TempDir d;
  Config cfg = tiny_config(d.path, d.path);
  const int T = 12;
  Transformer full(cfg.model, 1, T), step(cfg.model, 1, 1);
  full.params().initialize(7);
  step.params().initialize(7);
  std::vector<int32_t> toks(T);
  for (int i = 0; i < T; ++i) toks[i] = (i * 37 + 11) % 256;
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

// Transformer::decode_step as an Engine (one token at a time), counting feed() calls.
class StepEngine : public Engine {
 public:
  StepEngine(const ModelConfig& cfg, int context, uint64_t seed)
      : model_(cfg, 1, 1), cache_(model_.make_cache(context)), context_(context) {
    model_.params().initialize(seed);
  }
  const ModelConfig& config() const override { return model_.config(); }
  int context() const override { return context_; }
  int position() const override { return pos_; }
  void reset() override { pos_ = 0; }
  const float* feed(std::span<const int32_t> tokens) override {
    EXPECT_LE(pos_ + int(tokens.size()), context_) << "fed past the context";
    ++feeds_;
    const float* l = nullptr;
    for (int32_t t : tokens) l = model_.decode_step(t, pos_++, cache_);
    return l;
  }
  void feed_all(std::span<const int32_t>, float*) override { ADD_FAILURE() << "not used"; }
  uint64_t weight_bytes() const override { return 0; }
  uint64_t owned_bytes() const override { return 0; }
  uint64_t kv_bytes() const override { return 0; }
  uint64_t active_weight_bytes_per_token() const override { return 0; }
  int feeds_ = 0;

 private:
  Transformer model_;
  KVCache cache_;
  int context_, pos_ = 0;
};

struct Output {
  std::string text;
  GenerateResult r;
};

Output run(Engine& e, const std::vector<int32_t>& prompt, const GenerateOptions& o) {
  const auto tok = data::make_byte_tokenizer();
  Output out;
  out.r = generate(e, *tok, prompt, o, [&](std::string_view s) { out.text += s; });
  return out;
}

// The reference: the same model stepped by hand, each token drawn by a Sampler from the logits
// after the previous one, the penalties' window being the whole text so far.
std::string hand_loop(const ModelConfig& cfg, uint64_t init, const std::vector<int32_t>& prompt,
                      const SamplerOptions& so, int n) {
  Transformer m(cfg, 1, 1);
  m.params().initialize(init);
  KVCache cache = m.make_cache(32);
  Sampler s(so, 256);
  std::vector<int32_t> ctx;
  const float* l = nullptr;
  for (int32_t t : prompt) {
    l = m.decode_step(t, int(ctx.size()), cache);
    ctx.push_back(t);
  }
  std::string text;
  for (int i = 0; i < n; ++i) {
    const int32_t t = s.sample(l, ctx);
    text += char(t);
    l = m.decode_step(t, int(ctx.size()), cache);
    ctx.push_back(t);
  }
  return text;
}

TEST(Generation, FeedsThePromptOnceAndEachDrawnTokenAfterIt) {
  TempDir d;
  const ModelConfig cfg = tiny_config(d.path, d.path).model;
  const std::vector<int32_t> prompt = {'t', 'h', 'e', ' '};
  for (float temperature : {0.f, 0.8f}) {
    GenerateOptions o;
    o.max_new_tokens = 12;
    o.sampler.temperature = temperature;
    o.sampler.top_k = 0;  // a random model's logits are flat: let every byte be drawn
    o.sampler.repeat_penalty = 1.3f;
    o.sampler.seed = 5;
    StepEngine e(cfg, 32, 21);
    const Output got = run(e, prompt, o);
    EXPECT_EQ(got.text, hand_loop(cfg, 21, prompt, o.sampler, 12)) << "T " << temperature;
    EXPECT_EQ(got.r.generated_tokens, 12);
    EXPECT_EQ(got.r.reason, infer::StopReason::kMaxTokens);
    EXPECT_EQ(e.feeds_, 12);  // the prompt once, then 11 tokens (the last is never fed)
    EXPECT_EQ(e.position(), 4 + 11);
  }
}

TEST(Generation, StopsAtAStopStringAndWhenTheContextIsFull) {
  TempDir d;
  const ModelConfig cfg = tiny_config(d.path, d.path).model;
  const std::vector<int32_t> prompt = {'a', 'b', 'c'};
  GenerateOptions o;
  o.max_new_tokens = 20;
  o.sampler.temperature = 1;  // varied bytes (greedy repeats one byte on a random model)
  o.sampler.top_k = 0;
  o.sampler.seed = 9;
  StepEngine e(cfg, 32, 3);
  const std::string full = run(e, prompt, o).text;
  ASSERT_EQ(full.size(), 20u);
  // A stop string of the text's bytes 6..8 (spanning three tokens): the text before it.
  o.stop = {full.substr(6, 3)};
  const std::size_t at = full.find(o.stop[0]);
  ASSERT_GT(at, 0u) << "choose another seed: the text starts with its own bytes 6..8";
  StepEngine e2(cfg, 32, 3);
  const Output stopped = run(e2, prompt, o);
  EXPECT_EQ(stopped.text, full.substr(0, at));
  EXPECT_EQ(stopped.r.reason, infer::StopReason::kStopString);
  EXPECT_EQ(stopped.r.generated_tokens, int(at + 3));
  // Context 8, prompt 3: 5 tokens fit (positions 3..7), of which 4 are fed.
  o.stop.clear();
  StepEngine small(cfg, 8, 3);
  const Output full_ctx = run(small, prompt, o);
  EXPECT_EQ(full_ctx.r.reason, infer::StopReason::kContextFull);
  EXPECT_EQ(full_ctx.r.generated_tokens, 5);
  EXPECT_EQ(full_ctx.text, full.substr(0, 5));
  EXPECT_EQ(small.position(), 7);
}

TEST(Generation, EndsAtTheEndOfTextIdWithoutPrintingIt) {
  TempDir d;
  const ModelConfig cfg = tiny_config(d.path, d.path).model;
  const std::vector<int32_t> prompt = {'x', 'y'};
  GenerateOptions o;
  o.max_new_tokens = 16;
  o.sampler.temperature = 1;
  o.sampler.top_k = 0;
  o.sampler.seed = 4;
  StepEngine e(cfg, 32, 7);
  const std::string full = run(e, prompt, o).text;
  ASSERT_EQ(full.size(), 16u);
  // The 6th drawn byte as the end-of-text id, at its first occurrence: the text before it.
  o.eog = {uint8_t(full[5])};
  const std::size_t at = full.find(full[5]);
  StepEngine e2(cfg, 32, 7);
  const Output got = run(e2, prompt, o);
  EXPECT_EQ(got.text, full.substr(0, at));
  EXPECT_EQ(got.r.reason, infer::StopReason::kEndOfText);
  EXPECT_EQ(got.r.generated_tokens, int(at + 1));
}

TEST(Generation, RefusesAPromptWithNoRoomForAToken) {
  TempDir d;
  const ModelConfig cfg = tiny_config(d.path, d.path).model;
  StepEngine e(cfg, 8, 3);
  GenerateOptions o;
  const std::vector<int32_t> prompt(8, 'x');
  expect_error([&] { run(e, prompt, o); },
               {"prompt of 8 tokens exceeds the context of 8 positions (--context / model "
                "max_seq_len)"});
  EXPECT_EQ(e.feeds_, 0);
  expect_error([&] { run(e, {}, o); }, {"the prompt has no tokens"});
  o.sampler.top_p = 2;
  expect_error([&] { run(e, {'a'}, o); }, {"--top-p 2"});
}

}  // namespace
