// evaluate() on the inference engine: the trainer's window rule (trainer.cpp), one window at a
// time, cross-entropy from the logits in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/core/error.h"
#include "moe/train/trainer.h"

namespace moe {

EvalResult evaluate(infer::Engine& engine, const data::TokenStream& s, int T) {
  EvalResult r;
  const int64_t n = int64_t(s.ids.size());
  MOE_CHECK(n >= 2,
            "nothing to evaluate: the text is {} token(s) long; at least 2 are needed (one to "
            "predict from, one to predict)",
            n);
  MOE_CHECK(T > 0 && T <= engine.context(), "window of {} tokens: the engine holds {} positions", T,
            engine.context());
  const int V = engine.config().vocab_size;
  std::vector<float> logits(std::size_t(T) * V);
  double nats = 0;
  // Window w predicts tokens [w·T + 1, w·T + T]; the last window may be shorter.
  for (int64_t st = 0; st < n - 1; st += T) {
    const int len = int(std::min<int64_t>(T, n - 1 - st));
    engine.reset();
    engine.feed_all(std::span<const int32_t>(&s.ids[st], std::size_t(len)), logits.data());
    for (int t = 0; t < len; ++t) {
      const float* l = &logits[std::size_t(t) * V];
      const float mx = *std::max_element(l, l + V);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += std::exp(double(l[v]) - mx);
      nats += double(mx) + std::log(sum) - double(l[s.ids[st + t + 1]]);
    }
    r.bytes += data::count_bytes(s, st + 1, st + 1 + len);
    r.tokens += len;
  }
  r.loss = nats / double(r.tokens);
  r.bpb = data::bits_per_byte(nats, r.bytes);
  return r;
}

}  // namespace moe
