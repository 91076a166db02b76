// Declarative op tests (ggml's test-backend-ops is the model; tolerances derived from sizes as
// gemma.cpp derives them). An op is one struct; one line registers it:
//
//   MOE_OP_TEST(RmsNorm, RmsNormOp{4, 9});
//
// The struct gives
//   std::vector<OpArg> args() const;     inputs: name, numel, how to draw them, and whether the
//                                        backward writes (=) or accumulates (+=) their gradient
//                                        (or does not give one)
//   std::vector<OpOut> outs() const;     outputs: name, numel; `saved` ones (rstd, probs, …)
//                                        are kept for the backward and not part of the loss
//   template <typename T> void forward(OpData<T>&) const;    the implementation, in T
//   template <typename T> void backward(OpData<T>&) const;   d(args) from d(outs), in T
//   void reference(OpData<double>&) const;   plain loops in double: the non-saved outputs
//   double k_forward, k_backward;        the longest floating-point sum in each pass
//
// and the harness checks, for the op's sizes:
//   1. forward in double equals the plain-loop reference (both exact up to double rounding);
//   2. backward in double equals central differences of L = Σ_out out·R (R random), with each
//      gradient buffer pre-filled so that `+=` versus `=` is checked too;
//   3. forward and backward in float against the double results, within a bound derived from
//      the sum lengths: |err| ≤ 4·(K + 8)·u·max(1, max|ref|), u = 2⁻²⁴. A K-term float sum has
//      error ≤ K·u·Σ|terms| (Higham, γ_K); the factor 4 and the +8 cover rounding the inputs to
//      float and the few roundings around the sum (exp, sqrt, division), and max|ref| stands in
//      for Σ|terms| because the tests draw O(1) values of both signs (so Σ|terms| ~ √K·max|ref|
//      stays well inside K·max|ref|).
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "grad_check.h"

namespace moe::testing {

enum class GradMode { kNone, kWrite, kAccumulate };

struct OpArg {
  std::string name;
  std::size_t numel;
  GradMode grad = GradMode::kAccumulate;
  double scale = 1.0;  // drawn N(shift, scale²)
  double shift = 0.0;
};

struct OpOut {
  std::string name;
  std::size_t numel;
  bool saved = false;  // kept for backward (statistics, probabilities): not in the loss
};

// The buffers of one evaluation, in T: inputs, outputs, their gradients.
template <typename T>
struct OpData {
  std::vector<std::vector<T>> in, out, din, dout;
  T* x(std::size_t i) { return in[i].data(); }
  T* y(std::size_t j) { return out[j].data(); }
  T* dx(std::size_t i) { return din[i].data(); }
  T* dy(std::size_t j) { return dout[j].data(); }
};

constexpr double kUnitRoundoff = 5.9604644775390625e-08;  // 2⁻²⁴, float
constexpr double kPrefill = 7.0;  // what gradient buffers hold before the backward
// Central differences with h = 1e-6 on O(1) values: truncation ~h², rounding ~eps/h ≈ 1e-10.
constexpr double kFdTol = 1e-6;

template <typename T>
OpData<T> make_data(const std::vector<OpArg>& args, const std::vector<OpOut>& outs,
                    const std::vector<std::vector<double>>& in_values,
                    const std::vector<std::vector<double>>& r) {
  OpData<T> d;
  for (std::size_t i = 0; i < args.size(); ++i) {
    d.in.emplace_back(in_values[i].begin(), in_values[i].end());
    d.din.emplace_back(args[i].numel, T(args[i].grad == GradMode::kNone ? 0 : kPrefill));
  }
  for (std::size_t j = 0; j < outs.size(); ++j) {
    d.out.emplace_back(outs[j].numel, T(0));
    d.dout.emplace_back(r[j].begin(), r[j].end());
  }
  return d;
}

// The float bound of point 3 above.
inline double float_bound(double k, const std::vector<double>& ref) {
  return 4.0 * (k + 8.0) * kUnitRoundoff * std::max(1.0, max_abs(ref));
}

template <typename Op>
void run_op_test(const Op& op, uint32_t seed = 1) {
  const std::vector<OpArg> args = op.args();
  const std::vector<OpOut> outs = op.outs();
  std::vector<std::vector<double>> xin, r;
  for (std::size_t i = 0; i < args.size(); ++i) {
    xin.push_back(randn(args[i].numel, seed + 17 * uint32_t(i), args[i].scale));
    for (double& v : xin.back()) v += args[i].shift;
  }
  for (std::size_t j = 0; j < outs.size(); ++j)
    r.push_back(outs[j].saved ? std::vector<double>(outs[j].numel, 0.0)
                              : randn(outs[j].numel, seed + 1000 + 31 * uint32_t(j)));

  // 1. Forward in double against the plain loops.
  OpData<double> dd = make_data<double>(args, outs, xin, r);
  op.forward(dd);
  OpData<double> ref = make_data<double>(args, outs, xin, r);
  op.reference(ref);
  for (std::size_t j = 0; j < outs.size(); ++j) {
    if (outs[j].saved) continue;
    EXPECT_TRUE(all_close(outs[j].name + " (double vs reference)", dd.out[j], ref.out[j],
                          1e-12 * std::max(1.0, op.k_forward), 1e-10));
  }

  // 2. Backward in double against central differences of L = Σ out·R.
  op.backward(dd);
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i].grad == GradMode::kNone) continue;
    std::vector<double>& x = xin[i];
    auto loss = [&] {
      OpData<double> t = make_data<double>(args, outs, xin, r);
      op.forward(t);
      double l = 0;
      for (std::size_t j = 0; j < outs.size(); ++j)
        if (!outs[j].saved) l += dot(t.out[j], r[j]);
      return l;
    };
    std::vector<double> g = numeric_grad(x, loss);
    if (args[i].grad == GradMode::kAccumulate)
      for (double& v : g) v += kPrefill;  // the backward must add to what was there
    EXPECT_TRUE(all_close("d" + args[i].name + " (double vs central differences)", dd.din[i], g,
                          kFdTol, kFdTol));
  }

  // 3. Float forward and backward against the double results.
  OpData<float> fd = make_data<float>(args, outs, xin, r);
  op.forward(fd);
  for (std::size_t j = 0; j < outs.size(); ++j) {
    if (outs[j].saved) continue;
    const double tol = float_bound(op.k_forward, dd.out[j]);
    EXPECT_TRUE(all_close(outs[j].name + " (float vs double)", fd.out[j], dd.out[j], tol, 0));
  }
  op.backward(fd);
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i].grad == GradMode::kNone) continue;
    const double tol = float_bound(op.k_backward, dd.din[i]);
    EXPECT_TRUE(all_close("d" + args[i].name + " (float vs double)", fd.din[i], dd.din[i], tol, 0));
  }
}

}  // namespace moe::testing

// One line per op: a gtest named OpTest.<name> running every check above on `op`.
#define MOE_OP_TEST(name, ...) \
  TEST(OpTest, name) { ::moe::testing::run_op_test(__VA_ARGS__); }
