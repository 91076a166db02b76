// Every op: the templated implementation run in double against a plain-loop reference, and its
// backward against central differences of L = Σ out·R (R random), also in double. Tolerances:
// central differences with h = 1e-6 on O(1) values have truncation ~h² and rounding ~eps/h ≈ 1e-10,
// so 1e-6 absolute/relative leaves a wide margin while still catching any wrong term.
#include <gtest/gtest.h>

#include "../grad_check.h"
#include "moe/nn/activations.h"
#include "moe/nn/attention.h"
#include "moe/nn/cross_entropy.h"
#include "moe/nn/embedding.h"
#include "moe/nn/linear.h"
#include "moe/nn/rmsnorm.h"
#include "moe/nn/rope.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

constexpr double kTol = 1e-6;

TEST(Ops, LinearMatchesLoopsAndGradients) {
  const int N = 5, I = 7, O = 4;
  V x = randn(N * I, 1), W = randn(O * I, 2), R = randn(N * O, 3);
  V y(N * O), ref(N * O, 0);
  linear_forward(y.data(), x.data(), W.data(), N, I, O);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o)
      for (int i = 0; i < I; ++i) ref[n * O + o] += x[n * I + i] * W[o * I + i];
  EXPECT_TRUE(all_close("y", y, ref, 1e-12, 1e-12));
  auto loss = [&] {
    V out(N * O);
    linear_forward(out.data(), x.data(), W.data(), N, I, O);
    return dot(out, R);
  };
  V dx(N * I, 7.0), dW(O * I, 0.5);  // non-zero: checks += vs = semantics
  linear_backward(dx.data(), dW.data(), R.data(), x.data(), W.data(), N, I, O, true);
  V gx = numeric_grad(x, loss), gW = numeric_grad(W, loss);
  for (auto& v : gx) v += 7.0;
  for (auto& v : gW) v += 0.5;
  EXPECT_TRUE(all_close("dx", dx, gx, kTol, kTol));
  EXPECT_TRUE(all_close("dW", dW, gW, kTol, kTol));
  // accumulate_dinp = false overwrites.
  V dx2(N * I, 123.0), dW2(O * I, 0.0);
  linear_backward(dx2.data(), dW2.data(), R.data(), x.data(), W.data(), N, I, O, false);
  for (auto& v : gx) v -= 7.0;
  EXPECT_TRUE(all_close("dx overwrite", dx2, gx, kTol, kTol));
}

TEST(Ops, RmsNormMatchesFormulaAndGradients) {
  const int N = 4, D = 9;
  V x = randn(N * D, 4), w = randn(D, 5), R = randn(N * D, 6);
  for (auto& v : w) v += 1.0;
  const double eps = 1e-5;
  V y(N * D), r(N);
  rmsnorm_forward(y.data(), r.data(), x.data(), w.data(), N, D, eps);
  for (int n = 0; n < N; ++n) {
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += x[n * D + i] * x[n * D + i];
    const double rs = 1 / std::sqrt(ss / D + eps);
    for (int i = 0; i < D; ++i) EXPECT_NEAR(y[n * D + i], x[n * D + i] * rs * w[i], 1e-12);
  }
  auto loss = [&] {
    V out(N * D), rr(N);
    rmsnorm_forward(out.data(), rr.data(), x.data(), w.data(), N, D, eps);
    return dot(out, R);
  };
  V dx(N * D, 0), dw(D, 0);
  V part(rmsnorm_backward_scratch_size(N, D), 7.0);  // scratch: overwritten, not added to
  rmsnorm_backward(dx.data(), dw.data(), part.data(), R.data(), x.data(), w.data(), r.data(), N, D);
  EXPECT_TRUE(all_close("dx", dx, numeric_grad(x, loss), kTol, kTol));
  EXPECT_TRUE(all_close("dw", dw, numeric_grad(w, loss), kTol, kTol));
}

