// BatchNorm and LayerNorm (PEER's query norms) through the op-test harness (tests/op_test.h:
// plain-loop references, central-difference gradients with = versus +=, float against double),
// and what is not a forward/backward pair: the backward in place, BatchNorm's running statistics
// in training and their use in evaluation, and its data-parallel statistics. Tolerances as in
// test_ops.cpp: central differences with h = 1e-6 on O(1) values err by ~1e-10, so 1e-6 catches
// any wrong term.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "../grad_check.h"
#include "../op_test.h"
#include "moe/nn/batchnorm.h"
#include "moe/nn/layernorm.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

namespace {

constexpr double kTol = 1e-6;

// Training BatchNorm over the batch of N rows: y [N,D]; mean, rstd [D] saved; dx written, dw and
// db accumulated.
struct BatchNormOp {
  int N, D;
  double k_forward = N, k_backward = N;
  static BatchNormOptions options() {
    BatchNormOptions o;
    o.eps = 1e-5;
    return o;
  }
  std::vector<OpArg> args() const {
    return {{"x", std::size_t(N) * D, GradMode::kWrite},
            {"w", std::size_t(D), GradMode::kAccumulate, 0.5, 1.0},
            {"b", std::size_t(D)}};
  }
  std::vector<OpOut> outs() const {
    return {
        {"y", std::size_t(N) * D}, {"mean", std::size_t(D), true}, {"rstd", std::size_t(D), true}};
  }
  template <typename T>
  void forward(OpData<T>& d) const {
    std::vector<double> sums(2 * D);
    batchnorm_forward(d.y(0), d.y(1), d.y(2), (T*)nullptr, (T*)nullptr, d.x(0), d.x(1), d.x(2), N,
                      D, true, options(), sums.data());
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    std::vector<double> sums(2 * D);
    std::vector<T> wb(2 * D);
    batchnorm_backward(d.dx(0), d.dx(1), d.dx(2), d.dy(0), d.x(0), d.x(1), d.y(1), d.y(2), N, D,
                       options(), sums.data(), wb.data());
  }
  void reference(OpData<double>& d) const {
    const auto &x = d.in[0], &w = d.in[1], &b = d.in[2];
    for (int f = 0; f < D; ++f) {
      double m = 0, v = 0;
      for (int n = 0; n < N; ++n) m += x[n * D + f] / N;
      for (int n = 0; n < N; ++n) v += (x[n * D + f] - m) * (x[n * D + f] - m) / N;
      for (int n = 0; n < N; ++n)
        d.out[0][n * D + f] = (x[n * D + f] - m) / std::sqrt(v + options().eps) * w[f] + b[f];
    }
  }
};

// LayerNorm of each row of D in [N, G, D], group g's rows with w[g], b[g]: mean, rstd [N·G]
// saved; dx written, dw and db accumulated.
struct LayerNormOp {
  int N, G, D;
  double k_forward = D, k_backward = std::max(N, D);
  static constexpr double kEps = 1e-5;
  std::vector<OpArg> args() const {
    const std::size_t n = std::size_t(N) * G * D, g = std::size_t(G) * D;
    return {{"x", n, GradMode::kWrite}, {"w", g, GradMode::kAccumulate, 0.5, 1.0}, {"b", g}};
  }
  std::vector<OpOut> outs() const {
    return {{"y", std::size_t(N) * G * D},
            {"mean", std::size_t(N) * G, true},
            {"rstd", std::size_t(N) * G, true}};
  }
  template <typename T>
  void forward(OpData<T>& d) const {
    layernorm_forward(d.y(0), d.y(1), d.y(2), d.x(0), d.x(1), d.x(2), N, G, D, T(kEps));
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    layernorm_backward(d.dx(0), d.dx(1), d.dx(2), d.dy(0), d.x(0), d.x(1), d.y(1), d.y(2), N, G, D);
  }
  void reference(OpData<double>& d) const {
    const auto &x = d.in[0], &w = d.in[1], &b = d.in[2];
    for (int r = 0; r < N * G; ++r) {
      double m = 0, v = 0;
      for (int i = 0; i < D; ++i) m += x[r * D + i] / D;
      for (int i = 0; i < D; ++i) v += (x[r * D + i] - m) * (x[r * D + i] - m) / D;
      const int g = r % G;
      for (int i = 0; i < D; ++i)
        d.out[0][r * D + i] =
            (x[r * D + i] - m) / std::sqrt(v + kEps) * w[g * D + i] + b[g * D + i];
    }
  }
};

}  // namespace

