// The sampler chain against its definition, recomputed here in double with plain loops and full
// sorts: penalties, top-k, top-p, min-p, temperature, softmax. The comparison with llama.cpp's
// own chain is tests/python/test_sampler_llama.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "../error_util.h"
#include "moe/core/rng.h"
#include "moe/infer/sampler.h"

namespace moe::infer {
namespace {

// Penalised logits by the rule, in double.
std::vector<double> penalize_reference(const std::vector<float>& logits,
                                       const std::vector<int32_t>& recent,
                                       const SamplerOptions& o) {
  std::vector<double> l(logits.begin(), logits.end());
  if (o.repeat_last_n == 0) return l;
  std::map<int32_t, int> count;
  const std::size_t n = std::min<std::size_t>(recent.size(), std::size_t(o.repeat_last_n));
  for (std::size_t i = recent.size() - n; i < recent.size(); ++i) ++count[recent[i]];
  for (auto [id, c] : count) {
    l[id] = l[id] > 0 ? l[id] / o.repeat_penalty : l[id] * o.repeat_penalty;
    l[id] -= c * o.frequency_penalty + o.presence_penalty;
  }
  return l;
}

// The chain in double: the penalised logits, their order (highest first, equal ones by lower
// id), how many survive truncation for a given top-p threshold, and the final distribution.
struct Reference {
  std::vector<double> l;
  std::vector<int> order;
  SamplerOptions o;

  Reference(const std::vector<float>& logits, const std::vector<int32_t>& recent,
            const SamplerOptions& opt)
      : l(penalize_reference(logits, recent, opt)), order(l.size()), o(opt) {
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  }

