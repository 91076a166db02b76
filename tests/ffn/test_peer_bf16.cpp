// PEER with train.precision = bf16 (PeerLayer::enable_bf16): the query projection and the sub-key
// scores take bf16 operands with f32 accumulation. Checked against double references computed on
// the bf16-rounded operands (core/half.h's f32_to_bf16, which the kernels match bit for bit),
// with the layer's own f32 intermediates as the references' inputs where the layer rounds them
// (its query before the scores, its d(query) before the backward's products), so no rounding
// flip enters the bounds.
//
// Error bounds (u = 2⁻²⁴, γ_n = (n+3)·u/(1 − (n+3)·u); S = Σ|products| of one output element):
//   - each bf16 product is within γ_K·S of the exact sum of the rounded operands
//     (kernels/gemm_bf16.h), plus u·|result| where an f32 value is added after it (the query's
//     bias, a sub-key score's other half, the += of a gradient);
//   - the gates are softmax(scores) in f32: first order |δg_i| ≤ 2·g_i·max|δs|, and the f32
//     evaluation (expf, a sum of k, a division) is within (2k + 8)·u·g_i.
// With f32 products where bf16 was meant (the path not taken, a stale W_q shadow or sub-keys)
// the errors are ~2⁻⁹ relative, 10⁴ times these bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/ffn/peer/peer_experts.h"
#include "moe/ffn/peer/peer_layer.h"

using namespace moe;

namespace {

constexpr double kU = 1.0 / (1 << 24);
double gamma(int K) { return (K + 3) * kU / (1 - (K + 3) * kU); }
double rb(double x) { return bf16_to_f32(f32_to_bf16(float(x))); }  // round to bf16, as double

// Σ_i bf16(a(i))·bf16(b(i)) in double, and S = Σ|terms| (a bf16 product's bound is γ_n·S).
struct Dot {
  double sum = 0, abs = 0;
};
template <typename A, typename B>
Dot rounded_dot(int n, const A& a, const B& b) {
  Dot d;
  for (int i = 0; i < n; ++i) {
    const double term = rb(a(i)) * rb(b(i));
    d.sum += term;
    d.abs += std::fabs(term);
  }
  return d;
}

struct PeerCase {
  PeerSpec s;
  int N = 37;
  std::vector<float> x, wq, bq, keys1, keys2, u, v;
  PeerParams<float> params() const {
    return {wq.data(), bq.data(), nullptr, nullptr, keys1.data(), keys2.data(), u.data(), v.data()};
  }
};

PeerCase make_case() {
  PeerCase t;
  t.s.C = 24;
  t.s.S = 16;  // 256 experts
  t.s.heads = 2;
  t.s.k = 4;
  t.s.d_key = 16;
  t.s.qnorm = QueryNorm::kNone;  // the scored query is the projection itself
  const int C = t.s.C, D = t.s.heads * t.s.d_key, half = t.s.d_key / 2;
  const std::size_t E = std::size_t(t.s.experts());
  auto fill = [](std::vector<float>& v, std::size_t n, uint32_t stream, double sd) {
    const Rng r(17, stream);
    v.resize(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = float(sd * r.normal(i));
  };
  fill(t.x, std::size_t(t.N) * C, 1, 1.0);
  fill(t.wq, std::size_t(D) * C, 2, 1.0 / std::sqrt(double(C)));
  fill(t.bq, D, 3, 0.1);
  fill(t.keys1, std::size_t(t.s.S) * half, 4, std::sqrt(2.0 / t.s.d_key));
  fill(t.keys2, std::size_t(t.s.S) * half, 5, std::sqrt(2.0 / t.s.d_key));
  fill(t.u, E * C, 6, 1.0 / std::sqrt(double(C)));
  fill(t.v, E * C, 7, 0.5);
  return t;
}

// A bound layer in bf16: acts and low are its two arenas.
struct Bf16Peer {
  PeerLayer<float> layer;
  Arena acts, low;
  explicit Bf16Peer(const PeerCase& t) : layer(t.s) {
    Arena m;
    layer.bind(m, t.N);
    acts = Arena(m.used());
    layer.bind(acts, t.N);
    low = layer.enable_bf16();
    layer.refresh_bf16(t.params());
  }
};

}  // namespace

TEST(PeerBf16, QueryScoresAndGatesMatchDoubleOnRoundedOperands) {
  const PeerCase t = make_case();
  Bf16Peer b(t);
  ASSERT_TRUE(b.layer.bf16());
  const int N = t.N, C = t.s.C, h = t.s.heads, dk = t.s.d_key, half = dk / 2, D = h * dk;
  const int S = t.s.S, k = t.s.k;
  std::vector<float> y(std::size_t(N) * C);
  b.layer.forward(y.data(), t.x.data(), t.params(), N, true);

  // Query: z = bf16(x)·bf16(W_q)ᵀ + b_q.
  const float* z = b.layer.query();
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < D; ++f) {
      const Dot d = rounded_dot(
          C, [&](int c) { return t.x[std::size_t(n) * C + c]; },
          [&](int c) { return t.wq[std::size_t(f) * C + c]; });
      const double ref = d.sum + t.bq[f];
      ASSERT_LE(std::fabs(z[std::size_t(n) * D + f] - ref), gamma(C) * d.abs + kU * std::fabs(ref))
          << "query " << n << ", " << f;
    }

