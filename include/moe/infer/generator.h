// Text generation over the inference engine (infer/engine.h) with the sampler chain
// (infer/sampler.h):
//
//   reset the engine; feed the whole prompt in one call (the engine's batched prefill);
//   repeat: sample a token from the last logits, stream its text, feed it (one decode step).
//
// Ends after max_new_tokens, when the text contains a stop string (infer/text_stream.h: the
// stop string is not shown), or when the context is full: the prompt and the generated tokens
// together never exceed engine.context() positions. There is no sliding window: a full context
// stops generation, as in llama.cpp, and a prompt with no room for one generated token is refused.
//
// Memory besides the engine: the last repeat_last_n ids (the penalties' window, which starts
// with the prompt's tail, as llama.cpp's sampler accepts the prompt) and the bytes the text
// stream holds; generated ids are not kept. Deterministic: the engine's logits do not depend on
// the thread count and the draws are keyed by (seed, tokens sampled), so a seed gives the same
// text for any thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moe/data/tokenizer.h"
#include "moe/infer/engine.h"
#include "moe/infer/sampler.h"

namespace moe::infer {

struct GenerateOptions {
  int max_new_tokens = 200;
  SamplerOptions sampler;
  std::vector<std::string> stop;  // stop strings (none: run to max_new_tokens or the context)
  // The vocabulary's end-of-generation ids (data::eog_ids: llama.cpp's set — eos, eot, eom, …);
  // drawing one ends the generation and it is not printed. Empty: none (our byte and BPE
  // tokenizers).
  std::vector<int32_t> eog;
};

enum class StopReason { kMaxTokens, kStopString, kContextFull, kEndOfText };

struct GenerateResult {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  StopReason reason = StopReason::kMaxTokens;
};

// Errors unless a prompt of `prompt_tokens` leaves room for one generated token in `context`
// positions: "prompt of P tokens exceeds the context of C positions (--context / model
// max_seq_len)". generate() checks it first; the CLI calls it before printing anything.
void check_prompt_fits(int prompt_tokens, int context);

// Generates from prompt (ids of tok, at least one) with engine, calling on_text with each piece
// of text as it becomes safe to show (whole UTF-8 characters, no stop string). Only ids below
// tok.vocab_size() are drawn (rows past it are a padded vocabulary's, with no text). Errors
// (before any feed): invalid options or stop strings, an empty prompt, a prompt that does not
// fit, a tokenizer larger than the model's vocabulary.
GenerateResult generate(Engine& engine, const data::Tokenizer& tok, std::span<const int32_t> prompt,
                        const GenerateOptions& opt,
                        const std::function<void(std::string_view)>& on_text);

}  // namespace moe::infer
