// train.precision = bf16, layer by layer: the bf16 forward of the dense FFN and of attention's
// q/k/v/o projections against double references computed on the bf16-rounded operands
// (core/half.h's f32_to_bf16, which round_to_bf16 matches bit for bit); the bf16 backward's
// attention weight gradients against fp32's (bound at the test).
//
// Error bounds (u = 2⁻²⁴, γ_n = n·u/(1 − n·u); S = Σ|products| of one output element):
//   - a bf16 product of the kernel is within γ_{K+3}·S of the exact sum of the rounded operands
//     (kernels/gemm_bf16.h; tests/kernels/test_gemm_bf16.cpp);
//   - an activation rounded to bf16 inside the layer (the FFN's hidden) comes from an f32 value h
//     within e of the double reference's, so its rounding lies between f32_to_bf16(h − e) and
//     f32_to_bf16(h + e) (rounding is monotone): the reference takes that interval's width as the
//     element's error instead of assuming no neighbour flip;
//   - first-order propagation through SwiGLU/GELU and RMSNorm (the errors are ~1e-7 relative, so
//     the second-order terms are ~1e-14 and the factor 2 on the final bound covers them and the
//     double reference's own rounding).
// A mis-wired buffer, a stale or missing shadow, or an f32 product where bf16 was meant gives
// errors of 2⁻⁹…1 relative, orders of magnitude above these bounds (~1e-6 relative).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/ffn/dense.h"
#include "moe/kernels/cpu_features.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/model/transformer.h"
#include "moe/nn/rmsnorm.h"
#include "moe/nn/rope.h"

using namespace moe;

namespace {

constexpr double kU = 1.0 / (1 << 24);
double gamma(int K) { return (K + 3) * kU / (1 - (K + 3) * kU); }
double rb(double x) { return bf16_to_f32(f32_to_bf16(float(x))); }  // round to bf16, as double
// The bf16 value after v (a bf16 value) towards +∞.
float next_bf16(float v) {
  const uint16_t b = f32_to_bf16(v);
  return v == 0 ? bf16_to_f32(1) : bf16_to_f32(uint16_t(v > 0 ? b + 1 : b - 1));
}
// Width of the bf16 roundings of [x − e, x + e] around the rounding of x.
double flip(double x, double e) { return std::max(rb(x) - rb(x - e), rb(x + e) - rb(x)); }

void check_dense(Activation act) {
  const int N = 13, C = 40, H = 72;
  ModelConfig m;
  m.d_model = C;
  m.n_layers = 2;
  FfnConfig f;
  f.activation = act;
  f.d_ff = H;
  ParamStore ps;
  DenseFfn ffn(f, m, ps, "ffn");
  ps.allocate();
  ps.initialize(5);
  // Weights of the size a trained model has (init_std 0.02 would make every product tiny).
  for (Param& p : ps.all())
    for (std::size_t i = 0; i < p.numel; ++i) p.w[i] *= 10.f;
  Arena measure;
  ffn.bind(measure, 1, N);
  Arena acts(measure.used());
  ffn.bind(acts, 1, N);
  ffn.set_precision(Precision::kBf16);
  std::vector<float> x(std::size_t(N) * C), out(std::size_t(N) * C);
  const Rng r(9, 1);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = r.normal(i);
  StepInfo info;
  ffn.forward(out.data(), x.data(), N, info);

  const bool glu = act == Activation::kSwiGLU;
  const float* wg = glu ? ps.find("ffn.w_gate")->w : nullptr;
  const float* wu = ps.find("ffn.w_up")->w;
  const float* wd = ps.find("ffn.w_down")->w;
  std::vector<double> hb(H), ehb(H);
  for (int n = 0; n < N; ++n) {
    const float* xn = x.data() + std::size_t(n) * C;
    for (int h = 0; h < H; ++h) {
      // gate and up on the rounded operands, and the kernel's error bound on each.
      double g = 0, sg = 0, u = 0, su = 0;
      for (int c = 0; c < C; ++c) {
        const double xb = rb(xn[c]);
        u += xb * rb(wu[std::size_t(h) * C + c]);
        su += std::fabs(xb * rb(wu[std::size_t(h) * C + c]));
        if (glu) {
          g += xb * rb(wg[std::size_t(h) * C + c]);
          sg += std::fabs(xb * rb(wg[std::size_t(h) * C + c]));
        }
      }
      const double eg = gamma(C) * sg, eu = gamma(C) * su;
      double hv, eh;
      if (glu) {
        // h = silu(g)·u; ∂h/∂g = u·σ(1 + g(1 − σ)), ∂h/∂u = silu(g). The f32 evaluation
        // (vexp within 2 ulp, kernels/vexp.h; then +, ÷, × each u): 8u·|h| covers it twice.
        const double s = 1 / (1 + std::exp(-g)), silu = g * s;
        hv = silu * u;
        eh = std::fabs(u * s * (1 + g * (1 - s))) * eg + std::fabs(silu) * eu +
             8 * kU * std::fabs(hv);
      } else {
        // h = ½x(1 + erf(x/√2)); |h'| = |Φ(x) + xφ(x)|; libm's erff within 2 ulp, 4 more roundings.
        const double Phi = 0.5 * (1 + std::erf(u / std::sqrt(2.0)));
        const double phi = std::exp(-0.5 * u * u) / std::sqrt(2 * M_PI);
        hv = u * Phi;
        eh = std::fabs(Phi + u * phi) * eu + 8 * kU * std::fabs(hv);
      }
      hb[h] = rb(hv);
      ehb[h] = flip(hv, eh);
    }
    for (int c = 0; c < C; ++c) {
      double y = 0, s = 0, e = 0;
      for (int h = 0; h < H; ++h) {
        const double w = rb(wd[std::size_t(c) * H + h]);
        y += hb[h] * w;
        s += std::fabs(hb[h] * w);
        e += ehb[h] * std::fabs(w);
      }
      const double tol = 2 * (e + gamma(H) * (s + e));
      ASSERT_LE(std::fabs(out[std::size_t(n) * C + c] - y), tol)
          << "token " << n << " channel " << c << " (|y| = " << std::fabs(y) << ")";
    }
  }
  EXPECT_NE(ffn.describe().find("bf16"), std::string::npos) << ffn.describe();
}

}  // namespace

