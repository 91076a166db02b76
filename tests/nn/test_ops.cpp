// Every nn op through the declarative harness (tests/op_test.h): each op is one struct giving
// its inputs, the templated implementation, a plain-loop reference in double and the lengths of
// its sums; MOE_OP_TEST runs the reference, gradient (+= / =) and float-versus-double checks.
// Below the registrations: behaviour that is not a forward/backward pair (causality, in-place
// aliasing, the fused cross-entropy's batch call).
#include <cmath>

#include "../op_test.h"
#include "moe/nn/activations.h"
#include "moe/nn/attention.h"
#include "moe/nn/cross_entropy.h"
#include "moe/nn/embedding.h"
#include "moe/nn/linear.h"
#include "moe/nn/rmsnorm.h"
#include "moe/nn/rope.h"

namespace moe::testing {
namespace {

using GM = GradMode;

// y [N,O] = x [N,I] · Wᵀ; dx (+= or =, as `accumulate_dx`), dW +=.
struct LinearOp {
  int N, I, O;
  bool accumulate_dx = true;
  double k_forward = I, k_backward = std::max(N, O);
  std::vector<OpArg> args() const {
    return {{"x", std::size_t(N) * I, accumulate_dx ? GM::kAccumulate : GM::kWrite},
            {"W", std::size_t(O) * I}};
  }
  std::vector<OpOut> outs() const { return {{"y", std::size_t(N) * O}}; }
  template <typename T>
  void forward(OpData<T>& d) const {
    linear_forward(d.y(0), d.x(0), d.x(1), N, I, O);
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    linear_backward(d.dx(0), d.dx(1), d.dy(0), d.x(0), d.x(1), N, I, O, accumulate_dx);
  }
  void reference(OpData<double>& d) const {
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < O; ++o) {
        double s = 0;
        for (int i = 0; i < I; ++i) s += d.in[0][n * I + i] * d.in[1][o * I + i];
        d.out[0][n * O + o] = s;
      }
  }
};

// y [N,D] = x / sqrt(mean(x²) + eps) · w; rstd [N] saved; dx +=, dw +=.
struct RmsNormOp {
  int N, D;
  double k_forward = D, k_backward = std::max(N, D);
  static constexpr double kEps = 1e-5;
  std::vector<OpArg> args() const {
    return {{"x", std::size_t(N) * D}, {"w", std::size_t(D), GM::kAccumulate, 0.5, 1.0}};
  }
  std::vector<OpOut> outs() const {
    return {{"y", std::size_t(N) * D}, {"rstd", std::size_t(N), true}};
  }
  template <typename T>
  void forward(OpData<T>& d) const {
    rmsnorm_forward(d.y(0), d.y(1), d.x(0), d.x(1), N, D, T(kEps));
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    std::vector<T> partial(rmsnorm_backward_scratch_size(N, D));
    rmsnorm_backward(d.dx(0), d.dx(1), partial.data(), d.dy(0), d.x(0), d.x(1), d.y(1), N, D);
  }
  void reference(OpData<double>& d) const {
    for (int n = 0; n < N; ++n) {
      double ss = 0;
      for (int i = 0; i < D; ++i) ss += d.in[0][n * D + i] * d.in[0][n * D + i];
      const double r = 1 / std::sqrt(ss / D + kEps);
      for (int i = 0; i < D; ++i) d.out[0][n * D + i] = d.in[0][n * D + i] * r * d.in[1][i];
    }
  }
};

// h [N,H] = silu(gate)·up from gu [N,2H]; dgu written.
struct SwiGluOp {
  int N, H;
  double k_forward = 1, k_backward = 1;
  std::vector<OpArg> args() const { return {{"gu", std::size_t(N) * 2 * H, GM::kWrite, 2.0}}; }
  std::vector<OpOut> outs() const { return {{"h", std::size_t(N) * H}}; }
  template <typename T>
  void forward(OpData<T>& d) const {
    swiglu_forward(d.y(0), d.x(0), N, H);
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    swiglu_backward(d.dx(0), d.dy(0), d.x(0), N, H);
  }
  void reference(OpData<double>& d) const {
    for (int r = 0; r < N; ++r)
      for (int i = 0; i < H; ++i) {
        const double g = d.in[0][r * 2 * H + i], u = d.in[0][r * 2 * H + H + i];
        d.out[0][r * H + i] = g / (1 + std::exp(-g)) * u;
      }
  }
};

// y = x·Φ(x) (exact erf form); dx written.
struct GeluOp {
  std::size_t n;
  double k_forward = 1, k_backward = 1;
  std::vector<OpArg> args() const { return {{"x", n, GM::kWrite, 2.0}}; }
  std::vector<OpOut> outs() const { return {{"y", n}}; }
  template <typename T>
  void forward(OpData<T>& d) const {
    gelu_forward(d.y(0), d.x(0), n);
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    gelu_backward(d.dx(0), d.dy(0), d.x(0), n);
  }
  void reference(OpData<double>& d) const {
    for (std::size_t i = 0; i < n; ++i) {
      const double x = d.in[0][i];
      d.out[0][i] = 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    }
  }
};

// out [N,C] = E[tok[n]]; dE += (rows sharing a token summed in token order).
struct EmbeddingOp {
  int N, C, V;
  std::vector<int32_t> tokens;
  double k_forward = 1, k_backward = N;
  std::vector<OpArg> args() const { return {{"E", std::size_t(V) * C}}; }
  std::vector<OpOut> outs() const { return {{"out", std::size_t(N) * C}}; }
  template <typename T>
  void forward(OpData<T>& d) const {
    embedding_forward(d.y(0), tokens.data(), d.x(0), N, C);
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    embedding_backward(d.dx(0), d.dy(0), tokens.data(), N, C);
  }
  void reference(OpData<double>& d) const {
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) d.out[0][n * C + c] = d.in[0][tokens[n] * C + c];
  }
};