MOE_OP_TEST(BatchNorm, BatchNormOp{7, 5});
MOE_OP_TEST(BatchNormManyRows, BatchNormOp{300, 4});
MOE_OP_TEST(LayerNorm, LayerNormOp{3, 2, 6});
MOE_OP_TEST(LayerNormOneGroup, LayerNormOp{5, 1, 16});

namespace {

TEST(Norms, BatchNormTrainingUpdatesRunningStatisticsAndRunsInPlace) {
  const int N = 7, D = 5;
  V x = randn(N * D, 11), w = randn(D, 12), b = randn(D, 13), R = randn(N * D, 14);
  for (auto& v : w) v += 1.0;
  BatchNormOptions o;
  o.eps = 1e-5;
  o.momentum = 0.25;
  V y(N * D), mean(D), rstd(D), rm = randn(D, 15), rv(D, 2.0), sums(2 * D);
  const V rm0 = rm, rv0 = rv;
  batchnorm_forward(y.data(), mean.data(), rstd.data(), rm.data(), rv.data(), x.data(), w.data(),
                    b.data(), N, D, true, o, sums.data());
  for (int f = 0; f < D; ++f) {
    double m = 0, v = 0;
    for (int n = 0; n < N; ++n) m += x[n * D + f] / N;
    for (int n = 0; n < N; ++n) v += (x[n * D + f] - m) * (x[n * D + f] - m) / N;
    for (int n = 0; n < N; ++n)
      EXPECT_NEAR(y[n * D + f], (x[n * D + f] - m) / std::sqrt(v + o.eps) * w[f] + b[f], 1e-12);
    EXPECT_NEAR(rm[f], 0.75 * rm0[f] + 0.25 * m, 1e-12);
    EXPECT_NEAR(rv[f], 0.75 * rv0[f] + 0.25 * v * N / (N - 1), 1e-12);  // unbiased
  }
  V dx(N * D, 99.0), dw(D, 0.5), db(D, -0.25), wb(2 * D);  // dx written, dw and db +=
  batchnorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), N, D, o, sums.data(), wb.data());
  // In place (dinp = dout): the same dx.
  V inplace = R, dw2(D, 0.5), db2(D, -0.25);
  batchnorm_backward(inplace.data(), dw2.data(), db2.data(), inplace.data(), x.data(), w.data(),
                     mean.data(), rstd.data(), N, D, o, sums.data(), wb.data());
  EXPECT_EQ(inplace, dx);
}

TEST(Norms, BatchNormEvaluationUsesTheRunningStatistics) {
  const int N = 3, D = 4;
  V x = randn(N * D, 21), w = randn(D, 22), b = randn(D, 23), rm = randn(D, 24), rv(D);
  for (int f = 0; f < D; ++f) rv[f] = 0.5 + f;
  const V rm0 = rm, rv0 = rv;
  BatchNormOptions o;
  V y(N * D), mean(D), rstd(D), sums(2 * D);
  batchnorm_forward(y.data(), mean.data(), rstd.data(), rm.data(), rv.data(), x.data(), w.data(),
                    b.data(), N, D, false, o, sums.data());
  EXPECT_EQ(rm, rm0);  // not updated
  EXPECT_EQ(rv, rv0);
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < D; ++f)
      EXPECT_NEAR(y[n * D + f], (x[n * D + f] - rm[f]) / std::sqrt(rv[f] + o.eps) * w[f] + b[f],
                  1e-12);
}