TEST(Bf16Layers, DenseSwiGluForwardMatchesDoubleOnRoundedOperands) {
  check_dense(Activation::kSwiGLU);
}

TEST(Bf16Layers, DenseGeluForwardMatchesDoubleOnRoundedOperands) { check_dense(Activation::kGELU); }

namespace {

// The model of the decode tests below: one block of grouped-query attention (4 query heads,
// 2 kv heads of width 12) whose FFN has w_down = 0 (its bf16 output is exactly 0), weights ×10
// (the size a trained model's have), norm gains 1 + 0.1·sin(i); set to bf16.
ModelConfig decode_model() {
  ModelConfig cfg;
  cfg.vocab_size = 50;
  cfg.d_model = 48;
  cfg.n_layers = 1;
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.max_seq_len = 4;
  cfg.ffn.d_ff = 64;
  return cfg;
}
void prepare_decode_model(Transformer& model) {
  model.params().initialize(11);
  for (Param& p : model.params().all())
    for (std::size_t i = 0; i < p.numel; ++i)
      p.w[i] = p.name.find("w_down") != std::string::npos ? 0.f
               : p.name.find("norm") != std::string::npos ? 1.f + 0.1f * std::sin(float(i))
                                                          : p.w[i] * 10.f;
  model.set_precision(Precision::kBf16);
}

// Whether the model's logits [V] are those of residual x [C] (double reference, each element
// within ex[c] of the model's) through the final RMSNorm and the f32 head: the bound carries x's
// error through RMSNorm's first-order derivative, its f32 evaluation (rstd from a double sum,
// rounded once, then two products: 4u), and the f32 head product (γ_C); the factor 2 covers
// second-order terms. On failure *why names the first logit outside.
bool logits_within(const float* logits, const std::vector<double>& x, const std::vector<double>& ex,
                   const ModelConfig& cfg, const float* gf, const float* E, std::string* why) {
  const int C = cfg.d_model, V = cfg.vocab_size;
  double ms = 0, sxe = 0;
  for (int c = 0; c < C; ++c) {
    ms += x[c] * x[c] / C;
    sxe += std::fabs(x[c]) * ex[c];
  }
  const double r = 1 / std::sqrt(ms + cfg.norm_eps);
  std::vector<double> lnf(C), elnf(C);
  for (int c = 0; c < C; ++c) {
    lnf[c] = x[c] * r * gf[c];
    elnf[c] = std::fabs(gf[c]) * r * (ex[c] + std::fabs(x[c]) * r * r * sxe / C) +
              4 * kU * std::fabs(lnf[c]);
  }
  for (int t = 0; t < V; ++t) {
    double z = 0, s = 0, ez = 0;
    for (int c = 0; c < C; ++c) {
      const double w = E[std::size_t(t) * C + c];
      z += lnf[c] * w;
      s += std::fabs(lnf[c] * w);
      ez += elnf[c] * std::fabs(w);
    }
    const double err = std::fabs(logits[t] - z), bound = 2 * (ez + gamma(C) * (s + ez));
    if (err > bound) {
      *why = "logit " + std::to_string(t) + ": |model − reference| = " + std::to_string(err) +
             " > bound " + std::to_string(bound) + " (|z| = " + std::to_string(std::fabs(z)) + ")";
      return false;
    }
  }
  return true;
}

}  // namespace

