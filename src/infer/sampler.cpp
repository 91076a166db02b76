// The sampler chain (include/moe/infer/sampler.h). Each step mirrors the llama.cpp sampler of
// the same name (src/llama-sampler.cpp) in what it keeps and in the float arithmetic that decides
// it; the order of equal logits is ours (lower id first).
#include "moe/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/kernels/topk.h"

namespace moe::infer {

namespace {

// Highest logit first, equal logits by lower id: a strict total order, so every selection and
// sort below gives one answer.
bool better(const Candidate& a, const Candidate& b) {
  return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
}

// top-k with k up to this uses the insertion scan (O(V) plus ~k·ln(V/k) insertions on typical
// logits, O(V·k) at worst); beyond it nth_element (O(V) with a V-sized copy) wins.
constexpr int kMaxScanK = 512;
// top-p without top-k first ranks only this many (llama.cpp's adaptive first guess).
constexpr int kTopPGuess = 256;

}  // namespace

void SamplerOptions::validate() const {
  MOE_CHECK(std::isfinite(temperature) && temperature >= 0,
            "--temperature {}: expected a number >= 0 (0 = greedy)", temperature);
  MOE_CHECK(top_k >= 0, "--top-k {}: expected >= 0 (0 = off)", top_k);
  MOE_CHECK(top_p >= 0 && top_p <= 1, "--top-p {}: expected in [0, 1] (1 = off)", top_p);
  MOE_CHECK(min_p >= 0 && min_p <= 1, "--min-p {}: expected in [0, 1] (0 = off)", min_p);
  MOE_CHECK(std::isfinite(repeat_penalty) && repeat_penalty > 0,
            "--repeat-penalty {}: expected a number > 0 (1 = off)", repeat_penalty);
  MOE_CHECK(repeat_last_n >= 0, "--repeat-last-n {}: expected >= 0 (0 = off)", repeat_last_n);
  MOE_CHECK(std::isfinite(frequency_penalty), "--frequency-penalty {}: expected a finite number",
            frequency_penalty);
  MOE_CHECK(std::isfinite(presence_penalty), "--presence-penalty {}: expected a finite number",
            presence_penalty);
}

Sampler::Sampler(const SamplerOptions& opt, int vocab) : opt_(opt), vocab_(vocab) {
  opt_.validate();
  MOE_CHECK(vocab > 0, "sampler: vocabulary size {}: expected > 0", vocab);
}

// Step 1. Returns logits itself when no penalty is on, else work_ [V] with the penalised copy.
// The counts come from a sorted copy of the window (at most repeat_last_n ids).
const float* Sampler::penalized(const float* logits, std::span<const int32_t> recent) {
  const bool on =
      opt_.repeat_last_n > 0 &&
      (opt_.repeat_penalty != 1 || opt_.frequency_penalty != 0 || opt_.presence_penalty != 0);
  if (!on || recent.empty()) return logits;
  const std::size_t n = std::min<std::size_t>(recent.size(), std::size_t(opt_.repeat_last_n));
  std::vector<int32_t> ids(recent.end() - n, recent.end());
  for (int32_t id : ids)
    MOE_CHECK(id >= 0 && id < vocab_, "sampler: context token id {}: expected in [0, {})", id,
              vocab_);
  std::sort(ids.begin(), ids.end());
  work_.assign(logits, logits + vocab_);
  for (std::size_t i = 0; i < n;) {
    std::size_t j = i;
    while (j < n && ids[j] == ids[i]) ++j;
    float& l = work_[ids[i]];
    l = l <= 0 ? l * opt_.repeat_penalty : l / opt_.repeat_penalty;
    l -= float(j - i) * opt_.frequency_penalty + opt_.presence_penalty;
    i = j;
  }
  return work_.data();
}

// Step 2. cand_ = the k best, highest first; top_k = 0 keeps all V in id order (unsorted), and
// k ≥ V sorts all V (as llama.cpp's partial sort of k = V does).
void Sampler::top_k(const float* l) {
  const int V = vocab_;
  const int k = opt_.top_k;
  cand_.clear();
  if (k <= 0 || k >= V) {
    cand_.resize(V);
    for (int v = 0; v < V; ++v) cand_[v] = {v, l[v], 0.f};
    sorted_ = k > 0;
    if (sorted_) std::sort(cand_.begin(), cand_.end(), better);
    return;
  }
  if (k <= kMaxScanK) {
    top_idx_.resize(k);
    top_val_.resize(k);
    topk_scan(top_idx_.data(), top_val_.data(), l, V, k);
    for (int j = 0; j < k; ++j) cand_.push_back({top_idx_[j], top_val_[j], 0.f});
  } else {
    cand_.resize(V);
    for (int v = 0; v < V; ++v) cand_[v] = {v, l[v], 0.f};
    std::nth_element(cand_.begin(), cand_.begin() + (k - 1), cand_.end(), better);
    cand_.resize(k);
    std::sort(cand_.begin(), cand_.end(), better);
  }
  sorted_ = true;
}

// Step 3, as llama.cpp: p = expf(l − max) / Σ in float with the sum taken in cand_'s current
// order, then a float running sum over the highest-first order; the cut is the first prefix
// whose sum reaches top_p. Unsorted (no top-k), the best 256 are ranked first and the rest only
// when their mass falls short.
void Sampler::top_p() {
  if (opt_.top_p >= 1 || cand_.empty()) return;
  const std::size_t n = cand_.size();
  float mx = cand_[0].logit;
  if (!sorted_)
    for (const Candidate& c : cand_) mx = std::max(mx, c.logit);
  float sum = 0;
  for (Candidate& c : cand_) {
    c.p = std::exp(c.logit - mx);
    sum += c.p;
  }
  for (Candidate& c : cand_) c.p /= sum;
  std::vector<Candidate>* ranked = &cand_;
  std::size_t have = n;  // entries of *ranked known to be in order
  if (!sorted_) {
    have = n > 1024 ? std::size_t(kTopPGuess) : n;
    scratch_.resize(n);
    std::partial_sort_copy(cand_.begin(), cand_.end(), scratch_.begin(), scratch_.begin() + have,
                           better);
    ranked = &scratch_;
  }
  std::size_t keep = n;
  float cum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (i == have) {  // the guess fell short: rank everything
      std::partial_sort_copy(cand_.begin(), cand_.end(), scratch_.begin(), scratch_.end(), better);
      have = n;
    }
    cum += (*ranked)[i].p;
    if (cum >= opt_.top_p) {
      keep = i + 1;
      break;
    }
  }
  if (ranked != &cand_) std::copy(scratch_.begin(), scratch_.begin() + keep, cand_.begin());
  cand_.resize(keep);
  sorted_ = true;
}

