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
// top-p without top-k first ranks only this many (llama.cpp's first guess too).
constexpr int kTopPGuess = 256;

// out = the k best of l[0, V) by (logit desc, id asc), in that order: one scan keeping a sorted
// list of the best so far. After the first k, a logit must beat the current k-th to enter, which
// few do; a block of 32 is looked at one by one only when one of its logits does, and that test
// is a compare loop the compiler vectorises. Equal logits keep the earlier (lower) id first.
void scan_top_k(const float* l, int V, int k, std::vector<Candidate>& out) {
  out.clear();
  out.reserve(k);
  auto offer = [&](int v) {
    const float x = l[v];
    if (int(out.size()) == k) {
      if (!(x > out.back().logit)) return;
      out.pop_back();
    }
    std::size_t j = out.size();
    out.push_back({v, x, 0.f});
    for (; j > 0 && x > out[j - 1].logit; --j) out[j] = out[j - 1];
    out[j] = {v, x, 0.f};
  };
  constexpr int kBlock = 32;
  int v = 0;
  for (; v + kBlock <= V; v += kBlock) {
    if (int(out.size()) == k) {
      const float kth = out.back().logit;
      bool any = false;
      for (int j = 0; j < kBlock; ++j) any |= l[v + j] > kth;
      if (!any) continue;
    }
    for (int j = 0; j < kBlock; ++j) offer(v + j);
  }
  for (; v < V; ++v) offer(v);
}

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
    scan_top_k(l, V, k, cand_);
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
// whose sum reaches top_p.
// Unsorted (no top-k), only as much of the order as the cut needs is ranked: top-p and min-p
// both keep a prefix of the order (the maximum survives top-p), so their result is the shorter
// prefix, and candidates that min-p will drop need no rank. The rest is ranked in growing
// blocks (256, ×16, …: one nth_element over the unranked part and a sort of the block each),
// so a peaked distribution costs O(V) and a flat one O(V log V) at worst.
void Sampler::top_p() {
  if (opt_.top_p >= 1 || cand_.empty()) return;
  float mx = cand_[0].logit;
  if (!sorted_)
    for (const Candidate& c : cand_) mx = std::max(mx, c.logit);
  float sum = 0;
  for (Candidate& c : cand_) {
    c.p = std::exp(c.logit - mx);
    sum += c.p;
  }
  for (Candidate& c : cand_) c.p /= sum;
  if (!sorted_) {
    const float min_logit =
        opt_.min_p > 0 ? mx + std::log(opt_.min_p) : -std::numeric_limits<float>::infinity();
    scratch_.clear();
    for (const Candidate& c : cand_)
      if (c.logit >= min_logit) scratch_.push_back(c);
    cand_.swap(scratch_);
  }
  // cand_[0, ranked) is in order and holds the best `ranked` of cand_.
  const std::size_t n = cand_.size();
  std::size_t ranked = sorted_ ? n : 0, keep = n;
  float cum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (i == ranked) {
      const std::size_t m = std::min(n, ranked == 0 ? std::size_t(kTopPGuess) : 16 * ranked);
      if (m < n)
        std::nth_element(cand_.begin() + ranked, cand_.begin() + (m - 1), cand_.end(), better);
      std::sort(cand_.begin() + ranked, cand_.begin() + m, better);
      ranked = m;
    }
    cum += cand_[i].p;
    if (cum >= opt_.top_p) {
      keep = i + 1;
      break;
    }
  }
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
  // One O(V) pass for the logits' sanity (a broken model must not become a silent wrong draw:
  // a NaN or +inf fails !(x <= FLT_MAX)) and their maximum; the offender is named by a second
  // pass, as is greedy's first maximum (ties to the lower id).
  bool bad = false;
  float mx = -std::numeric_limits<float>::infinity();
  for (int v = 0; v < vocab_; ++v) {
    bad |= !(l[v] <= std::numeric_limits<float>::max());
    mx = std::max(mx, l[v]);
  }
  if (bad) {
    for (int u = 0; u < vocab_; ++u)
      MOE_CHECK(l[u] <= std::numeric_limits<float>::max(),
                "sampler: logit of token {} is {}: expected a number or -inf", u, l[u]);
  }
  MOE_CHECK(mx != -std::numeric_limits<float>::infinity(),
            "sampler: every logit is -inf: nothing to sample");
  if (opt_.temperature <= 0) {
    const int best = int(std::find(l, l + vocab_, mx) - l);
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