// Attention's k, v and o projections through decode_step at position 0, where attention is exact:
// one key, softmax weight exactly 1, RoPE a rotation by 0, so the head output is v itself. Then
//   ln1 = RMSNorm(embed[t])          the same f32 function as the model: known bit for bit
//   k, v (the cache) = bf16(ln1)·W_{k,v}ᵀ   within γ_{C+3}·S of the double reference
//   x = embed[t] + bf16(v)·Woᵀ        (v read back from the cache: exact operands)
//   logits = RMSNorm(x)·Eᵀ            logits_within
TEST(Bf16Layers, AttentionProjectionsMatchDoubleOnRoundedOperands) {
  const ModelConfig cfg = decode_model();
  Transformer model(cfg, 1, 4);
  prepare_decode_model(model);
  const int C = cfg.d_model, Dq = 4 * 12, Dkv = 2 * 12, V = cfg.vocab_size;
  const float* E = model.params().find("embed.weight")->w;
  const float* g1 = model.params().find("layers.0.attn_norm.weight")->w;
  const float* gf = model.params().find("norm.weight")->w;
  const float* wk = model.params().find("layers.0.attn.wk")->w;
  const float* wv = model.params().find("layers.0.attn.wv")->w;
  const float* wo = model.params().find("layers.0.attn.wo")->w;
  for (int32_t tok : {3, 17, 42}) {
    KVCache cache = model.make_cache(4);
    const float* lp = model.decode_step(tok, 0, cache);
    const std::vector<float> logits(lp, lp + V);
    const float* e = E + std::size_t(tok) * C;
    std::vector<float> ln1(C);
    float rstd;
    rmsnorm_forward(ln1.data(), &rstd, e, g1, 1, C, cfg.norm_eps);
    for (int j = 0; j < Dkv; ++j) {
      double k = 0, v = 0, sk = 0, sv = 0;
      for (int c = 0; c < C; ++c) {
        const double a = rb(ln1[c]);
        k += a * rb(wk[std::size_t(j) * C + c]);
        v += a * rb(wv[std::size_t(j) * C + c]);
        sk += std::fabs(a * rb(wk[std::size_t(j) * C + c]));
        sv += std::fabs(a * rb(wv[std::size_t(j) * C + c]));
      }
      ASSERT_LE(std::fabs(cache.k[j] - k), gamma(C) * sk) << "k " << j;
      ASSERT_LE(std::fabs(cache.v[j] - v), gamma(C) * sv) << "v " << j;
    }
    // Head h's output is kv head h / 2's v: att [Dq] from the cache's v.
    std::vector<double> x(C), ex(C);
    for (int c = 0; c < C; ++c) {
      double s = 0, acc = 0;
      for (int i = 0; i < Dq; ++i) {
        const int h = i / 12, d = i % 12;
        const double a = rb(cache.v[(h / 2) * 12 + d]) * rb(wo[std::size_t(c) * Dq + i]);
        acc += a;
        s += std::fabs(a);
      }
      x[c] = e[c] + acc;
      ex[c] = gamma(Dq) * (s + std::fabs(e[c]));  // beta = 1 accumulation into the residual
    }
    std::string why;
    EXPECT_TRUE(logits_within(logits.data(), x, ex, cfg, gf, E, &why))
        << "token " << tok << ": " << why;
  }
}

