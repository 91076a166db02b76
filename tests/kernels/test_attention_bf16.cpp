// kernels/attention_bf16: causal attention with its QKᵀ, P·V and backward products in bf16, on
// every path this CPU has (the fused avx512bf16 one and the widen one), against a double twin
// computed on the same bf16-rounded operands (core/half.h's f32_to_bf16, which both paths' rounding
// matches bit for bit), as tests/model/test_bf16_layers.cpp checks the projections. The shapes
// cover partial 12-row, 32-key and 48-query blocks, odd T (a last pair of one row), odd head
// widths (a zero-padded pair) and widths past one 32-column panel.
//
// Bounds (u = 2⁻²⁴, γ_n = n·u/(1 − n·u); Σ|·| = the sum of the product's |terms|):
//   - a bf16 product is within γ_{K+3}·Σ|·| of the exact sum of its rounded operands;
//     products accumulated over query blocks and query heads (dV, dK) within γ_n of all n terms;
//   - S = s·Q̂·K̂ᵀ (s = 1/sqrt(hd)) within eS = γ_{hd+3}·s·Σ|·|; the f32 softmax P within
//     P·(2·max eS + 4·2e-7 + γ_{T+1}) of the double softmax of the exact S (vexp is within 2e-7
//     relative; the row sum and the division add γ_{T+1}). P is checked against that;
//   - the twin takes P from the function's output (the f32 values the bf16 path rounds), so
//     O = P̂·V̂ and dV = P̂ᵀ·dÔ have exact operands;
//   - dS = s·P·(dP − D) is f32 from dP (within γ_{hd+3}·Σ|·|) and D = Σ P·dP: its error eS'
//     carried to first order; its rounding lies between f32_to_bf16(dS − eS') and
//     f32_to_bf16(dS + eS') (rounding is monotone), and that interval's width w is the rounded
//     element's error in dQ = dŜ·K̂ and dK = dŜᵀ·Q̂.
// The test allows twice the bound (second-order terms, the twin's own double rounding). A
// single flipped bit in one rounded operand, a mis-indexed block or an f32 product where bf16
// was meant gives errors far above it (~1e-6 relative here against ~1e-3 for a flip).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/kernels/attention_bf16.h"
#include "moe/kernels/cpu_features.h"

using namespace moe;

