#include "moe/infer/generator.h"

#include <algorithm>
#include <cmath>

#include "moe/core/error.h"
#include "moe/core/rng.h"

namespace moe {

int32_t sample_token(const float* logits, int V, float temperature, float top_p, float u,
                     std::vector<std::pair<float, int32_t>>& p) {
  if (temperature <= 0) return int32_t(std::max_element(logits, logits + V) - logits);
  p.resize(V);
  const float mx = *std::max_element(logits, logits + V);
  double sum = 0;
  for (int v = 0; v < V; ++v) {
    p[v] = {std::exp((logits[v] - mx) / temperature), v};
    sum += p[v].first;
  }
  // Highest probability first; ties by lower id so the order is fully determined.
  std::sort(p.begin(), p.end(), [](auto& a, auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  int keep = V;
  if (top_p < 1) {
    double c = 0;
    for (int i = 0; i < V; ++i) {
      c += p[i].first / sum;
      if (c >= top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (int i = 0; i < keep; ++i) kept += p[i].first;
  double target = u * kept, c = 0;
  for (int i = 0; i < keep; ++i) {
    c += p[i].first;
    if (c > target) return p[i].second;
  }
  return p[keep - 1].second;
}

std::vector<int32_t> generate(Transformer& model, const std::vector<int32_t>& prompt,
                              const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  MOE_CHECK(!prompt.empty(), "generate: the prompt must have at least one token");
  MOE_CHECK(opt.temperature >= 0, "generate: temperature {}: expected >= 0 (0 = greedy)",
            opt.temperature);
  MOE_CHECK(opt.top_p > 0 && opt.top_p <= 1, "generate: top_p {}: expected in (0, 1]", opt.top_p);
  const int max_ctx = opt.max_context > 0 ? std::min(opt.max_context, model.config().max_seq_len)
                                          : model.config().max_seq_len;
  const int V = model.config().vocab_size;
  KVCache cache = model.make_cache(max_ctx);
  std::vector<int32_t> ctx(prompt);
  if (int(ctx.size()) > max_ctx) ctx.erase(ctx.begin(), ctx.end() - max_ctx / 2);
  const float* logits = nullptr;
  for (int i = 0; i < int(ctx.size()); ++i) logits = model.decode_step(ctx[i], i, cache);
  std::vector<int32_t> out;
  std::vector<std::pair<float, int32_t>> scratch;
  Rng rng(opt.seed, stream_id(kPurposeSample));
  for (int n = 0; n < opt.max_new_tokens; ++n) {
    const int32_t tok =
        sample_token(logits, V, opt.temperature, opt.top_p, rng.uniform(n), scratch);
    out.push_back(tok);
    if (on_token) on_token(tok);
    ctx.push_back(tok);
    if (int(ctx.size()) > max_ctx) {
      ctx.erase(ctx.begin(), ctx.end() - max_ctx / 2);
      for (int i = 0; i < int(ctx.size()); ++i) logits = model.decode_step(ctx[i], i, cache);
    } else {
      logits = model.decode_step(tok, int(ctx.size()) - 1, cache);
    }
  }
  return out;
}

}  // namespace moe