// Attention's q projection, which position 0 cannot see, through decode_step at position 1: two
// keys, so the softmax weights depend on q. After tokens t0, t1 at positions 0, 1:
//   q = bf16(RMSNorm(embed[t1]))·W_qᵀ     within e_q = γ_{C+3}·S of the double reference
//   q' = RoPE(q, position 1)               f32 table (cos, sin rounded once) and two products
//                                          per element: pair (a, b) gets e_q(a) + e_q(b) +
//                                          4u·(|q_a| + |q_b|)
//   s_j = (q'·k_j)·(1/√12), j = 0, 1       k_j read back from the cache (exact operands):
//                                          Σ e_q'·|k| / √12 + γ_{hd+1}·Σ|q'·k| / √12
//   p = softmax(s)                         two entries: |dp_j| ≤ p₀p₁·(e_s₀ + e_s₁), plus the
//                                          f32 evaluation (exp of a rounded difference, a sum, a
//                                          division): 2·(|s₀ − s₁| + 6)·u
//   o = p₀·v₀ + p₁·v₁                      v from the cache: Σ e_p·|v| + γ₂·Σ p·|v|
//   x = embed[t1] + bf16(o)·Woᵀ            o is rounded by the model: to one of the bf16 values
//                                          from rb(o − e_o) to rb(o + e_o) (rounding is monotone)
//   logits                                 logits_within, for one assignment of those values
// Guard: the softmax is not saturated (some head's smaller weight > 0.05), so a wrong q moves
// the weights, and o by up to |v₀ − v₁|. Checked by mutation: q as an f32 product of the
// unrounded ln1 and masters (2⁻⁹ relative) misses every assignment's bound by ~10× (logit 0:
// 0.0042 against 0.0004).
TEST(Bf16Layers, AttentionQueryProjectionMatchesDoubleOnRoundedOperands) {
  const ModelConfig cfg = decode_model();
  Transformer model(cfg, 1, 4);
  prepare_decode_model(model);
  const int C = cfg.d_model, hd = 12, Hq = 4, Dq = Hq * hd, Dkv = 2 * hd, V = cfg.vocab_size;
  const float* E = model.params().find("embed.weight")->w;
  const float* g1 = model.params().find("layers.0.attn_norm.weight")->w;
  const float* gf = model.params().find("norm.weight")->w;
  const float* wq = model.params().find("layers.0.attn.wq")->w;
  const float* wo = model.params().find("layers.0.attn.wo")->w;
  const RopeTable<double> rope(2, hd, cfg.rope_theta, cfg.rope_style == RopeStyle::kInterleaved);
  const float scale = 1.f / std::sqrt(float(hd));  // the model's: an exact operand here
  double least_mixed = 1;  // the smallest, over the token pairs, of the most mixed head
  for (auto [t0, t1] : {std::pair{3, 17}, std::pair{42, 5}, std::pair{17, 42}}) {
    KVCache cache = model.make_cache(4);
    model.decode_step(t0, 0, cache);
    const float* lp = model.decode_step(t1, 1, cache);
    const std::vector<float> logits(lp, lp + V);
    const float* e = E + std::size_t(t1) * C;
    std::vector<float> ln1(C);
    float rstd;
    rmsnorm_forward(ln1.data(), &rstd, e, g1, 1, C, cfg.norm_eps);
    std::vector<double> q(Dq), eq(Dq), qr(Dq), eqr(Dq);
    for (int i = 0; i < Dq; ++i) {
      double acc = 0, s = 0;
      for (int c = 0; c < C; ++c) {
        const double a = rb(ln1[c]) * rb(wq[std::size_t(i) * C + c]);
        acc += a;
        s += std::fabs(a);
      }
      q[i] = acc;
      eq[i] = gamma(C) * s;
    }
    rope_row(qr.data(), q.data(), rope.cos.data() + rope.half, rope.sin.data() + rope.half, Hq,
             rope.half, rope.interleaved, false);
    for (int h = 0; h < Hq; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const int a = h * hd + (rope.interleaved ? 2 * i : i);
        const int b = h * hd + (rope.interleaved ? 2 * i + 1 : i + hd / 2);
        eqr[a] = eqr[b] = eq[a] + eq[b] + 4 * kU * (std::fabs(q[a]) + std::fabs(q[b]));
      }
    std::vector<double> o(Dq), eo(Dq);
    double mixed = 0;
    for (int h = 0; h < Hq; ++h) {
      const int kv = (h / 2) * hd;
      const float* k0 = cache.k.data() + kv;
      const float* k1 = cache.k.data() + Dkv + kv;
      const float* v0 = cache.v.data() + kv;
      const float* v1 = cache.v.data() + Dkv + kv;
      double s[2] = {0, 0}, es[2] = {0, 0};
      for (int j = 0; j < 2; ++j) {
        const float* kj = j == 0 ? k0 : k1;
        double sa = 0;
        for (int d = 0; d < hd; ++d) {
          s[j] += qr[h * hd + d] * kj[d];
          sa += std::fabs(qr[h * hd + d] * kj[d]);
          es[j] += eqr[h * hd + d] * std::fabs(kj[d]);
        }
        s[j] *= scale;
        es[j] = (es[j] + gamma(hd + 1) * sa) * scale;
      }
      const double p0 = 1 / (1 + std::exp(s[1] - s[0])), p1 = 1 - p0;
      const double ep = p0 * p1 * (es[0] + es[1]) + 2 * (std::fabs(s[0] - s[1]) + 6) * kU;
      mixed = std::max(mixed, std::min(p0, p1));
      for (int d = 0; d < hd; ++d) {
        o[h * hd + d] = p0 * v0[d] + p1 * v1[d];
        eo[h * hd + d] = ep * (std::fabs(v0[d]) + std::fabs(v1[d])) +
                         gamma(2) * (p0 * std::fabs(v0[d]) + p1 * std::fabs(v1[d]));
      }
    }
    least_mixed = std::min(least_mixed, mixed);
    // The model's bf16(o_i) is one of the bf16 values from rb(o_i − e_i) to rb(o_i + e_i) (one
    // or two where |o_i| is large against e_i, a few more near 0). Rather than bound each
    // ambiguous element by the whole width at once (which let an f32 q through: its o moves by
    // a fraction of an ulp and flips a few of them), every assignment of the ambiguous ones is
    // tried, and the logits must be one of them within the products' bound.
    std::vector<std::vector<double>> cand(Dq);
    std::size_t combos = 1;
    for (int i = 0; i < Dq; ++i) {
      for (float v = float(rb(o[i] - eo[i])); v <= float(rb(o[i] + eo[i])); v = next_bf16(v))
        cand[i].push_back(v);
      ASSERT_FALSE(cand[i].empty()) << "o " << i;
      combos *= cand[i].size();
      ASSERT_LE(combos, std::size_t(1) << 16) << "too many ambiguous roundings to try";
    }
    bool matched = false;
    std::string why;
    for (std::size_t m = 0; m < combos && !matched; ++m) {
      std::vector<double> ob(Dq);
      for (std::size_t i = 0, rest = m; i < std::size_t(Dq); ++i) {
        ob[i] = cand[i][rest % cand[i].size()];
        rest /= cand[i].size();
      }
      std::vector<double> x(C), ex(C);
      for (int c = 0; c < C; ++c) {
        double acc = 0, s = 0;
        for (int i = 0; i < Dq; ++i) {
          const double w = ob[i] * rb(wo[std::size_t(c) * Dq + i]);
          acc += w;
          s += std::fabs(w);
        }
        x[c] = e[c] + acc;
        ex[c] = gamma(Dq) * (s + std::fabs(e[c]));
      }
      matched = logits_within(logits.data(), x, ex, cfg, gf, E, &why);
    }
    EXPECT_TRUE(matched) << "tokens " << t0 << ", " << t1 << " (" << combos
                         << " assignments of o's roundings tried; the last: " << why << ")";
  }
  EXPECT_GT(least_mixed, 0.05) << "every head's softmax saturated: q would not be seen";
}