namespace {

struct Case {
  int B, T, Hq, Hkv, hd;
};

// T = 70: a full and a partial query block; 53 and 13: odd; hd 40 and 13: a partial panel, an
// odd width; 100 × 64: the benchmark model's head width over three query blocks.
constexpr Case kCases[] = {
    {2, 70, 4, 2, 16}, {1, 53, 3, 1, 40}, {2, 13, 2, 2, 13}, {1, 100, 2, 1, 64}};

std::vector<Bf16GemmPath> paths() {
  std::vector<Bf16GemmPath> r{Bf16GemmPath::kWiden};
  if (cpu_features().avx512_bf16) r.push_back(Bf16GemmPath::kAvx512Bf16);
  return r;
}

constexpr double kU = 1.0 / (1 << 24);
double gamma(int n) { return n * kU / (1 - n * kU); }
double rb(double x) { return bf16_to_f32(f32_to_bf16(float(x))); }  // round to bf16, as double
// Width of the bf16 roundings of [x − e, x + e] around the rounding of x.
double flip(double x, double e) { return std::max(rb(x) - rb(x - e), rb(x + e) - rb(x)); }

struct Twin {
  std::vector<double> P, out, dq, dk, dv;       // the values
  std::vector<double> eP, eout, edq, edk, edv;  // their bounds
};

// The double twin of the bf16 path (bounds above); probs: the function's own f32 P.
Twin twin(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
          const std::vector<float>& v, const std::vector<float>& dout,
          const std::vector<float>& probs) {
  const int T = c.T, hd = c.hd, ldq = c.Hq * hd, ldk = c.Hkv * hd, group = c.Hq / c.Hkv;
  const double s = 1 / std::sqrt(double(hd));
  const double gacc =  // dV, dK: all their terms, and one addition per query block and head
      gamma(group * T + 3 * group * (T / kAttnBf16QueryBlock + 1));
  Twin e;
  const std::size_t nq = q.size(), nk = k.size();
  for (auto* x : {&e.out, &e.eout, &e.dq, &e.edq}) x->assign(nq, 0);
  for (auto* x : {&e.dk, &e.edk, &e.dv, &e.edv}) x->assign(nk, 0);
  e.P.assign(probs.size(), 0);
  e.eP.assign(probs.size(), 0);
  std::vector<double> S(T), eS(T), dP(T), edP(T), dS(T), w(T);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h) {
      const int kh = h / group;
      auto Q = [&](int i, int d) { return rb(q[std::size_t(b * T + i) * ldq + h * hd + d]); };
      auto K = [&](int j, int d) { return rb(k[std::size_t(b * T + j) * ldk + kh * hd + d]); };
      auto V = [&](int j, int d) { return rb(v[std::size_t(b * T + j) * ldk + kh * hd + d]); };
      auto dO = [&](int i, int d) { return rb(dout[std::size_t(b * T + i) * ldq + h * hd + d]); };
      for (int i = 0; i < T; ++i) {
        const std::size_t prow = ((std::size_t(b) * c.Hq + h) * T + i) * T;
        const float* Pf = probs.data() + prow;  // the function's P row
        // Scores and the softmax's bound.
        double mx = -1e300, emax = 0;
        for (int j = 0; j <= i; ++j) {
          double a = 0, m = 0;
          for (int d = 0; d < hd; ++d) {
            a += Q(i, d) * K(j, d);
            m += std::fabs(Q(i, d) * K(j, d));
          }
          S[j] = s * a;
          emax = std::max(emax, gamma(hd + 3) * s * m);
          mx = std::max(mx, S[j]);
        }
        double z = 0;
        for (int j = 0; j <= i; ++j) z += std::exp(S[j] - mx);
        for (int j = 0; j <= i; ++j) {
          e.P[prow + j] = std::exp(S[j] - mx) / z;
          e.eP[prow + j] = e.P[prow + j] * (2 * emax + 8e-7 + gamma(T + 1));
        }
        // O = P̂·V̂ on the function's P.
        const std::size_t oi = std::size_t(b * T + i) * ldq + h * hd;
        for (int d = 0; d < hd; ++d) {
          double a = 0, m = 0;
          for (int j = 0; j <= i; ++j) {
            a += rb(Pf[j]) * V(j, d);
            m += std::fabs(rb(Pf[j]) * V(j, d));
          }
          e.out[oi + d] = a;
          e.eout[oi + d] = gamma(T + 3) * m;
        }
        // dP = dÔ·V̂ᵀ, D = Σ P·dP, dS = s·P·(dP − D) and the width of its rounding.
        double D = 0, eD = 0;
        for (int j = 0; j <= i; ++j) {
          double a = 0, m = 0;
          for (int d = 0; d < hd; ++d) {
            a += dO(i, d) * V(j, d);
            m += std::fabs(dO(i, d) * V(j, d));
          }
          dP[j] = a;
          edP[j] = gamma(hd + 3) * m;
          D += Pf[j] * a;
          eD += Pf[j] * edP[j] + gamma(i + 1) * std::fabs(Pf[j] * a);
        }
        for (int j = 0; j <= i; ++j) {
          dS[j] = s * Pf[j] * (dP[j] - D);
          const double edS = s * Pf[j] * (edP[j] + eD) + 4 * kU * std::fabs(dS[j]);
          w[j] = flip(dS[j], edS);
        }
        for (int d = 0; d < hd; ++d) {
          double a = 0, m = 0, f = 0;
          for (int j = 0; j <= i; ++j) {
            a += rb(dS[j]) * K(j, d);
            m += std::fabs(rb(dS[j]) * K(j, d));
            f += w[j] * std::fabs(K(j, d));
          }
          e.dq[oi + d] = a;
          e.edq[oi + d] = gamma(T + 3) * m + f;
        }
        for (int j = 0; j <= i; ++j) {
          const std::size_t kj = std::size_t(b * T + j) * ldk + kh * hd;
          for (int d = 0; d < hd; ++d) {
            e.dv[kj + d] += rb(Pf[j]) * dO(i, d);
            e.edv[kj + d] += gacc * std::fabs(rb(Pf[j]) * dO(i, d));
            e.dk[kj + d] += rb(dS[j]) * Q(i, d);
            e.edk[kj + d] += gacc * std::fabs(rb(dS[j]) * Q(i, d)) + w[j] * std::fabs(Q(i, d));
          }
        }
      }
    }
  return e;
}

struct Outputs {
  std::vector<float> out, probs, dq, dk, dv;
  std::vector<uint16_t> qb, kb, vb;  // the saved rounded operands
};

Outputs run_bf16(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                 const std::vector<float>& v, const std::vector<float>& dout, Bf16GemmPath path) {
  Outputs r;
  r.out.assign(q.size(), 0.f);
  r.probs.assign(std::size_t(c.B) * c.Hq * c.T * c.T, 0.f);
  r.dq.assign(q.size(), 0.f);
  r.dk.assign(k.size(), 0.f);
  r.dv.assign(k.size(), 0.f);
  const std::size_t hdp = attention_bf16_head_width(c.hd), N = std::size_t(c.B) * c.T;
  // Saved buffers filled with a pattern attention_round_bf16 must overwrite everywhere.
  r.qb.assign(N * c.Hq * hdp, 0x7fc1);
  r.kb.assign(N * c.Hkv * hdp, 0x7fc1);
  r.vb.assign(N * c.Hkv * hdp, 0x7fc1);
  const AttnBf16Saved saved{r.qb.data(), r.kb.data(), r.vb.data()};
  attention_round_bf16(r.qb.data(), q.data(), int(N), c.Hq, c.hd);
  attention_round_bf16(r.kb.data(), k.data(), int(N), c.Hkv, c.hd);
  attention_round_bf16(r.vb.data(), v.data(), int(N), c.Hkv, c.hd);
  // The forward's own probabilities come back through the optional output; the backward sees
  // only the stats and the saved operands, and recomputes them. dk and dv start as NaN: the
  // backward must write every element (no accumulation into what was there).
  std::fill(r.dk.begin(), r.dk.end(), std::nanf(""));
  std::fill(r.dv.begin(), r.dv.end(), std::nanf(""));
  std::vector<float> stats(attention_stats_size(c.B, c.T, c.Hq));
  attention_forward_bf16(r.out.data(), stats.data(), r.probs.data(), saved, c.B, c.T, c.Hq, c.Hkv,
                         c.hd, path);
  attention_backward_bf16(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), stats.data(), saved,
                          c.B, c.T, c.Hq, c.Hkv, c.hd, path);
  return r;
}