// Causal grouped-query attention: out [B·T, Hq·hd] from q [B·T, Hq·hd], k, v [B·T, Hkv·hd];
// probs saved; dq, dk, dv written.
struct AttentionOp {
  int B, T, Hq, Hkv, hd;
  double k_forward = std::max(T, hd), k_backward = std::max(T, hd) * (Hq / Hkv);
  std::size_t nq() const { return std::size_t(B) * T * Hq * hd; }
  std::size_t nkv() const { return std::size_t(B) * T * Hkv * hd; }
  std::vector<OpArg> args() const {
    return {{"q", nq(), GM::kWrite}, {"k", nkv(), GM::kWrite}, {"v", nkv(), GM::kWrite}};
  }
  std::vector<OpOut> outs() const {
    return {{"out", nq()}, {"probs", std::size_t(B) * Hq * T * T, true}};
  }
  template <typename T_>
  void forward(OpData<T_>& d) const {
    attention_forward(d.y(0), d.y(1), d.x(0), d.x(1), d.x(2), B, T, Hq, Hkv, hd);
  }
  template <typename T_>
  void backward(OpData<T_>& d) const {
    std::vector<T_> scratch(attention_scratch_size(T));
    attention_backward(d.dx(0), d.dx(1), d.dx(2), scratch.data(), d.dy(0), d.y(1), d.x(0), d.x(1),
                       d.x(2), B, T, Hq, Hkv, hd);
  }
  void reference(OpData<double>& d) const {
    const auto &q = d.in[0], &k = d.in[1], &v = d.in[2];
    auto& out = d.out[0];
    const int g = Hq / Hkv;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < Hq; ++h)
        for (int i = 0; i < T; ++i) {
          std::vector<double> s(i + 1);
          double mx = -1e300;
          for (int j = 0; j <= i; ++j) {
            double dd = 0;
            for (int e = 0; e < hd; ++e)
              dd += q[((b * T + i) * Hq + h) * hd + e] * k[((b * T + j) * Hkv + h / g) * hd + e];
            s[j] = dd / std::sqrt(double(hd));
            mx = std::max(mx, s[j]);
          }
          double sum = 0;
          for (auto& x : s) sum += (x = std::exp(x - mx));
          for (int e = 0; e < hd; ++e) {
            double o = 0;
            for (int j = 0; j <= i; ++j) o += s[j] / sum * v[((b * T + j) * Hkv + h / g) * hd + e];
            out[((b * T + i) * Hq + h) * hd + e] = o;
          }
        }
  }
};

// RoPE (rotate half) as an op: y = rotate(x) at positions pos0 + n % T; dx written (the inverse
// rotation of dy).
struct RopeOp {
  int N, T, H, hd, pos0;
  double k_forward = 2, k_backward = 2;
  std::size_t n() const { return std::size_t(N) * H * hd; }
  std::vector<OpArg> args() const { return {{"x", n(), GM::kWrite}}; }
  std::vector<OpOut> outs() const { return {{"y", n()}}; }
  template <typename T_>
  void forward(OpData<T_>& d) const {
    RopeTable<T_> tab(pos0 + T, hd, T_(10000));
    d.out[0] = d.in[0];
    rope_apply(d.y(0), tab, N, T, pos0, H, false);
  }
  template <typename T_>
  void backward(OpData<T_>& d) const {
    RopeTable<T_> tab(pos0 + T, hd, T_(10000));
    d.din[0] = d.dout[0];
    rope_apply(d.dx(0), tab, N, T, pos0, H, true);
  }
  void reference(OpData<double>& d) const {
    for (int t = 0; t < N; ++t)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < hd / 2; ++i) {
          const double a = (pos0 + t % T) * std::pow(10000.0, -2.0 * i / hd);
          const double* v = d.in[0].data() + (std::size_t(t) * H + h) * hd;
          double* y = d.out[0].data() + (std::size_t(t) * H + h) * hd;
          y[i] = v[i] * std::cos(a) - v[i + hd / 2] * std::sin(a);
          y[i + hd / 2] = v[i + hd / 2] * std::cos(a) + v[i] * std::sin(a);
        }
  }
};

