// Text generation with a KV cache: prefill the prompt token by token, then sample.
// Sampling: temperature (0 = greedy), then nucleus (top-p) truncation, then a draw from the
// counter-based RNG keyed by (seed, position), so the same seed gives the same text.
// When the context reaches max_context (default: the training seq_len, via the CLI), the last
// half of it is re-encoded into a fresh cache and generation continues (a sliding window).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moe/data/tokenizer.h"
#include "moe/model/transformer.h"

namespace moe {

struct SampleOptions {
  int max_new_tokens = 200;
  float temperature = 0.8f;
  float top_p = 0.95f;
  uint64_t seed = 1;
  // Longest context to attend over; 0 = model.max_seq_len. Set it to the training seq_len:
  // RoPE positions beyond what training saw are not learned, and text degrades past them.
  int max_context = 0;
};

// Picks a token from logits [V]. u is a uniform draw in [0, 1).
int32_t sample_token(const float* logits, int V, float temperature, float top_p, float u,
                     std::vector<std::pair<float, int32_t>>& scratch);

// Returns the generated ids (prompt excluded). on_token, when given, sees each id as it comes.
std::vector<int32_t> generate(Transformer& model, const std::vector<int32_t>& prompt,
                              const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace moe