  // Scores of every candidate from the layer's own query (no norm: the scored query is z), then
  // the retrieval: a top-k within the bounds and its gates.
  const int32_t* ids = b.layer.ids();
  const float* gates = b.layer.weights();
  std::vector<double> s1(S), e1(S), s2(S), e2(S);
  for (int r = 0; r < N * h; ++r) {
    const float* q = z + std::size_t(r) * dk;  // row r = (token r / h, head r % h)
    for (int i = 0; i < S; ++i) {
      const Dot d1 = rounded_dot(
          half, [&](int d) { return q[d]; },
          [&](int d) { return t.keys1[std::size_t(i) * half + d]; });
      const Dot d2 = rounded_dot(
          half, [&](int d) { return q[half + d]; },
          [&](int d) { return t.keys2[std::size_t(i) * half + d]; });
      s1[i] = d1.sum;
      e1[i] = gamma(half) * d1.abs;
      s2[i] = d2.sum;
      e2[i] = gamma(half) * d2.abs;
    }
    auto score = [&](int id) { return s1[id / S] + s2[id % S]; };
    auto err = [&](int id) {
      return e1[id / S] + e2[id % S] + kU * (std::fabs(score(id)) + e1[id / S] + e2[id % S]);
    };
    const int32_t* id = ids + std::size_t(r) * k;
    std::vector<bool> picked(std::size_t(S) * S, false);
    double lowest = 1e300, lowest_err = 0, max_err = 0;
    for (int j = 0; j < k; ++j) {
      ASSERT_GE(id[j], 0);
      ASSERT_LT(id[j], S * S);
      ASSERT_FALSE(picked[id[j]]) << "row " << r << " retrieves expert " << id[j] << " twice";
      picked[id[j]] = true;
      if (score(id[j]) < lowest) {
        lowest = score(id[j]);
        lowest_err = err(id[j]);
      }
      max_err = std::max(max_err, err(id[j]));
    }
    // No expert left out scores above the lowest one retrieved, beyond both their bounds.
    for (int e = 0; e < S * S; ++e) {
      if (picked[e]) continue;
      ASSERT_LE(score(e), lowest + lowest_err + err(e)) << "row " << r << " misses " << e;
    }
    // Gates: softmax of the retrieved scores.
    double m = -1e300, sum = 0;
    for (int j = 0; j < k; ++j) m = std::max(m, score(id[j]));
    for (int j = 0; j < k; ++j) sum += std::exp(score(id[j]) - m);
    for (int j = 0; j < k; ++j) {
      const double g = std::exp(score(id[j]) - m) / sum;
      const double tol = 2 * (2 * g * max_err) + (2 * k + 8) * kU * g;
      ASSERT_LE(std::fabs(gates[std::size_t(r) * k + j] - g), tol) << "gate " << r << ", " << j;
    }
  }
}