namespace {

using Grads = std::vector<std::pair<std::string, std::vector<float>>>;  // (name, gradient)

// The small model of the gradient tests below: two blocks of grouped-query attention (Dq ≠ Dkv:
// the stacked [dq | dk | dv] has unequal parts) and a dense SwiGLU FFN, 16 positions.
ModelConfig small_model() {
  ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.d_model = 48;
  cfg.n_layers = 2;
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.max_seq_len = 16;
  cfg.ffn.d_ff = 64;
  return cfg;
}

// Every parameter's gradient after one forward + backward, in precision p, of a model
// initialised with seed 5 on fixed tokens [B, T]. via_bf16: set to bf16 first, then to p.
Grads one_backward(const ModelConfig& cfg, int B, int T, Precision p, bool via_bf16 = false) {
  std::vector<int32_t> tok(B * T), tgt(B * T);
  for (int i = 0; i < B * T; ++i) {
    tok[i] = (i * 7 + 3) % cfg.vocab_size;
    tgt[i] = (i * 11 + 5) % cfg.vocab_size;
  }
  Transformer model(cfg, B, T);
  model.params().initialize(5);
  if (via_bf16) model.set_precision(Precision::kBf16);
  if (p == Precision::kBf16 || via_bf16) model.set_precision(p);
  model.params().zero_grad();
  model.forward(tok.data(), tgt.data(), B, T, StepInfo{}, 1.f);
  model.backward();
  Grads g;
  for (const Param& q : model.params().all())
    g.emplace_back(q.name, std::vector(q.g, q.g + q.numel));
  return g;
}

// ‖other − ref‖² and ‖ref‖² (Frobenius, in double).
struct SquaredNorms {
  double diff = 0, ref = 0;
};
SquaredNorms squared_norms(const std::vector<float>& ref, const std::vector<float>& other) {
  SquaredNorms n;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double d = double(other[i]) - ref[i];
    n.diff += d * d;
    n.ref += double(ref[i]) * ref[i];
  }
  return n;
}

}  // namespace

