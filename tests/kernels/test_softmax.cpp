// kernels/softmax against its double reference, in float (both exps) and in double, on rows
// from one element to 4,096 (the widest router) with logits spread over ±30. Tolerance: each
// float exp is within ~2 ulp, the sum of n terms within n·2⁻²⁴ relative, so every probability
// is within (n + 8)·2⁻²⁴ relative of the exact one; we allow 4× that. Double: 1e-13 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "moe/core/rng.h"
#include "moe/kernels/softmax.h"

using namespace moe;

namespace {

std::vector<double> logits(int n, uint32_t stream) {
  const Rng r(3, stream);
  std::vector<double> v(n);
  for (int i = 0; i < n; ++i) v[i] = 30.0 * (2.0 * r.uniform(i) - 1.0);
  return v;
}

TEST(KernelsSoftmax, FloatAndDoubleMatchTheReference) {
  for (int n : {1, 2, 7, 64, 1000, 4096}) {
    SCOPED_TRACE(n);
    const std::vector<double> x = logits(n, uint32_t(n));
    std::vector<double> ref(n), pd(n);
    softmax_reference(ref.data(), x.data(), n);
    softmax_row(pd.data(), x.data(), n);
    const std::vector<float> xf(x.begin(), x.end());
    std::vector<double> xr(xf.begin(), xf.end());  // the float inputs, exactly
    std::vector<double> reff(n);
    softmax_reference(reff.data(), xr.data(), n);
    const double tol = 4.0 * (n + 8) * std::ldexp(1.0, -24);
    for (SoftmaxExp kind : {SoftmaxExp::kFast, SoftmaxExp::kLibm}) {
      std::vector<float> pf(n);
      softmax_row(pf.data(), xf.data(), n, kind);
      double sum = 0;
      for (int i = 0; i < n; ++i) {
        ASSERT_NEAR(pf[i], reff[i], tol * reff[i] + 1e-38) << "element " << i;
        sum += pf[i];
      }
      EXPECT_NEAR(sum, 1.0, tol);
    }
    std::vector<float> ps = xf;  // the in-place vectorised form attention uses
    softmax_row_simd(ps.data(), n);
    for (int i = 0; i < n; ++i) ASSERT_NEAR(ps[i], reff[i], tol * reff[i] + 1e-38) << "simd " << i;
    for (int i = 0; i < n; ++i) ASSERT_NEAR(pd[i], ref[i], 1e-13 * ref[i]) << "element " << i;
    EXPECT_NEAR(logsumexp_row(x.data(), n), logsumexp_reference(x.data(), n), 1e-13 * 30);
    EXPECT_NEAR(logsumexp_row(xf.data(), n), logsumexp_reference(xr.data(), n), 1e-5);
  }
}

// Attention's bf16 backward rebuilds each probability row from the forward's {max, 1/sum} and
// relies on getting the forward's bits: anything but bit equality here (an exp evaluated another
// way, the reciprocal folded differently) would make its gradient that of another forward.
TEST(KernelsSoftmax, RowFromStatsGivesTheSameBits) {
  for (int n : {1, 2, 15, 16, 17, 64, 255, 1000}) {
    const std::vector<double> x = logits(n, uint32_t(100 + n));
    std::vector<float> p(x.begin(), x.end()), again = p;
    float stats[2];
    softmax_row_simd(p.data(), n, stats);
    std::vector<float> plain(x.begin(), x.end());
    softmax_row_simd(plain.data(), n);  // without stats: the same row
    softmax_row_from_stats(again.data(), n, stats);
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(std::memcmp(&p[i], &again[i], 4), 0) << "n=" << n << " element " << i;
      ASSERT_EQ(std::memcmp(&p[i], &plain[i], 4), 0) << "n=" << n << " element " << i;
    }
  }
}

TEST(KernelsSoftmax, BackwardEqualsCentralDifferences) {
  // L = Σ_i softmax(x)_i·w_i: its gradient by central differences in double (h = 1e-6 on O(1)
  // logits: truncation ~h², rounding ~1e-16/h) against softmax_row_backward with dp = w, also
  // written in place (dx aliasing dp), as PEER and the router call it.
  for (int n : {1, 3, 16, 100}) {
    SCOPED_TRACE(n);
    std::vector<double> x = logits(n, 100 + uint32_t(n)), w = logits(n, 200 + uint32_t(n));
    for (double& v : x) v /= 10;
    std::vector<double> p(n), dx(n);
    softmax_row(p.data(), x.data(), n);
    softmax_row_backward(dx.data(), p.data(), w.data(), n);
    std::vector<double> inplace = w;
    softmax_row_backward(inplace.data(), p.data(), inplace.data(), n);
    auto loss = [&] {
      std::vector<double> q(n);
      softmax_reference(q.data(), x.data(), n);
      double l = 0;
      for (int i = 0; i < n; ++i) l += q[i] * w[i];
      return l;
    };
    for (int i = 0; i < n; ++i) {
      const double old = x[i], h = 1e-6;
      x[i] = old + h;
      const double lp = loss();
      x[i] = old - h;
      const double lm = loss();
      x[i] = old;
      EXPECT_NEAR(dx[i], (lp - lm) / (2 * h), 1e-6) << "element " << i;
      EXPECT_EQ(inplace[i], dx[i]) << "element " << i;
    }
  }
}

TEST(KernelsSoftmax, InPlaceAndHugeLogitsStayFinite) {
  std::vector<float> x = {1000.f, 999.f, -1000.f};
  softmax_row(x.data(), x.data(), 3);
  EXPECT_NEAR(x[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(x[1], 1.0 / (1.0 + std::exp(1.0)), 1e-6);
  EXPECT_LT(x[2], 1e-37f);  // vexp clamps at e^-87.3 ≈ 1.2e-38: underflow to ~0
}

}  // namespace