// Step 4: keep l ≥ max + ln(min_p) (float, as llama.cpp), in cand_'s order. The maximum always
// stays.
void Sampler::min_p() {
  if (opt_.min_p <= 0 || cand_.empty()) return;
  float mx = cand_[0].logit;
  if (!sorted_)
    for (const Candidate& c : cand_) mx = std::max(mx, c.logit);
  const float min_logit = mx + std::log(opt_.min_p);
  std::erase_if(cand_, [&](const Candidate& c) { return !(c.logit >= min_logit); });
}

// Step 5 for temperature > 0 (greedy never reaches here).
void Sampler::temperature() {
  for (Candidate& c : cand_) c.logit /= opt_.temperature;
}

// Step 6's distribution: softmax over the survivors with l − max and exp in double (a float
// difference would cost a relative |l − max|·2⁻²⁴ in each small probability), rounded to float.
void Sampler::softmax() {
  float mx = -std::numeric_limits<float>::infinity();
  for (const Candidate& c : cand_) mx = std::max(mx, c.logit);
  exp_.resize(cand_.size());
  double sum = 0;
  for (std::size_t i = 0; i < cand_.size(); ++i) {
    exp_[i] = std::exp(double(cand_[i].logit) - double(mx));
    sum += exp_[i];
  }
  for (std::size_t i = 0; i < cand_.size(); ++i) cand_[i].p = float(exp_[i] / sum);
}

std::span<const Candidate> Sampler::distribution(const float* logits,
                                                 std::span<const int32_t> recent_tokens) {
  const float* l = penalized(logits, recent_tokens);
  // One O(V) pass for the logits' sanity (a broken model must not become a silent wrong draw)
  // and greedy's answer: the first maximum, i.e. ties to the lower id.
  int best = 0;
  for (int v = 0; v < vocab_; ++v) {
    MOE_CHECK(!std::isnan(l[v]) && l[v] != std::numeric_limits<float>::infinity(),
              "sampler: logit of token {} is {}: expected a number or -inf", v, l[v]);
    if (l[v] > l[best]) best = v;
  }
  MOE_CHECK(l[best] != -std::numeric_limits<float>::infinity(),
            "sampler: every logit is -inf: nothing to sample");
  if (opt_.temperature <= 0) {
    cand_.assign(1, {best, l[best], 1.f});
    sorted_ = true;
    return cand_;
  }
  top_k(l);
  top_p();
  min_p();
  temperature();
  softmax();
  return cand_;
}

int32_t Sampler::sample(const float* logits, std::span<const int32_t> recent_tokens) {
  std::span<const Candidate> c = distribution(logits, recent_tokens);
  const double u = Rng(opt_.seed, stream_id(kPurposeSample)).uniform(uint64_t(sampled_++));
  // The first candidate whose running mass reaches u · Σp (llama.cpp's dist rule).
  double total = 0;
  for (const Candidate& x : c) total += x.p;
  const double target = u * total;
  double run = 0;
  for (const Candidate& x : c) {
    run += x.p;
    if (run >= target) return x.id;
  }
  return c.back().id;
}

}  // namespace moe::infer
