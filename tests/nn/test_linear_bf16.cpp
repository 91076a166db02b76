// nn/linear_bf16: the Linear layer's products with bf16 operands.
//   1. Forward, backward (dinp written, accumulated, or skipped) and the weight gradient's +=
//      against plain double loops over the rounded operands (core/half.h's f32_to_bf16), within
//      gemm_bf16's bound γ_{K+3}·(S + |c₀|) + u·|ref| (S = Σ|products|, c₀ what was accumulated
//      into; kernels/gemm_bf16.h, tests/kernels/test_gemm_bf16.cpp).
//   2. The saved bf16 input and output gradient are f32_to_bf16 of theirs, bit for bit.
//   3. Against f32 nn/linear.h: rounding each operand to bf16 moves it by at most 2⁻⁹ relatively
//      (8 significant bits, nearest), so a product by ≤ 2·2⁻⁹ + 2⁻¹⁸ and a sum of K of them by
//      that times S, plus both sides' f32 sums: |bf16 − f32| ≤ (2⁻⁸ + 2⁻¹⁸ + 2·γ_{K+3})·S.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/nn/linear.h"
#include "moe/nn/linear_bf16.h"

using namespace moe;

namespace {

std::vector<float> randn(std::size_t n, uint64_t stream, float scale = 1.f) {
  std::vector<float> v(n);
  const Rng r(3, stream);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * r.normal(i);
  return v;
}

double b(float x) { return bf16_to_f32(f32_to_bf16(x)); }

double gamma(int K) {
  const double u = std::ldexp(1.0, -24), n = K + 3;
  return n * u / (1 - n * u);
}

// got[i] vs want[i] (double) within gamma(K)·(S[i] + |c0[i]|) + u·|want[i]|.
void expect_close(const std::vector<float>& got, const std::vector<double>& want,
                  const std::vector<double>& S, const std::vector<float>& c0, int K,
                  const std::string& what) {
  const double u = std::ldexp(1.0, -24);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double tol = gamma(K) * (S[i] + std::fabs(c0[i])) + u * std::fabs(want[i]);
    ASSERT_LE(std::fabs(got[i] - want[i]), tol) << what << " element " << i;
  }
}

}  // namespace

TEST(LinearBf16, ForwardAndBackwardMatchDoubleLoopsOnTheRoundedOperands) {
  const int N = 37, I = 70, O = 45;
  const auto x = randn(std::size_t(N) * I, 1), W = randn(std::size_t(O) * I, 2, 0.1f),
             dy = randn(std::size_t(N) * O, 3, 0.01f);
  std::vector<uint16_t> Wb(W.size()), xb(x.size()), dyb(dy.size());
  round_to_bf16(Wb.data(), W.data(), W.size());
  std::vector<float> y(std::size_t(N) * O);
  linear_forward_bf16(y.data(), xb.data(), x.data(), Wb.data(), N, I, O);
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(xb[i], f32_to_bf16(x[i])) << i;
  std::vector<double> want(y.size()), S(y.size());
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o)
      for (int i = 0; i < I; ++i) {
        const double p = b(x[n * I + i]) * b(W[o * I + i]);
        want[n * O + o] += p;
        S[n * O + o] += std::fabs(p);
      }
  expect_close(y, want, S, std::vector<float>(y.size(), 0.f), I, "forward");

  for (int mode = 0; mode < 3; ++mode) {  // dinp accumulated, written, skipped
    const bool acc = mode == 0, skip = mode == 2;
    const auto dx0 = randn(x.size(), 4), dW0 = randn(W.size(), 5, 0.001f);
    std::vector<float> dx = dx0, dW = dW0;
    linear_backward_bf16(skip ? nullptr : dx.data(), dW.data(), dyb.data(), dy.data(), xb.data(),
                         Wb.data(), N, I, O, acc);
    for (std::size_t i = 0; i < dy.size(); ++i) ASSERT_EQ(dyb[i], f32_to_bf16(dy[i])) << i;
    std::vector<double> wdx(dx.size()), sdx(dx.size()), wdW(dW.size()), sdW(dW.size());
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < O; ++o)
        for (int i = 0; i < I; ++i) {
          const double g = b(dy[n * O + o]);
          wdx[n * I + i] += g * b(W[o * I + i]);
          sdx[n * I + i] += std::fabs(g * b(W[o * I + i]));
          wdW[o * I + i] += g * b(x[n * I + i]);
          sdW[o * I + i] += std::fabs(g * b(x[n * I + i]));
        }
    for (std::size_t i = 0; i < wdW.size(); ++i) wdW[i] += dW0[i];
    expect_close(dW, wdW, sdW, dW0, N, "dW += (mode " + std::to_string(mode) + ")");
    if (skip) {
      EXPECT_EQ(std::memcmp(dx.data(), dx0.data(), dx.size() * 4), 0) << "dinp null wrote dx";
      continue;
    }
    std::vector<float> c0(dx.size(), 0.f);
    if (acc) {
      c0 = dx0;
      for (std::size_t i = 0; i < wdx.size(); ++i) wdx[i] += dx0[i];
    }
    expect_close(dx, wdx, sdx, c0, O, acc ? "dinp +=" : "dinp =");
  }
}

TEST(LinearBf16, TracksTheF32LayerWithinBf16Rounding) {
  const int N = 64, I = 256, O = 96;
  const auto x = randn(std::size_t(N) * I, 6), W = randn(std::size_t(O) * I, 7, 0.05f);
  std::vector<uint16_t> Wb(W.size()), xb(x.size());
  round_to_bf16(Wb.data(), W.data(), W.size());
  std::vector<float> y16(std::size_t(N) * O), y32(y16.size());
  linear_forward_bf16(y16.data(), xb.data(), x.data(), Wb.data(), N, I, O);
  linear_forward(y32.data(), x.data(), W.data(), N, I, O);
  const double rel = std::ldexp(1.0, -8) + std::ldexp(1.0, -18) + 2 * gamma(I);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) {
      double S = 0;
      for (int i = 0; i < I; ++i) S += std::fabs(double(x[n * I + i]) * W[o * I + i]);
      ASSERT_LE(std::fabs(y16[n * O + o] - y32[n * O + o]), rel * S) << n << "," << o;
    }
}