TEST(PeerBf16, BackwardMatchesDoubleOnRoundedOperands) {
  const PeerCase t = make_case();
  Bf16Peer b(t);
  const int N = t.N, C = t.s.C, D = t.s.heads * t.s.d_key;
  const std::size_t E = std::size_t(t.s.experts());
  std::vector<float> y(std::size_t(N) * C), dy(std::size_t(N) * C), dx(std::size_t(N) * C, 0.f);
  b.layer.forward(y.data(), t.x.data(), t.params(), N, true);
  const Rng r(23, 1);
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = r.normal(i);
  // W_q's gradient starts non-zero: the backward adds to it.
  std::vector<float> gwq(std::size_t(D) * C), gbq(D, 0.f), gk1(t.keys1.size(), 0.f),
      gk2(t.keys2.size(), 0.f), gu(E * C, 0.f), gv(E * C, 0.f);
  for (std::size_t i = 0; i < gwq.size(); ++i) gwq[i] = 0.1f * float(r.normal(i + dy.size()));
  const std::vector<float> gwq0 = gwq;
  PeerGrads<float> g{gwq.data(), gbq.data(), nullptr,   nullptr, gk1.data(),
                     gk2.data(), gu.data(),  gv.data(), nullptr, nullptr};
  b.layer.backward(dx.data(), g, dy.data(), t.x.data(), t.params());
  const float* dz = b.layer.dquery();

  // d(W_q) = gwq0 + bf16(dz)ᵀ·bf16(x); d(b_q) = Σ_n dz (f32, in token order).
  for (int f = 0; f < D; ++f) {
    double sb = 0, sb_abs = 0;
    for (int n = 0; n < N; ++n) {
      sb += dz[std::size_t(n) * D + f];
      sb_abs += std::fabs(dz[std::size_t(n) * D + f]);
    }
    ASSERT_LE(std::fabs(gbq[f] - sb), gamma(N) * sb_abs) << "bias " << f;
    for (int c = 0; c < C; ++c) {
      const Dot d = rounded_dot(
          N, [&](int n) { return dz[std::size_t(n) * D + f]; },
          [&](int n) { return t.x[std::size_t(n) * C + c]; });
      const std::size_t i = std::size_t(f) * C + c;
      const double ref = gwq0[i] + d.sum;
      ASSERT_LE(std::fabs(gwq[i] - ref), gamma(N) * (d.abs + std::fabs(gwq0[i])))
          << "W_q " << f << ", " << c;
    }
  }

  // dx = the experts' share (f32, recomputed by a PeerExperts of its own on the layer's
  // retrievals: the same code on the same inputs, so the same bits) + bf16(dz)·bf16(W_q).
  PeerExperts<float> ex(C, t.s.heads, t.s.k, t.s.experts(), t.s.gelu);
  Arena m;
  ex.bind(m, N);
  Arena acts(m.used());
  ex.bind(acts, N);
  std::vector<float> y2(y.size()), dx_e(dx.size(), 0.f), dgate(std::size_t(N) * t.s.heads * t.s.k),
      du(E * C, 0.f), dv(E * C, 0.f);
  ex.forward(y2.data(), t.x.data(), t.u.data(), t.v.data(), b.layer.ids(), b.layer.weights(), N);
  ASSERT_EQ(y2, y);  // the same experts' forward as the layer's
  ex.backward(dx_e.data(), dgate.data(), {du.data(), dv.data()}, dy.data(), t.x.data(), t.u.data(),
              t.v.data(), b.layer.ids(), b.layer.weights(), N);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      const Dot d = rounded_dot(
          D, [&](int f) { return dz[std::size_t(n) * D + f]; },
          [&](int f) { return t.wq[std::size_t(f) * C + c]; });
      const std::size_t i = std::size_t(n) * C + c;
      const double ref = dx_e[i] + d.sum;
      ASSERT_LE(std::fabs(dx[i] - ref), gamma(D) * (d.abs + std::fabs(dx_e[i])))
          << "dx " << n << ", " << c;
    }
}

// The same layer after disable_bf16 keeps its f32 products: its query differs from the bf16
// one by the operands' rounding (~2⁻⁹ relative), which the bounds above would reject.
TEST(PeerBf16, DisableReturnsToF32Products) {
  const PeerCase t = make_case();
  Bf16Peer b(t);
  const int N = t.N, C = t.s.C, D = t.s.heads * t.s.d_key;
  std::vector<float> y(std::size_t(N) * C);
  b.layer.forward(y.data(), t.x.data(), t.params(), N, true);
  const std::vector<float> q16(b.layer.query(), b.layer.query() + std::size_t(N) * D);
  b.layer.disable_bf16();
  ASSERT_FALSE(b.layer.bf16());
  b.layer.forward(y.data(), t.x.data(), t.params(), N, true);
  double worst = 0;  // the largest difference relative to the bf16 bound's scale
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < D; ++f) {
      double exact = t.bq[f], sum_abs = 0;
      for (int c = 0; c < C; ++c) {
        const double p = double(t.x[std::size_t(n) * C + c]) * t.wq[std::size_t(f) * C + c];
        exact += p;
        sum_abs += std::fabs(p);
      }
      const float z = b.layer.query()[std::size_t(n) * D + f];  // f32 sgemm on f32 operands
      ASSERT_LE(std::fabs(z - exact), gamma(C) * sum_abs + kU * std::fabs(exact))
          << "f32 query " << n << ", " << f;
      worst = std::max(worst, std::fabs(q16[std::size_t(n) * D + f] - exact));
    }
  EXPECT_GT(worst, 1e-4) << "the bf16 query equals the f32 one: were its operands rounded?";
}
