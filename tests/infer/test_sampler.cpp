// The sampler against its definition, computed independently in double: softmax of logits / T,
// truncated to the smallest highest-probability set whose mass reaches top_p (ties: lower id
// first), renormalised, and inverted at the uniform draw u. Sweeping u over a fine grid must
// reproduce that distribution to the grid's resolution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "moe/infer/generator.h"

namespace moe {

// The truncated, renormalised distribution over ids, in double.
static std::vector<double> nucleus_reference(const std::vector<float>& logits, double T,
                                             double top_p, double* boundary_gap) {
  const int V = int(logits.size());
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> q(V);
  for (int v = 0; v < V; ++v) q[v] = std::exp((logits[v] - mx) / T);
  const double sum = std::accumulate(q.begin(), q.end(), 0.0);
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return q[a] > q[b]; });
  std::vector<double> out(V, 0.0);
  double c = 0, kept = 0;
  *boundary_gap = 1;
  for (int i = 0; i < V; ++i) {
    c += q[order[i]] / sum;
    *boundary_gap = std::min(*boundary_gap, std::abs(c - top_p));
    kept += q[order[i]];
    out[order[i]] = q[order[i]];
    if (c >= top_p) break;
  }
  for (double& x : out) x /= kept;
  return out;
}

TEST(Sampler, GreedyAtZeroTemperatureTakesTheFirstMaximum) {
  std::vector<std::pair<float, int32_t>> scratch;
  const float l[5] = {0.5f, 2.f, -1.f, 2.f, 1.9f};
  for (float u : {0.f, 0.3f, 0.999f}) EXPECT_EQ(sample_token(l, 5, 0.f, 0.9f, u, scratch), 1);
}

TEST(Sampler, DrawsFollowTheTruncatedSoftmaxExactly) {
  std::vector<float> logits(37);
  for (int v = 0; v < 37; ++v) logits[v] = float(std::sin(1.7 * v) * 3.0 + 0.01 * v);
  logits[20] = logits[3];  // a tie: the lower id is ranked first
  std::vector<std::pair<float, int32_t>> scratch;
  const int M = 200000;
  for (double T : {0.5, 1.0, 1.7}) {
    for (double top_p : {1.0, 0.9, 0.6, 0.2}) {
      double gap = 0;
      const std::vector<double> want = nucleus_reference(logits, T, top_p, &gap);
      // The float and double cumulative sums may disagree about a cut that falls within ~1e-6
      // of top_p; the cases here keep well clear of that.
      if (top_p < 1) {
        ASSERT_GT(gap, 1e-4) << "T " << T << " top_p " << top_p;
      }
      std::vector<int> hits(logits.size(), 0);
      for (int i = 0; i < M; ++i) {
        const float u = float((i + 0.5) / M);
        ++hits[sample_token(logits.data(), int(logits.size()), float(T), float(top_p), u, scratch)];
      }
      for (std::size_t v = 0; v < logits.size(); ++v) {
        // Grid resolution 1/M per bin edge, plus float rounding of the probabilities (~1e-6).
        EXPECT_NEAR(double(hits[v]) / M, want[v], 2.0 / M + 1e-5)
            << "id " << v << " T " << T << " top_p " << top_p;
      }
    }
  }
}

}  // namespace moe