// Two ranks that hold the same rows: every all-reduce doubles. (Only what BatchNorm calls.)
class TwinRanks final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void allreduce_sum(float* d, std::size_t n) override {
    for (std::size_t i = 0; i < n; ++i) d[i] *= 2;
  }
  void allreduce_sum(double* d, std::size_t n) override {
    for (std::size_t i = 0; i < n; ++i) d[i] *= 2;
  }
  void allreduce_max(double*, std::size_t) override {}
  void barrier() override {}
  void alltoall(const int*, int*, int) override { std::abort(); }
  void alltoallv(const float*, const int64_t*, float*, const int64_t*) override { std::abort(); }
  void alltoallv(const double*, const int64_t*, double*, const int64_t*) override { std::abort(); }
  [[noreturn]] void abort(int) override { std::abort(); }
  std::string describe() const override { return "twin ranks"; }
};

TEST(Norms, BatchNormOnTwoRanksIsTheGlobalBatchsFunction) {
  // Rank-local rows x on 2 ranks that hold the same rows = one process on [x; x]: the same
  // output and dx, the running variance unbiased over 2N rows, and each rank's dγ, dβ its half.
  const int N = 5, D = 3;
  V x = randn(N * D, 41), w = randn(D, 42), b = randn(D, 43), R = randn(N * D, 44);
  V x2 = x, R2 = R;
  x2.insert(x2.end(), x.begin(), x.end());
  R2.insert(R2.end(), R.begin(), R.end());
  TwinRanks twins;
  BatchNormOptions dist, local;
  dist.comm = &twins;
  V y(N * D), mu(D), rs(D), rm(D, 0.0), rv(D, 1.0), s(2 * D);
  V y2(2 * N * D), mu2(D), rs2(D), rm2(D, 0.0), rv2(D, 1.0), s2(2 * D);
  batchnorm_forward(y.data(), mu.data(), rs.data(), rm.data(), rv.data(), x.data(), w.data(),
                    b.data(), N, D, true, dist, s.data());
  batchnorm_forward(y2.data(), mu2.data(), rs2.data(), rm2.data(), rv2.data(), x2.data(), w.data(),
                    b.data(), 2 * N, D, true, local, s2.data());
  EXPECT_TRUE(all_close("y", y, V(y2.begin(), y2.begin() + N * D), 1e-12, 1e-12));
  EXPECT_TRUE(all_close("running_var", rv, rv2, 1e-12, 1e-12));
  V dx(N * D), dw(D, 0.0), db(D, 0.0), wb(2 * D);
  V dx2(2 * N * D), dw2(D, 0.0), db2(D, 0.0), wb2(2 * D);
  batchnorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mu.data(),
                     rs.data(), N, D, dist, s.data(), wb.data());
  batchnorm_backward(dx2.data(), dw2.data(), db2.data(), R2.data(), x2.data(), w.data(), mu2.data(),
                     rs2.data(), 2 * N, D, local, s2.data(), wb2.data());
  EXPECT_TRUE(all_close("dx", dx, V(dx2.begin(), dx2.begin() + N * D), 1e-12, 1e-12));
  for (auto& v : dw) v *= 2;
  for (auto& v : db) v *= 2;
  EXPECT_TRUE(all_close("dw", dw, dw2, 1e-12, 1e-12));
  EXPECT_TRUE(all_close("db", db, db2, 1e-12, 1e-12));
}

TEST(Norms, LayerNormBackwardInPlace) {
  // PEER normalises its queries in place: dinp = dout must give the same dx.
  const int N = 3, G = 2, D = 6;
  V x = randn(N * G * D, 31), w = randn(G * D, 32), b = randn(G * D, 33), R = randn(N * G * D, 34);
  for (auto& v : w) v += 1.0;
  const double eps = 1e-5;
  V y(N * G * D), mean(N * G), rstd(N * G);
  layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, G, D, eps);
  V dx(N * G * D, 99.0), dw(G * D, 0.5), db(G * D, -0.25);  // dx written, dw and db +=
  layernorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), N, G, D);
  V inplace = R, dw2(G * D, 0.5), db2(G * D, -0.25);
  layernorm_backward(inplace.data(), dw2.data(), db2.data(), inplace.data(), x.data(), w.data(),
                     mean.data(), rstd.data(), N, G, D);
  EXPECT_EQ(inplace, dx);
}

}  // namespace