// The saved rows are the inputs rounded as f32_to_bf16 rounds, each head padded with one zero
// when hd is odd.
void check_saved(const std::vector<uint16_t>& got, const std::vector<float>& x, int N, int H,
                 int hd) {
  const int hdp = attention_bf16_head_width(hd);
  for (int t = 0; t < N; ++t)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < hdp; ++d) {
        const uint16_t want = d < hd ? f32_to_bf16(x[(std::size_t(t) * H + h) * hd + d]) : 0;
        ASSERT_EQ(got[(std::size_t(t) * H + h) * hdp + d], want)
            << "token " << t << " head " << h << " column " << d;
      }
}

std::vector<float> normal(std::size_t n, uint64_t seed) {
  const Rng r(seed, 1);
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = r.normal(i);
  return x;
}

// Every element within twice its bound.
template <typename V>
void check(const char* what, const V& got, const std::vector<double>& want,
           const std::vector<double>& bound) {
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::fabs(double(got[i]) - want[i]), 2 * bound[i])
        << what << " element " << i << ": got " << got[i] << ", twin " << want[i];
}

}  // namespace

TEST(AttentionBf16, ForwardAndBackwardWithinTheBf16Bound) {
  for (const Case& c : kCases)
    for (Bf16GemmPath path : paths()) {
      SCOPED_TRACE(::testing::Message() << bf16_gemm_path_name(path) << " B=" << c.B << " T=" << c.T
                                        << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " hd=" << c.hd);
      const std::size_t nq = std::size_t(c.B) * c.T * c.Hq * c.hd,
                        nk = std::size_t(c.B) * c.T * c.Hkv * c.hd;
      const auto q = normal(nq, 1), k = normal(nk, 2), v = normal(nk, 3), dout = normal(nq, 4);
      const Outputs r = run_bf16(c, q, k, v, dout, path);
      check_saved(r.qb, q, c.B * c.T, c.Hq, c.hd);
      check_saved(r.kb, k, c.B * c.T, c.Hkv, c.hd);
      check_saved(r.vb, v, c.B * c.T, c.Hkv, c.hd);
      const Twin e = twin(c, q, k, v, dout, r.probs);
      check("probs", r.probs, e.P, e.eP);
      check("out", r.out, e.out, e.eout);
      check("dv", r.dv, e.dv, e.edv);
      check("dq", r.dq, e.dq, e.edq);
      check("dk", r.dk, e.dk, e.edk);
      // The probabilities stay f32: the causal zeros exact, every row summing to 1 within f32.
      for (int row = 0; row < c.B * c.Hq * c.T; ++row) {
        const int i = row % c.T;
        double sum = 0;
        for (int j = 0; j < c.T; ++j) {
          const float p = r.probs[std::size_t(row) * c.T + j];
          if (j > i) {
            ASSERT_EQ(p, 0.f);
          }
          sum += p;
        }
        ASSERT_NEAR(sum, 1.0, 1e-5);
      }
    }
}

TEST(AttentionBf16, BitIdenticalForAnyThreadCount) {
  const int saved = omp_get_max_threads();
  for (const Case& c : kCases)
    for (Bf16GemmPath path : paths()) {
      const std::size_t nq = std::size_t(c.B) * c.T * c.Hq * c.hd,
                        nk = std::size_t(c.B) * c.T * c.Hkv * c.hd;
      const auto q = normal(nq, 5), k = normal(nk, 6), v = normal(nk, 7), dout = normal(nq, 8);
      omp_set_num_threads(1);
      const Outputs one = run_bf16(c, q, k, v, dout, path);
      for (int threads : {2, 3}) {
        omp_set_num_threads(threads);
        const Outputs r = run_bf16(c, q, k, v, dout, path);
        for (auto [a, b] : {std::pair{&one.out, &r.out}, std::pair{&one.dq, &r.dq},
                            std::pair{&one.dk, &r.dk}, std::pair{&one.dv, &r.dv}})
          ASSERT_EQ(0, std::memcmp(a->data(), b->data(), a->size() * sizeof(float)))
              << bf16_gemm_path_name(path) << ", T=" << c.T << ", " << threads << " threads";
      }
    }
  omp_set_num_threads(saved);
}