TEST(Ops, RopeRotatesPairsAndInverseIsBackward) {
  const int N = 6, T = 3, H = 2, hd = 8;
  RopeTable<double> tab(16, hd, 10000.0);
  V x = randn(N * H * hd, 7), R = randn(N * H * hd, 8);
  V y = x;
  rope_apply(y.data(), tab, N, T, 2, H, false);
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const double a = (2 + n % T) * std::pow(10000.0, -2.0 * i / hd);
        const double* v = x.data() + (n * H + h) * hd;
        EXPECT_NEAR(y[(n * H + h) * hd + i], v[i] * std::cos(a) - v[i + hd / 2] * std::sin(a),
                    1e-12);
        EXPECT_NEAR(y[(n * H + h) * hd + i + hd / 2],
                    v[i + hd / 2] * std::cos(a) + v[i] * std::sin(a), 1e-12);
      }
  auto loss = [&] {
    V out = x;
    rope_apply(out.data(), tab, N, T, 2, H, false);
    return dot(out, R);
  };
  V g = R;
  rope_apply(g.data(), tab, N, T, 2, H, true);
  EXPECT_TRUE(all_close("dx", g, numeric_grad(x, loss), kTol, kTol));
}

TEST(Ops, SwiGluAndGeluGradients) {
  const int N = 4, H = 10;
  const std::size_t n = std::size_t(N) * H;
  V gu = randn(2 * n, 9, 2.0), R = randn(n, 11);  // [N, 2H]: gate | up per row
  auto loss_s = [&] {
    V out(n);
    swiglu_forward(out.data(), gu.data(), N, H);
    return dot(out, R);
  };
  V out(n);
  swiglu_forward(out.data(), gu.data(), N, H);
  for (int r = 0; r < N; ++r)
    for (int i = 0; i < H; ++i) {
      const double g = gu[r * 2 * H + i], u = gu[r * 2 * H + H + i];
      EXPECT_NEAR(out[r * H + i], g / (1 + std::exp(-g)) * u, 1e-12);
    }
  V dgu(2 * n, 5.0);
  swiglu_backward(dgu.data(), R.data(), gu.data(), N, H);
  EXPECT_TRUE(all_close("dgate|dup", dgu, numeric_grad(gu, loss_s), kTol, kTol));
  // In place (dgu aliases gu), as the FFN calls it.
  V inplace = gu;
  swiglu_backward(inplace.data(), R.data(), inplace.data(), N, H);
  EXPECT_TRUE(all_close("in place", inplace, dgu, 0, 0));

  V g = randn(n, 10, 2.0);
  auto loss_g = [&] {
    V o(n);
    gelu_forward(o.data(), g.data(), n);
    return dot(o, R);
  };
  gelu_forward(out.data(), g.data(), n);
  for (std::size_t i = 0; i < n; ++i)
    EXPECT_NEAR(out[i], 0.5 * g[i] * (1 + std::erf(g[i] / std::sqrt(2.0))), 1e-12);
  V dx(n);
  gelu_backward(dx.data(), R.data(), g.data(), n);
  EXPECT_TRUE(all_close("dgelu", dx, numeric_grad(g, loss_g), kTol, kTol));
}

TEST(Ops, CrossEntropyValueAndGradient) {
  const int N = 5, V_ = 11;
  V z = randn(N * V_, 12, 3.0);
  std::vector<int32_t> t = {0, 10, 3, 3, 7};
  V losses(N), d(N * V_);
  cross_entropy_forward_backward(losses.data(), d.data(), z.data(), t.data(), N, V_, 1.0 / N);
  for (int n = 0; n < N; ++n) {
    double s = 0;
    for (int v = 0; v < V_; ++v) s += std::exp(z[n * V_ + v]);
    EXPECT_NEAR(losses[n], std::log(s) - z[n * V_ + t[n]], 1e-12);
  }
  auto loss = [&] {
    V l(N);
    cross_entropy_forward_backward<double>(l.data(), nullptr, z.data(), t.data(), N, V_, 0);
    double m = 0;
    for (double x : l) m += x;
    return m / N;
  };
  EXPECT_TRUE(all_close("dlogits", d, numeric_grad(z, loss), kTol, kTol));
}