// The bf16 backward of attention's projections (wq, wk, wv run as one stacked product pair on
// [dq | dk | dv]; wo on its own) against the fp32 backward of the same model and tokens. Each
// bf16 rounding is a relative error ≤ 2⁻⁸ of one operand; per gradient tensor the errors of the
// roundings on its chain (weights, ln1, q, k, v, P, dO, dS, dq, dk, dv: 11, plus the FFN's 4
// and the next layer's) add at most linearly, so n·2⁻⁸ with n = 20 bounds the relative
// Frobenius difference (≈ 0.08). A gradient landing in the wrong rows or tensor (wk's in wv's
// place, a shifted offset) differs by O(1), and the fp32 rerun must match itself exactly.
TEST(Bf16Layers, AttentionWeightGradientsTrackFp32) {
  const ModelConfig cfg = small_model();
  const int B = 2, T = 16;
  const Grads f32 = one_backward(cfg, B, T, Precision::kFp32),
              again = one_backward(cfg, B, T, Precision::kFp32),
              b16 = one_backward(cfg, B, T, Precision::kBf16);
  ASSERT_EQ(f32.size(), b16.size());
  int checked = 0;
  for (std::size_t t = 0; t < f32.size(); ++t) {
    const std::string& name = f32[t].first;
    ASSERT_EQ(f32[t].second, again[t].second) << name;
    if (name.find(".attn.w") == std::string::npos) continue;  // wq, wk, wv, wo of each layer
    ++checked;
    const SquaredNorms n = squared_norms(f32[t].second, b16[t].second);
    ASSERT_GT(n.ref, 0.0) << name;
    EXPECT_LE(std::sqrt(n.diff / n.ref), 20.0 / 256) << name;
  }
  EXPECT_EQ(checked, 4 * cfg.n_layers);
}

