// The token sampler: llama.cpp's default sampler chain (common/sampling.cpp with
// common_params_sampling's defaults), reimplemented. Per token, on logits [V]:
//
//   1. penalties  over the last repeat_last_n ids of the context (prompt and generated): each
//                 distinct id c times there gets  l > 0 ? l / repeat_penalty : l · repeat_penalty,
//                 then  l -= c · frequency_penalty + presence_penalty
//   2. top-k      keep the k highest logits                                   (top_k = 0: off)
//   3. top-p      softmax over the survivors; keep the shortest highest-first prefix whose
//                 probability mass reaches top_p                              (top_p = 1: off)
//   4. min-p      keep logits ≥ max + ln(min_p), i.e. p ≥ min_p · p_max       (min_p = 0: off)
//   5. temperature  l / temperature; temperature 0 keeps only the argmax (greedy)
//   6. draw       softmax over the survivors, inverted at a uniform u.
//
// Truncation (2–4) sees the penalised logits before temperature, as in llama.cpp: temperature
// shapes the final distribution only. Order: highest logit first, equal logits by lower id (ties
// are where we are stricter than llama.cpp, whose partial sort leaves them unspecified); the
// float arithmetic of top-p's cumulative sum follows llama.cpp's order so the same cut is made
// (tests/python/test_sampler_llama.py compares both chains on random logits).
//
// Deterministic: the n-th token this sampler draws uses u = Rng(seed, stream_id(kPurposeSample))
// .uniform(n) (core/rng.h), so a seed gives the same text for any thread count. Cost per token:
// O(V) for penalties, top-k (k ≤ 512: one insertion scan; larger: nth_element) and min-p, plus
// O(k log k). Top-p without top-k ranks only what its cut needs: the survivors of min-p, in
// blocks of 256, 4096, … (O(V) for a peaked distribution, O(V log V) for a flat one, as
// llama.cpp's own).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace moe::infer {

// Defaults are llama.cpp's common_params_sampling (repeat_last_n is its penalty_last_n).
struct SamplerOptions {
  float temperature = 0.8f;        // ≥ 0; 0 = greedy
  int top_k = 40;                  // ≥ 0; 0 = off
  float top_p = 0.95f;             // in [0, 1]; 1 = off (0 keeps the single best token)
  float min_p = 0.05f;             // in [0, 1]; 0 = off
  float repeat_penalty = 1.0f;     // > 0; 1 = off
  int repeat_last_n = 64;          // ≥ 0 ids of context the penalties look at; 0 = off
  float frequency_penalty = 0.0f;  // subtracted once per occurrence; 0 = off
  float presence_penalty = 0.0f;   // subtracted once per id present; 0 = off
  uint64_t seed = 1;

  // Throws moe::Error naming the command-line flag, the value and the range expected.
  void validate() const;
};

// A token that survived the chain: its id, its logit after penalties and temperature, and its
// probability in the distribution the draw uses.
struct Candidate {
  int32_t id;
  float logit;
  float p;
};

class Sampler {
 public:
  // Validates opt. vocab = V, the length of every logits vector.
  Sampler(const SamplerOptions& opt, int vocab);

  // Picks the next token from logits [V]. recent_tokens: the context's ids, oldest first (only
  // its last repeat_last_n are read). Each call advances the draw counter by one (greedy too).
  // Errors: a NaN or +inf logit, all logits -inf, an id in recent_tokens outside [0, V).
  int32_t sample(const float* logits, std::span<const int32_t> recent_tokens);

  // Steps 1–5 and the probabilities of step 6, without a draw (the counter does not move). The
  // span is valid until the next call. Used by sample() and by the tests.
  std::span<const Candidate> distribution(const float* logits,
                                          std::span<const int32_t> recent_tokens);

  int64_t tokens_sampled() const { return sampled_; }
  const SamplerOptions& options() const { return opt_; }

 private:
  const float* penalized(const float* logits, std::span<const int32_t> recent);
  void top_k(const float* l);
  void top_p();
  void min_p();
  void temperature();
  void softmax();

  SamplerOptions opt_;
  int vocab_;
  int64_t sampled_ = 0;
  std::vector<float> work_;       // [V] the penalised logits (when a penalty is on)
  std::vector<Candidate> cand_;   // the survivors so far
  bool sorted_ = false;           // cand_ is highest-first (else it is in id order)
  std::vector<int32_t> top_idx_;  // scratch of the top-k scan
  std::vector<float> top_val_;
  std::vector<Candidate> scratch_;  // scratch of top-p's min-p prefilter
  std::vector<double> exp_;         // scratch of the final softmax
};

}  // namespace moe::infer
