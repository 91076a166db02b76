// The generation loop (include/moe/infer/generator.h).
#include "moe/infer/generator.h"

#include <algorithm>

#include "moe/core/error.h"
#include "moe/infer/text_stream.h"

namespace moe::infer {

namespace {

// The last n ids, contiguous for the sampler: appended to a buffer of up to 2n that drops its
// older half when full, so each push is O(1) amortised and memory stays O(n).
class RecentIds {
 public:
  explicit RecentIds(int n) : n_(std::size_t(n)) {}
  void push(int32_t id) {
    if (n_ == 0) return;
    if (ids_.size() == 2 * n_) ids_.erase(ids_.begin(), ids_.begin() + n_);
    ids_.push_back(id);
  }
  std::span<const int32_t> view() const {
    const std::size_t k = std::min(ids_.size(), n_);
    return std::span<const int32_t>(ids_).last(k);
  }

 private:
  std::size_t n_;
  std::vector<int32_t> ids_;
};

}  // namespace

void check_prompt_fits(int prompt_tokens, int context) {
  MOE_CHECK(prompt_tokens + 1 <= context,
            "prompt of {} tokens exceeds the context of {} positions (--context / model "
            "max_seq_len)",
            prompt_tokens, context);
}

GenerateResult generate(Engine& engine, const data::Tokenizer& tok, std::span<const int32_t> prompt,
                        const GenerateOptions& opt,
                        const std::function<void(std::string_view)>& on_text) {
  MOE_CHECK(opt.max_new_tokens >= 0, "--tokens {}: expected >= 0", opt.max_new_tokens);
  MOE_CHECK(!prompt.empty(), "the prompt has no tokens: give a non-empty prompt");
  MOE_CHECK(tok.vocab_size() <= engine.config().vocab_size,
            "the tokenizer has {} tokens but the model's vocabulary is {}", tok.vocab_size(),
            engine.config().vocab_size);
  Sampler sampler(opt.sampler, tok.vocab_size());
  TextStream text(opt.stop);
  const int P = int(prompt.size());
  check_prompt_fits(P, engine.context());
  GenerateResult r;
  r.prompt_tokens = P;
  if (opt.max_new_tokens == 0) return r;

  RecentIds recent(opt.sampler.repeat_last_n);
  for (int32_t id : prompt) recent.push(id);
  engine.reset();
  const float* logits = engine.feed(prompt);
  auto show = [&](const std::string& s) {
    if (!s.empty() && on_text) on_text(s);
  };
  for (;;) {
    const int32_t id = sampler.sample(logits, recent.view());
    ++r.generated_tokens;
    if (std::find(opt.eog.begin(), opt.eog.end(), id) != opt.eog.end()) {
      r.reason = StopReason::kEndOfText;
      break;
    }
    recent.push(id);
    show(text.push(tok.decode({id})));
    if (text.stopped()) {
      r.reason = StopReason::kStopString;
      break;
    }
    if (r.generated_tokens == opt.max_new_tokens) break;
    if (P + r.generated_tokens >= engine.context()) {  // no position left for the next token
      r.reason = StopReason::kContextFull;
      break;
    }
    logits = engine.feed(std::span<const int32_t>(&id, 1));
  }
  show(text.finish());
  return r;
}

}  // namespace moe::infer
