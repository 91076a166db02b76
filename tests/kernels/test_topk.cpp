// topk_scan against topk_reference (a stable sort: score desc, index asc): the plain reference
// itself on hand-made rows, the scan in double (the scalar path) and in float (on AVX-512, the
// threshold filter and vector ranking) on random, tied and NaN-free rows of many lengths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../grad_check.h"
#include "moe/kernels/topk.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

namespace {

TEST(TopK, ReferenceIsScoreDescendingWithTiesToTheLowerIndex) {
  const V s = {0.5, 2.0, -1.0, 2.0, 0.5, 3.0};
  std::vector<int32_t> idx(4);
  V val(4);
  topk_reference(idx.data(), val.data(), s.data(), int(s.size()), 4);
  EXPECT_EQ(idx, (std::vector<int32_t>{5, 1, 3, 0}));
  EXPECT_EQ(val, (V{3.0, 2.0, 2.0, 0.5}));
}

TEST(TopK, DoubleScanEqualsTheReference) {
  for (int trial = 0; trial < 200; ++trial) {
    const int S = 1 + trial % 70, k = 1 + trial % S;
    V s = randn(S, 40 + trial);
    if (trial % 3 == 0)
      for (auto& x : s) x = std::round(x * 2) / 2;  // ties
    std::vector<int32_t> idx(k), want_idx(k);
    V val(k), want_val(k);
    topk_scan(idx.data(), val.data(), s.data(), S, k);
    topk_reference(want_idx.data(), want_val.data(), s.data(), S, k);
    ASSERT_EQ(idx, want_idx) << "S " << S << " k " << k;
    ASSERT_EQ(val, want_val) << "S " << S << " k " << k;
  }
}

TEST(TopK, FloatScanFilters16AtATimeLikeTheReference) {
  // In float with AVX-512, topk_scan keeps the scores that reach a threshold (the k-th largest
  // of 32 lane maxima for k <= 32, of the 16-score chunk maxima above that) and ranks the kept
  // ones with vector compares (2 to 4 vectors of them), or scans them when more than 64 tie at
  // the threshold. Against the reference (a stable sort, value desc, index asc) for long rows,
  // heavy ties (scores on a coarse grid), k up to 48 and S not a multiple of 16.
  for (int trial = 0; trial < 96; ++trial) {
    const int S = 17 + 23 * trial, k = 1 + trial % 48;
    const V r = randn(S, 900 + trial);
    std::vector<float> sc(S);
    for (int i = 0; i < S; ++i)
      sc[i] = trial % 2 ? float(std::round(r[i] * 4) / 4) : float(r[i]);  // odd trials: ties
    const int kk = std::min(k, S);
    std::vector<int32_t> idx(kk), want_idx(kk);
    std::vector<float> val(kk), want_val(kk);
    topk_scan(idx.data(), val.data(), sc.data(), S, kk);
    topk_reference(want_idx.data(), want_val.data(), sc.data(), S, kk);
    ASSERT_EQ(idx, want_idx) << "S " << S << " k " << k;
    ASSERT_EQ(val, want_val) << "S " << S << " k " << k;
  }
}

}  // namespace