// Cross-entropy as an op with loss Σ_n losses[n]·R[n]: the fused kernel's gradient is
// (softmax − onehot)·scale for one scale per call, so the harness's per-row weights are applied
// one row at a time.
struct CrossEntropyOp {
  int N, V;
  std::vector<int32_t> targets;
  double k_forward = V, k_backward = V;
  std::vector<OpArg> args() const { return {{"logits", std::size_t(N) * V, GM::kWrite, 3.0}}; }
  std::vector<OpOut> outs() const { return {{"losses", std::size_t(N)}}; }
  template <typename T>
  void forward(OpData<T>& d) const {
    cross_entropy_forward_backward<T>(d.y(0), nullptr, d.x(0), targets.data(), N, V, T(0));
  }
  template <typename T>
  void backward(OpData<T>& d) const {
    T loss;
    for (int n = 0; n < N; ++n)
      cross_entropy_forward_backward<T>(&loss, d.dx(0) + std::size_t(n) * V,
                                        d.x(0) + std::size_t(n) * V, &targets[n], 1, V, d.dy(0)[n]);
  }
  void reference(OpData<double>& d) const {
    for (int n = 0; n < N; ++n) {
      double mx = -1e300, s = 0;
      for (int v = 0; v < V; ++v) mx = std::max(mx, d.in[0][n * V + v]);
      for (int v = 0; v < V; ++v) s += std::exp(d.in[0][n * V + v] - mx);
      d.out[0][n] = std::log(s) + mx - d.in[0][n * V + targets[n]];
    }
  }
};

}  // namespace

MOE_OP_TEST(Linear, LinearOp{5, 7, 4});
MOE_OP_TEST(LinearOverwritesDx, LinearOp{5, 7, 4, false});
MOE_OP_TEST(LinearLongSums, LinearOp{3, 300, 5});
MOE_OP_TEST(RmsNorm, RmsNormOp{4, 9});
MOE_OP_TEST(RmsNormManyRows, RmsNormOp{70, 8});  // > 64 rows: the threaded path, 3 chunks
MOE_OP_TEST(SwiGlu, SwiGluOp{4, 10});
MOE_OP_TEST(Gelu, GeluOp{40});
MOE_OP_TEST(Embedding, EmbeddingOp{6, 5, 4, {1, 3, 1, 0, 1, 3}});
MOE_OP_TEST(AttentionGqa, AttentionOp{2, 5, 4, 2, 3});
MOE_OP_TEST(AttentionMha, AttentionOp{1, 7, 2, 2, 4});
// T spans several row blocks (and ends in a partial one) so the causal blocking is exercised.
MOE_OP_TEST(AttentionRowBlocks, AttentionOp{1, 2 * kAttnRowBlock + 7, 2, 1, 4});
MOE_OP_TEST(Rope, RopeOp{6, 3, 2, 8, 2});
MOE_OP_TEST(CrossEntropy, CrossEntropyOp{5, 11, {0, 10, 3, 3, 7}});

using V = std::vector<double>;

TEST(Ops, SwiGluBackwardInPlace) {
  // The FFN calls it with dgu aliasing gu: each element must be read before it is written.
  const int N = 4, H = 10;
  V gu = randn(2 * N * H, 9, 2.0), R = randn(N * H, 11);
  V dgu(gu.size());
  swiglu_backward(dgu.data(), R.data(), gu.data(), N, H);
  V inplace = gu;
  swiglu_backward(inplace.data(), R.data(), inplace.data(), N, H);
  EXPECT_TRUE(all_close("in place", inplace, dgu, 0, 0));
}

TEST(Ops, CrossEntropyMeanOverRowsInOneCall) {
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
  EXPECT_TRUE(all_close("dlogits", d, numeric_grad(z, loss), kFdTol, kFdTol));
}

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

}  // namespace moe::testing
