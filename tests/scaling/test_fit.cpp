// The fitter recovers a known law from synthetic noisy runs.
#include <gtest/gtest.h>

#include <random>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/scaling/fit.h"

using namespace moe;
using namespace moe::scaling;

TEST(ScalingFit, RecoversKnownCoefficientsFromNoisyRuns) {
  const Law truth = law_by_name("moe-e64");
  std::mt19937 gen(7);
  std::normal_distribution<double> noise(0.0, 0.005);  // 5 millinats, like smoothed final losses
  std::vector<RunPoint> pts;
  for (double N : {1e7, 3e7, 1e8, 3e8, 1e9, 3e9})
    for (double D : {1e9, 3e9, 1e10, 3e10, 1e11})
      for (double G : {1.0, 4.0, 16.0}) pts.push_back({N, D, G, truth.loss(N, D, G) + noise(gen)});
  FitResult r = fit_law(pts, true, 8, 1);
  // The residual error is the noise level; predictions agree with the true law everywhere on
  // the grid and beyond it (a 10× larger model and dataset).
  EXPECT_LT(r.rmse, 0.0075);
  EXPECT_LT(r.heldout_rmse, 0.01);
  for (const RunPoint& p : pts)
    EXPECT_NEAR(r.law.loss(p.N, p.D, p.G), truth.loss(p.N, p.D, p.G), 0.01);
  EXPECT_NEAR(r.law.loss(3e10, 1e12, 8), truth.loss(3e10, 1e12, 8), 0.03);
  // The exponents are identified well by this grid; a and b trade off with them less tightly.
  EXPECT_NEAR(r.law.beta, truth.beta, 0.03);
  EXPECT_NEAR(r.law.gamma, truth.gamma, 0.2);
  EXPECT_EQ(r.interval.size(), 7u);
  EXPECT_LE(r.interval["beta"].first, r.interval["beta"].second);
}

TEST(ScalingFit, RunsFileErrorsNameTheLineAndField) {
  const std::string p = ::testing::TempDir() + "/runs_bad.jsonl";
  write_file_atomic(
      p, "{\"N\": 1e6, \"D\": 1e8, \"loss\": 3.1}\n{\"N\": -5, \"D\": 1e8, \"loss\": 3}\n");
  try {
    read_runs(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":2: field N"), std::string::npos) << e.what();
  }
}