// bf16 frees f32 attention's saved probabilities (set_precision); set back to fp32, the model
// allocates them again and its backward is the fresh fp32 model's, bit for bit (a probability
// buffer left null, shared with another layer or not rebound would crash or differ).
TEST(Bf16Layers, BackToFp32AfterBf16IsTheFp32Model) {
  const ModelConfig cfg = small_model();
  const int B = 2, T = 16;
  const Grads fresh = one_backward(cfg, B, T, Precision::kFp32),
              back = one_backward(cfg, B, T, Precision::kFp32, true);
  ASSERT_EQ(fresh.size(), back.size());
  for (std::size_t t = 0; t < fresh.size(); ++t)
    EXPECT_EQ(fresh[t].second, back[t].second) << fresh[t].first;
}

// The AMX tile program (on its software model where the CPU has no AMX) in a whole bf16 backward:
// every parameter's gradient of a model with MoE blocks (experts, router, attention, norms,
// embeddings) against the default path's on the same weights and tokens. Both paths multiply the
// same bf16 operands exactly and differ only in the order of the f32 sums (≤ γ_{K+3}·Σ|a·b| per
// product, K ≤ 64 here: ~4·10⁻⁶ relative), which can also flip a later operand's rounding to bf16
// by one unit (2⁻⁸ relative) where it lands on a tie boundary — rare, so such flips add far less
// than 2⁻⁸ to a tensor's Frobenius norm. Bound: 2⁻⁸ relative per tensor. A wrong operand in any
// product (a panel lane, a token row, a tile's columns) changes gradients by O(1): 1.46 with the
// 12-row panels' lanes swapped pairwise, 0.13 with every tile product scaled by 1.01.
// Observed when written (amx-model on AMD Zen, no AMX): 0 — every product here has K ≤ 2048, so
// both paths sum each element's pairs in the same order (p = 0, 1, …), and this CPU's vdpbf16ps
// evidently rounds after each product as the model does; AMX hardware need not, hence the bound.
TEST(Bf16Layers, AmxTileProgramGivesTheSameGradients) {
  const Bf16GemmPath amx = cpu_features().amx_usable ? Bf16GemmPath::kAmx : Bf16GemmPath::kAmxModel;
  ASSERT_TRUE(bf16_gemm_path_available(amx)) << "needs AVX-512 (" << cpu_features_string() << ")";
  ModelConfig cfg = small_model();
  cfg.ffn.kind = FfnConfig::Kind::kMoe;
  cfg.ffn.moe.num_experts = 4;
  cfg.ffn.moe.top_k = 2;
  cfg.ffn_overrides = {{0, FfnConfig{}}};  // layer 0 dense (d_ff 4·C by default), layer 1 MoE
  cfg.ffn_overrides[0].second.d_ff = 96;
  const int B = 2, T = 16;
  const Grads base = one_backward(cfg, B, T, Precision::kBf16);
  Grads tiles;
  {
    const ScopedBf16GemmPath scoped(amx);
    tiles = one_backward(cfg, B, T, Precision::kBf16);
  }
  ASSERT_EQ(base.size(), tiles.size());
  double worst = 0;
  for (std::size_t t = 0; t < base.size(); ++t) {
    const SquaredNorms n = squared_norms(base[t].second, tiles[t].second);
    if (n.ref == 0) {
      EXPECT_EQ(n.diff, 0.0) << base[t].first;
      continue;
    }
    worst = std::max(worst, std::sqrt(n.diff / n.ref));
    EXPECT_LE(std::sqrt(n.diff / n.ref), 1.0 / 256)
        << base[t].first << " on " << bf16_gemm_path_name(amx);
  }
  RecordProperty("worst_relative_difference", std::to_string(worst));
}