  // Survivors of top-k, top-p (at threshold top_p) and min-p: a prefix of order. *gap receives
  // the distance between top_p and the running mass at the cut.
  int kept(double top_p, double* gap) const {
    int keep = int(l.size());
    if (o.top_k > 0) keep = std::min(keep, o.top_k);
    *gap = 1;
    if (top_p < 1) {
      double z = 0, cum = 0;
      for (int i = 0; i < keep; ++i) z += std::exp(l[order[i]] - l[order[0]]);
      for (int i = 0; i < keep; ++i) {
        cum += std::exp(l[order[i]] - l[order[0]]) / z;
        *gap = std::min(*gap, std::abs(cum - top_p));
        if (cum >= top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    if (o.min_p > 0) {
      int k = 1;
      while (k < keep && l[order[k]] >= l[order[0]] + std::log(double(o.min_p))) ++k;
      keep = k;
    }
    return o.temperature == 0 ? 1 : keep;
  }

  // softmax(l / T) over order[0..keep) (greedy: the first), 0 elsewhere.
  std::vector<double> probs(int keep) const {
    std::vector<double> p(l.size(), 0.0);
    if (o.temperature == 0) {
      p[order[0]] = 1;
      return p;
    }
    double z = 0;
    for (int i = 0; i < keep; ++i) z += std::exp((l[order[i]] - l[order[0]]) / o.temperature);
    for (int i = 0; i < keep; ++i)
      p[order[i]] = std::exp((l[order[i]] - l[order[0]]) / o.temperature) / z;
    return p;
  }
};

std::vector<float> random_logits(int V, uint64_t seed, float scale) {
  Rng r(seed, stream_id(kPurposeData));
  std::vector<float> l(V);
  for (int v = 0; v < V; ++v) l[v] = scale * r.normal(uint64_t(v));
  return l;
}

SamplerOptions no_truncation() {
  SamplerOptions o;
  o.temperature = 1;
  o.top_k = 0;
  o.top_p = 1;
  o.min_p = 0;
  return o;
}

// Our distribution equals the reference: the same surviving ids, probabilities to 1e-6 relative
// (float logits and expf against double). Top-p's cut is made on a float running sum, as in
// llama.cpp; up to 1024 ids the test keeps clear of cuts within 1e-5 of top_p and asks for the
// exact cut, beyond that (flat logits put many ids within 1e-5 of any threshold) the cut may lie
// anywhere top_p ± 1e-4 puts it: a float sum of n ≤ 5e4 terms in [0, 1] is off by about
// sqrt(n)·2⁻²⁴ ≈ 1e-5 (random-walk rounding), 1e-4 is ten times that.
void expect_chain_matches(const std::vector<float>& logits, const std::vector<int32_t>& recent,
                          const SamplerOptions& o, const std::string& what) {
  const Reference ref(logits, recent, o);
  double gap = 1;
  const int exact = ref.kept(o.top_p, &gap);
  int lo = exact, hi = exact;
  if (logits.size() <= 1024) {
    ASSERT_GT(gap, 1e-5) << what << ": a top-p cut too close to call; choose other logits";
  } else {
    lo = ref.kept(o.top_p - 1e-4, &gap);
    hi = ref.kept(std::min(1.0, o.top_p + 1e-4), &gap);
  }
  Sampler s(o, int(logits.size()));
  std::span<const Candidate> got = s.distribution(logits.data(), recent);
  const int n = int(got.size());
  ASSERT_GE(n, lo) << what;
  ASSERT_LE(n, hi) << what;
  const std::vector<double> want = ref.probs(n);
  std::vector<double> p(logits.size(), 0.0);
  for (const Candidate& c : got) p[c.id] = c.p;
  for (std::size_t v = 0; v < logits.size(); ++v) {
    EXPECT_EQ(p[v] > 0, want[v] > 0) << what << ": id " << v;
    EXPECT_NEAR(p[v], want[v], 1e-6 * want[v] + 1e-12) << what << ": id " << v;
  }
}

TEST(Sampler, GreedyTakesTheFirstMaximumForAnySeed) {
  const std::vector<float> l = {0.5f, 2.f, -1.f, 2.f, 1.9f};
  for (uint64_t seed : {1, 2, 99}) {
    SamplerOptions o;
    o.temperature = 0;
    o.seed = seed;
    Sampler s(o, 5);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(s.sample(l.data(), {}), 1);
    EXPECT_EQ(s.tokens_sampled(), 5);
  }
}

TEST(Sampler, GreedySeesThePenalisedLogits) {
  // 2.0 / 1.5 = 1.33 < 1.9: the repeated id 1 loses to id 4.
  const std::vector<float> l = {0.5f, 2.f, -1.f, 1.f, 1.9f};
  SamplerOptions o;
  o.temperature = 0;
  o.repeat_penalty = 1.5f;
  Sampler s(o, 5);
  const std::vector<int32_t> recent = {1, 3};
  EXPECT_EQ(s.sample(l.data(), recent), 4);
}

TEST(Sampler, EachTruncationAloneMatchesItsDefinition) {
  const std::vector<float> l = random_logits(300, 5, 2.f);
  for (int k : {1, 7, 40, 299, 300, 1000}) {
    SamplerOptions o = no_truncation();
    o.top_k = k;
    expect_chain_matches(l, {}, o, "top_k " + std::to_string(k));
  }
  for (float p : {0.f, 0.3f, 0.9f, 0.95f}) {
    SamplerOptions o = no_truncation();
    o.top_p = p;
    expect_chain_matches(l, {}, o, "top_p " + std::to_string(p));
  }
  for (float p : {0.01f, 0.05f, 0.5f, 1.f}) {
    SamplerOptions o = no_truncation();
    o.min_p = p;
    expect_chain_matches(l, {}, o, "min_p " + std::to_string(p));
  }
  for (float t : {0.25f, 1.f, 3.f}) {
    SamplerOptions o = no_truncation();
    o.temperature = t;
    expect_chain_matches(l, {}, o, "temperature " + std::to_string(t));
  }
}

TEST(Sampler, TheDefaultChainMatchesItsDefinitionAtLargeVocabularies) {
  // Without top-k, top-p ranks min-p's survivors or, with min-p off, blocks of 256, 4096, …
  // (flat logits need several, peaked ones the first); top_k > 512 takes nth_element instead
  // of the scan.
  for (float scale : {0.3f, 1.f, 4.f}) {
    const std::vector<float> l = random_logits(50304, 11, scale);
    const std::vector<int32_t> recent = {5, 17, 5, 40000, 3};
    SamplerOptions o;  // llama.cpp's defaults
    o.repeat_penalty = 1.1f;
    expect_chain_matches(l, recent, o, "defaults, scale " + std::to_string(scale));
    o.top_k = 0;
    expect_chain_matches(l, recent, o, "top_k 0, scale " + std::to_string(scale));
    o.min_p = 0;
    expect_chain_matches(l, recent, o, "top_k 0 min_p 0, scale " + std::to_string(scale));
    o.top_k = 2000;
    expect_chain_matches(l, recent, o, "top_k 2000, scale " + std::to_string(scale));
  }
}

TEST(Sampler, PenaltiesFollowTheRuleOverTheLastRepeatLastNIds) {
  const std::vector<float> l = {2.f, -2.f, 0.f, 1.f, 3.f};
  SamplerOptions o = no_truncation();
  o.repeat_penalty = 2.f;
  o.repeat_last_n = 4;
  o.frequency_penalty = 0.25f;
  o.presence_penalty = 0.5f;
  // The window is the last 4 ids: {0, 0, 1, 2}; id 4 is older and not penalised.
  const std::vector<int32_t> recent = {4, 0, 0, 1, 2};
  Sampler s(o, 5);
  std::span<const Candidate> c = s.distribution(l.data(), recent);
  std::map<int32_t, float> got;
  for (const Candidate& x : c) got[x.id] = x.logit;
  EXPECT_FLOAT_EQ(got[0], 2.f / 2 - 2 * 0.25f - 0.5f);  // positive: divided; twice
  EXPECT_FLOAT_EQ(got[1], -2.f * 2 - 0.25f - 0.5f);     // negative: multiplied
  EXPECT_FLOAT_EQ(got[2], 0.f * 2 - 0.25f - 0.5f);      // zero: multiplied (stays 0)
  EXPECT_FLOAT_EQ(got[3], 1.f);
  EXPECT_FLOAT_EQ(got[4], 3.f);
  for (int n : {0, 2, 64}) {
    o.repeat_last_n = n;
    expect_chain_matches(random_logits(64, 3, 2.f), {1, 2, 3, 2, 60, 61}, o,
                         "repeat_last_n " + std::to_string(n));
  }
}

TEST(Sampler, SameSeedSameDrawsAndDrawsFollowTheDistribution) {
  const std::vector<float> l = random_logits(50, 7, 1.f);
  SamplerOptions o;
  o.top_k = 10;
  Sampler a(o, 50), b(o, 50);
  std::vector<int32_t> da, db;
  for (int i = 0; i < 200; ++i) {
    da.push_back(a.sample(l.data(), {}));
    db.push_back(b.sample(l.data(), {}));
  }
  EXPECT_EQ(da, db);
  o.seed = 2;
  Sampler c(o, 50);
  std::vector<int32_t> dc;
  for (int i = 0; i < 200; ++i) dc.push_back(c.sample(l.data(), {}));
  EXPECT_NE(da, dc);
  // Frequencies of M draws against the distribution: within 5 standard deviations.
  const int M = 40000;
  Sampler d(o, 50);
  std::vector<double> p(50, 0.0);
  for (const Candidate& x : d.distribution(l.data(), {})) p[x.id] = x.p;
  std::vector<int> hits(50, 0);
  for (int i = 0; i < M; ++i) ++hits[d.sample(l.data(), {})];
  for (int v = 0; v < 50; ++v) {
    EXPECT_NEAR(double(hits[v]) / M, p[v], 5 * std::sqrt(p[v] * (1 - p[v]) / M) + 1e-9)
        << "id " << v;
  }
}

TEST(Sampler, ValidateNamesTheFlag) {
  auto bad = [](auto set, const char* want) {
    SamplerOptions o;
    set(o);
    moe::testing::expect_error([&] { o.validate(); }, {want});
  };
  bad([](SamplerOptions& o) { o.temperature = -1; }, "--temperature -1: expected a number >= 0");
  bad([](SamplerOptions& o) { o.top_k = -3; }, "--top-k -3: expected >= 0");
  bad([](SamplerOptions& o) { o.top_p = 1.5f; }, "--top-p 1.5: expected in [0, 1]");
  bad([](SamplerOptions& o) { o.min_p = -0.1f; }, "--min-p -0.1: expected in [0, 1]");
  bad([](SamplerOptions& o) { o.repeat_penalty = 0; }, "--repeat-penalty 0: expected a number > 0");
  bad([](SamplerOptions& o) { o.repeat_last_n = -1; }, "--repeat-last-n -1: expected >= 0");
  SamplerOptions ok;
  EXPECT_NO_THROW(ok.validate());
}

TEST(Sampler, RejectsBrokenLogitsAndIds) {
  SamplerOptions o;
  Sampler s(o, 3);
  const float nan[3] = {0.f, std::nanf(""), 1.f};
  moe::testing::expect_error([&] { s.sample(nan, {}); }, {"logit of token 1 is nan"});
  const float ninf = -std::numeric_limits<float>::infinity();
  const float all_ninf[3] = {ninf, ninf, ninf};
  moe::testing::expect_error([&] { s.sample(all_ninf, {}); }, {"every logit is -inf"});
  o.repeat_penalty = 1.1f;
  Sampler p(o, 3);
  const float ok[3] = {0.f, 1.f, 2.f};
  const std::vector<int32_t> recent = {0, 7};
  moe::testing::expect_error([&] { p.sample(ok, recent); },
                             {"context token id 7: expected in [0, 3)"});
}

}  // namespace
}  // namespace moe::infer