TEST(Ops, EmbeddingGradientSumsRepeatedTokens) {
  const int N = 6, C = 5, Vn = 4;
  V E = randn(Vn * C, 13), R = randn(N * C, 14);
  std::vector<int32_t> tok = {1, 3, 1, 0, 1, 3};
  V out(N * C);
  embedding_forward(out.data(), tok.data(), E.data(), N, C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) EXPECT_EQ(out[n * C + c], E[tok[n] * C + c]);
  auto loss = [&] {
    V o(N * C);
    embedding_forward(o.data(), tok.data(), E.data(), N, C);
    return dot(o, R);
  };
  V dE(Vn * C, 0);
  embedding_backward(dE.data(), R.data(), tok.data(), N, C);
  EXPECT_TRUE(all_close("dE", dE, numeric_grad(E, loss), kTol, kTol));
}

// Plain-loop causal GQA attention in double.
static V attention_reference(const V& q, const V& k, const V& v, int B, int T, int Hq, int Hkv,
                             int hd) {
  V out(std::size_t(B) * T * Hq * hd, 0);
  const int g = Hq / Hkv;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h)
      for (int i = 0; i < T; ++i) {
        std::vector<double> s(i + 1);
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int e = 0; e < hd; ++e)
            d += q[((b * T + i) * Hq + h) * hd + e] * k[((b * T + j) * Hkv + h / g) * hd + e];
          s[j] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (int j = 0; j <= i; ++j)
          for (int e = 0; e < hd; ++e)
            out[((b * T + i) * Hq + h) * hd + e] +=
                s[j] / sum * v[((b * T + j) * Hkv + h / g) * hd + e];
      }
  return out;
}

// Forward against the plain-loop reference, backward against central differences.
static void check_attention(int B, int T, int Hq, int Hkv, int hd, uint32_t seed) {
  V q = randn(B * T * Hq * hd, seed), k = randn(B * T * Hkv * hd, seed + 1),
    v = randn(B * T * Hkv * hd, seed + 2), R = randn(B * T * Hq * hd, seed + 3);
  V out(q.size()), probs(std::size_t(B) * Hq * T * T);
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, Hq, Hkv, hd);
  EXPECT_TRUE(all_close("out", out, attention_reference(q, k, v, B, T, Hq, Hkv, hd), 1e-12, 1e-10));
  auto loss = [&] {
    V o(q.size()), p(probs.size());
    attention_forward(o.data(), p.data(), q.data(), k.data(), v.data(), B, T, Hq, Hkv, hd);
    return dot(o, R);
  };
  // dk, dv start non-zero: the backward must overwrite them.
  V dq(q.size()), dk(k.size(), 99.0), dv(v.size(), 99.0), scratch(attention_scratch_size(T));
  attention_backward(dq.data(), dk.data(), dv.data(), scratch.data(), R.data(), probs.data(),
                     q.data(), k.data(), v.data(), B, T, Hq, Hkv, hd);
  EXPECT_TRUE(all_close("dq", dq, numeric_grad(q, loss), kTol, kTol));
  EXPECT_TRUE(all_close("dk", dk, numeric_grad(k, loss), kTol, kTol));
  EXPECT_TRUE(all_close("dv", dv, numeric_grad(v, loss), kTol, kTol));
}

TEST(Ops, AttentionGqaMatchesReferenceAndGradients) { check_attention(2, 5, 4, 2, 3, 15); }

TEST(Ops, AttentionIsCausal) {
  const int B = 1, T = 6, H = 2, hd = 4;
  V q = randn(T * H * hd, 19), k = randn(T * H * hd, 20), v = randn(T * H * hd, 21);
  V o1(q.size()), o2(q.size()), p(std::size_t(H) * T * T);
  attention_forward(o1.data(), p.data(), q.data(), k.data(), v.data(), B, T, H, H, hd);
  for (int e = 0; e < H * hd; ++e) {  // change the last position's k and v
    k[(T - 1) * H * hd + e] += 1.0;
    v[(T - 1) * H * hd + e] -= 2.0;
  }
  attention_forward(o2.data(), p.data(), q.data(), k.data(), v.data(), B, T, H, H, hd);
  for (int i = 0; i < (T - 1) * H * hd; ++i) EXPECT_EQ(o1[i], o2[i]) << "position " << i / (H * hd);
}

TEST(Ops, AttentionRowBlocksCoverLongSequences) {
  // T spans several row blocks (and ends in a partial one) so the causal blocking is exercised.
  check_attention(1, 2 * kAttnRowBlock + 7, 2, 1, 4, 22);
}
