// Generation: KV-cache decoding equals the full forward, the sliding window keeps the context
// within max_context, and the sampler is greedy at T = 0 and respects top-p.
#include <gtest/gtest.h>

#include <cmath>

#include "../error_util.h"
#include "../train_util.h"
#include "moe/infer/generator.h"
#include "moe/model/transformer.h"
#include "moe/train/trainer.h"

using namespace moe;
using namespace moe::testing;
namespace fs = std::filesystem;

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

TEST(Generation, SlidingWindowKeepsTheContextWithinMaxContext) {
  // Past max_context the last half of the context is re-encoded: the tokens generated after a
  // slide equal those of a fresh generation from that half-context (greedy, so deterministic).
  TempDir d;
  Config cfg = tiny_config(d.path, d.path);
  Transformer m(cfg.model, 1, 1);
  m.params().initialize(13);
  SampleOptions o;
  o.max_new_tokens = 12;
  o.temperature = 0;
  o.max_context = 8;
  std::vector<int32_t> prompt = {1, 2, 3};
  std::vector<int32_t> out = generate(m, prompt, o);
  ASSERT_EQ(out.size(), 12u);
  // The 9th context token triggers the slide: context = last 4 of the first 9.
  std::vector<int32_t> ctx = prompt;
  ctx.insert(ctx.end(), out.begin(), out.begin() + 6);  // 9 tokens
  std::vector<int32_t> half(ctx.end() - 4, ctx.end());
  SampleOptions o2 = o;
  o2.max_new_tokens = 1;
  EXPECT_EQ(generate(m, half, o2)[0], out[6]);
}

TEST(Generation, SamplerIsGreedyAtZeroTemperatureAndRespectsTopP) {
  std::vector<float> logits = {0.f, 3.f, 1.f, 2.9f};
  std::vector<std::pair<float, int32_t>> scratch;
  EXPECT_EQ(sample_token(logits.data(), 4, 0.f, 1.f, 0.99f, scratch), 1);
  // With top_p small only the most likely token survives, whatever the draw.
  for (float u : {0.f, 0.5f, 0.999f})
    EXPECT_EQ(sample_token(logits.data(), 4, 1.f, 0.1f, u, scratch), 1);
  // With top_p = 1 a draw near 1 reaches the least likely token.
  EXPECT_EQ(sample_token(logits.data(), 4, 1.f, 1.f, 0.9999f, scratch), 0);
}

}  // namespace
