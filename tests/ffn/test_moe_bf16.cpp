// The MoE layer with train.precision = bf16 (the experts' products in bf16, everything else f32):
//   1. forward and backward against the double layer (the reference, untouched) run on the same
//      weights rounded to bf16, for SwiGLU and GELU, both f32 expert GEMMs (panel / blas: bf16
//      reads the token rows in place either way; its unfused path runs under expert
//      parallelism, tests/python/test_expert_parallel.py),
//      shared experts with the shared gate, expert dropout with capacity drops;
//   2. a bf16 layer repeats its bits; the bf16 expert bank gives the same bits for 1 and 2
//      threads (avx512bf16);
//   3. set_precision(fp32) leaves the layer bit-identical to one never set; the double layer
//      refuses bf16;
//   4. MoeFfn: describe() says bf16, and each refresh_low_precision (not each forward) takes the
//      masters' current values.
//
// Tolerance (1). Both sides use the same bf16 weights and the same routing (checked: the same
// selected experts); what differs is that the bf16 layer rounds each activation operand of its
// products to bf16 (relative error ≤ u_bf = 2⁻⁸, nearest even: 8 significant bits) where the
// double layer does not, and sums in f32 (γ_K ≈ K·2⁻²⁴, negligible here). To first order a
// product whose operand is perturbed elementwise by relative δ_k, |δ_k| ≤ u_bf, changes by
// Σ_k δ_k·a_k·b_k; those rounding errors are independent of the data and of each other, so in
// norm the relative change of a product is ≤ u_bf (not √K·u_bf: no systematic bias with
// nearest-even), and errors of successive roundings on a tensor's chain add. Each tensor is
// allowed n·u_bf relative error in Frobenius norm, n the rounded operands on its chain:
//   y: x, hid (2);  dx and d router: + dy, d(hid)·... (first backward: dgu) → 4;
//   d W_down: dy and hid (+ x before hid) → 3;  d W_gate, d W_up: 4 (dy, hid's chain, dgu, x).
// A wrong panel, offset or scale gives an O(1) relative error; plain f32 gives ~1e-6 (checked
// too, so the comparison itself is sound).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "../grad_check.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/dist/communicator.h"
#include "moe/ffn/feed_forward.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe_test_util.h"

using namespace moe;
using namespace moe::testing;
using V = std::vector<double>;

namespace {

constexpr double kUbf = 1.0 / 256;  // bf16's unit roundoff, 2⁻⁸

V rounded(const V& v) {
  V r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) r[i] = bf16_to_f32(f32_to_bf16(float(v[i])));
  return r;
}
std::vector<float> to_f(const V& v) { return std::vector<float>(v.begin(), v.end()); }

double rel_err(const std::vector<float>& got, const V& ref) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    d += (got[i] - ref[i]) * (got[i] - ref[i]);
    n += ref[i] * ref[i];
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

// The layer's inputs and weights (double), and its outputs and gradients.
struct Data {
  V x, router, bias, wg, wu, wd, sg, su, sd, s_router, R;
};
template <typename U>
struct Out {
  std::vector<U> y, dx, gr, gg, gu, gd, sgg, sgu, sgd, gsr;
};

Data make_data(const MoeSpec& s, int N, uint32_t seed) {
  const std::size_t E = s.E, C = s.C, H = s.H, S = s.n_shared, Hs = s.shared_H();
  Data d;
  d.x = randn(N * C, seed);
  d.router = randn(E * C, seed + 1, 3.0 / std::sqrt(double(C)));
  d.bias = V(E, 0.0);
  d.wg = randn(E * H * C, seed + 2, 0.5 / std::sqrt(double(C)));
  d.wu = randn(E * H * C, seed + 3, 0.5 / std::sqrt(double(C)));
  d.wd = randn(E * C * H, seed + 4, 1.0 / std::sqrt(double(H)));
  d.sg = randn(S * Hs * C, seed + 5, 0.5 / std::sqrt(double(C)));
  d.su = randn(S * Hs * C, seed + 6, 0.5 / std::sqrt(double(C)));
  d.sd = randn(S * C * Hs, seed + 7, 1.0 / std::sqrt(double(Hs)));
  d.s_router = randn(s.shared_gate ? C : 0, seed + 8, 0.3);
  d.R = randn(N * C, seed + 9);
  return d;
}

template <typename U>
U* ptr(std::vector<U>& v) {
  return v.empty() ? nullptr : v.data();
}

// One forward + backward of MoeLayer<U> on d (converted to U), in `precision` (float only).
template <typename U>
Out<U> run(const MoeSpec& s, int B, int T, const Data& d, Precision precision,
           std::vector<int32_t>* selected = nullptr) {
  auto cv = [](const V& v) { return std::vector<U>(v.begin(), v.end()); };
  std::vector<U> x = cv(d.x), router = cv(d.router), bias = cv(d.bias), wg = cv(d.wg),
                 wu = cv(d.wu), wd = cv(d.wd), sg = cv(d.sg), su = cv(d.su), sd = cv(d.sd),
                 sr = cv(d.s_router), R = cv(d.R);
  const bool glu = s.act == Activation::kSwiGLU;
  if (!glu) wg.clear(), sg.clear();
  MoeLayer<U> layer(s);
  Arena m;
  layer.bind(m, B, T);
  Arena acts(m.used());
  layer.bind(acts, B, T);
  const MoeParams<U> p{ptr(router), nullptr, ptr(bias), ptr(wg), ptr(wu),
                       ptr(wd),     ptr(sg), ptr(su),   ptr(sd), ptr(sr)};
  if constexpr (std::is_same_v<U, float>) {
    layer.set_precision(precision);
    layer.refresh_low_precision(p);
  }
  Out<U> o;
  o.y.assign(x.size(), U(0));
  o.dx.assign(x.size(), U(0));
  o.gr.assign(router.size(), U(0));
  o.gg.assign(wg.size(), U(0));
  o.gu.assign(wu.size(), U(0));
  o.gd.assign(wd.size(), U(0));
  o.sgg.assign(sg.size(), U(0));
  o.sgu.assign(su.size(), U(0));
  o.sgd.assign(sd.size(), U(0));
  o.gsr.assign(sr.size(), U(0));
  layer.forward(o.y.data(), x.data(), p, step_of<U>(B, T, true));
  const MoeGrads<U> g{ptr(o.gr),  nullptr,    ptr(o.gg),  ptr(o.gu), ptr(o.gd),
                      ptr(o.sgg), ptr(o.sgu), ptr(o.sgd), ptr(o.gsr)};
  layer.backward(o.dx.data(), g, R.data(), x.data(), p);
  if (selected) *selected = layer.selected_experts();
  return o;
}

// (1): the bf16 layer against the double layer on the rounded weights.
void check_bf16_layer(const MoeSpec& s, int B, int T, uint32_t seed) {
  Data d = make_data(s, B * T, seed);
  Data dr = d;  // the reference: the same weights, rounded to bf16 as the bf16 layer rounds them
  for (V* w : {&dr.wg, &dr.wu, &dr.wd, &dr.sg, &dr.su, &dr.sd}) *w = rounded(*w);
  std::vector<int32_t> sel_ref, sel_bf16, sel_f32;
  const Out<double> ref = run<double>(s, B, T, dr, Precision::kFp32, &sel_ref);
  const Out<float> got = run<float>(s, B, T, d, Precision::kBf16, &sel_bf16);
  const Out<float> f32 = run<float>(s, B, T, dr, Precision::kFp32, &sel_f32);
  ASSERT_EQ(sel_bf16, sel_ref);
  ASSERT_EQ(sel_f32, sel_ref);
  auto check = [&](const char* what, const std::vector<float>& a, const std::vector<float>& f,
                   const V& r, int n) {
    if (r.empty()) return;
    const double e = rel_err(a, r), ef = rel_err(f, r);
    EXPECT_LE(e, n * kUbf) << what << " (bf16 vs double on rounded weights)";
    EXPECT_GT(e, 0.0) << what << ": no rounding at all (is the bf16 path running?)";
    EXPECT_LE(ef, 1e-5) << what << " (f32 vs double: the comparison itself)";
  };
  auto dv = [](const std::vector<double>& v) { return V(v.begin(), v.end()); };
  check("y", got.y, f32.y, dv(ref.y), 2);
  check("dx", got.dx, f32.dx, dv(ref.dx), 4);
  check("d router", got.gr, f32.gr, dv(ref.gr), 4);
  check("d w_down", got.gd, f32.gd, dv(ref.gd), 3);
  check("d w_up", got.gu, f32.gu, dv(ref.gu), 4);
  check("d w_gate", got.gg, f32.gg, dv(ref.gg), 4);
  check("d shared w_down", got.sgd, f32.sgd, dv(ref.sgd), 3);
  check("d shared w_up", got.sgu, f32.sgu, dv(ref.sgu), 4);
  check("d shared w_gate", got.sgg, f32.sgg, dv(ref.sgg), 4);
  check("d shared gate", got.gsr, f32.gsr, dv(ref.gsr), 4);
}

TEST(MoeBf16, LayerMatchesDoubleOnRoundedOperands) {
  for (int variant = 0; variant < 5; ++variant) {
    MoeSpec s = spec_of(RouterKind::kTopK, 8, 2, 96, 72);
    if (variant == 1) s.act = Activation::kGELU;
    if (variant == 2) s.expert_gemm = ExpertGemm::kBlas;  // f32 would gather panels; bf16 not
    if (variant == 3) {
      s.n_shared = 1;
      s.shared_gate = true;
    }
    if (variant == 4) {
      s.expert_dropout = 0.25f;
      s.capacity_factor = 0.9f;
    }
    SCOPED_TRACE(::testing::Message() << "variant " << variant);
    check_bf16_layer(s, 2, 150, 400 + variant);
  }
}

template <typename U>
bool same_bits(const std::vector<U>& a, const std::vector<U>& b) {
  // Empty vectors (no shared experts) may hold null data, which memcmp must not be given.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(U)) == 0);
}
bool same_bits(const Out<float>& a, const Out<float>& b) {
  return same_bits(a.y, b.y) && same_bits(a.dx, b.dx) && same_bits(a.gr, b.gr) &&
         same_bits(a.gg, b.gg) && same_bits(a.gu, b.gu) && same_bits(a.gd, b.gd) &&
         same_bits(a.sgg, b.sgg) && same_bits(a.sgu, b.sgu) && same_bits(a.sgd, b.sgd) &&
         same_bits(a.gsr, b.gsr);
}

// (2): deterministic. The layer repeats its bits for a thread count (its router products run on
// OpenBLAS, whose blocking follows the thread count, in fp32 and bf16 alike); the expert bank in
// bf16 gives the same bits for 1 and 2 threads on the avx512bf16 path (widen: sgemm's rule), in
// both schedules: one expert per thread (E = 8) and one expert at a time with shared-out
// products (E = 2), and for the shared experts.
TEST(MoeBf16, LayerRepeatsItsBits) {
  MoeSpec s = spec_of(RouterKind::kTopK, 8, 2, 128, 96);
  s.n_shared = 1;
  const Data d = make_data(s, 512, 77);
  const Out<float> a = run<float>(s, 1, 512, d, Precision::kBf16);
  const Out<float> b = run<float>(s, 1, 512, d, Precision::kBf16);
  EXPECT_TRUE(same_bits(a, b));
}

// One forward + backward of the bf16 expert bank alone on gathered panels: E experts with rows
// (e·97) mod 301 (expert 0 empty), and one shared expert on 600 tokens: products large enough
// to be shared out among the threads when run outside a parallel region.
std::vector<float> bank_run(int E) {
  MoeSpec s = spec_of(RouterKind::kTopK, E, 2, 128, 96);
  s.n_shared = 1;
  const int C = s.C, H = s.H, W1 = s.w1_rows(), N = 600;
  std::vector<int32_t> off(E + 1, 0);
  for (int e = 0; e < E; ++e) off[e + 1] = off[e] + (e * 97) % 301;
  const int rows = off[E];
  auto f = [](std::size_t n, uint32_t seed, double sc) { return to_f(randn(n, seed, sc)); };
  const std::vector<float> x = f(std::size_t(rows) * C, 1, 1), dye = f(std::size_t(rows) * C, 2, 1),
                           wg = f(std::size_t(E) * H * C, 3, 0.1), wu = f(wg.size(), 4, 0.1),
                           wd = f(wg.size(), 5, 0.1), sg = f(std::size_t(H) * C, 6, 0.1),
                           su = f(sg.size(), 7, 0.1), sd = f(sg.size(), 8, 0.1),
                           xt = f(std::size_t(N) * C, 9, 1), dyt = f(xt.size(), 10, 1);
  ExpertBank<float> bank(s);
  Arena m;
  bank.bind(m, E, 300, N, false);
  Arena a(m.used());
  bank.bind(a, E, 300, N, false);
  bank.set_bf16(true);
  const MoeParams<float> p{nullptr,   nullptr,   nullptr,   wg.data(), wu.data(),
                           wd.data(), sg.data(), su.data(), sd.data(), nullptr};
  bank.refresh_bf16(p, E);
  std::vector<float> gu(std::size_t(rows) * W1), hid(std::size_t(rows) * H),
      ye(std::size_t(rows) * C), dx(std::size_t(rows) * C), ggr(wg.size()), gup(wg.size()),
      gdn(wg.size()), sgg(sg.size()), sgu(sg.size()), sgd(sg.size()), y(xt.size()), dxt(xt.size());
  ExpertPanels<float> q;
  q.x = x.data();
  q.gu = gu.data();
  q.hid = hid.data();
  q.ye = ye.data();
  q.dye = dye.data();
  q.offsets = off.data();
  q.experts = E;
  bank.forward(q, p, ExpertDropout{});
  std::vector<float> out = ye;
  const MoeGrads<float> g{nullptr,    nullptr,    ggr.data(), gup.data(), gdn.data(),
                          sgg.data(), sgu.data(), sgd.data(), nullptr};
  bank.backward(q, g, p, dx.data());
  bank.shared_forward(y.data(), xt.data(), p, N);
  bank.shared_backward(dxt.data(), g, dyt.data(), xt.data(), p, N);
  for (const auto* v : {&dx, &ggr, &gup, &gdn, &sgg, &sgu, &sgd, &y, &dxt})
    out.insert(out.end(), v->begin(), v->end());
  return out;
}

TEST(MoeBf16, ExpertBankSameBitsForOneAndTwoThreads) {
  const bool across = bf16_microkernel_path(Bf16GemmPath::kAuto) == Bf16GemmPath::kAvx512Bf16;
  const int saved = omp_get_max_threads();
  for (int E : {8, 2}) {
    omp_set_num_threads(1);
    const std::vector<float> a = bank_run(E);
    omp_set_num_threads(2);
    const std::vector<float> b = bank_run(E), b2 = bank_run(E);
    EXPECT_TRUE(same_bits(b, b2)) << "E=" << E << " repeat on 2 threads";
    if (across) {
      EXPECT_TRUE(same_bits(a, b)) << "E=" << E << " 1 vs 2 threads";
    }
  }
  omp_set_num_threads(saved);
}

// (3): fp32 stays the f32 path, bit for bit.
TEST(MoeBf16, Fp32PrecisionIsTheUnsetLayer) {
  MoeSpec s = spec_of(RouterKind::kTopK, 8, 2, 64, 40);
  s.n_shared = 1;
  const Data d = make_data(s, 200, 91);
  const Out<float> a = run<float>(s, 2, 100, d, Precision::kFp32);  // set to fp32, refreshed
  // A layer never told its precision.
  std::vector<float> x = to_f(d.x), router = to_f(d.router), bias = to_f(d.bias), wg = to_f(d.wg),
                     wu = to_f(d.wu), wd = to_f(d.wd), sg = to_f(d.sg), su = to_f(d.su),
                     sd = to_f(d.sd), R = to_f(d.R);
  MoeLayer<float> layer(s);
  Arena m;
  layer.bind(m, 2, 100);
  Arena acts(m.used());
  layer.bind(acts, 2, 100);
  const MoeParams<float> p{router.data(), nullptr,   bias.data(), wg.data(), wu.data(),
                           wd.data(),     sg.data(), su.data(),   sd.data(), nullptr};
  Out<float> b;
  b.y.assign(x.size(), 0.f);
  b.dx.assign(x.size(), 0.f);
  b.gr.assign(router.size(), 0.f);
  b.gg.assign(wg.size(), 0.f);
  b.gu.assign(wu.size(), 0.f);
  b.gd.assign(wd.size(), 0.f);
  b.sgg.assign(sg.size(), 0.f);
  b.sgu.assign(su.size(), 0.f);
  b.sgd.assign(sd.size(), 0.f);
  layer.forward(b.y.data(), x.data(), p, step_of<float>(2, 100, true));
  layer.backward(b.dx.data(),
                 {b.gr.data(), nullptr, b.gg.data(), b.gu.data(), b.gd.data(), b.sgg.data(),
                  b.sgu.data(), b.sgd.data(), nullptr},
                 R.data(), x.data(), p);
  EXPECT_TRUE(same_bits(a, b));
  EXPECT_FALSE(layer.bf16());
}

TEST(MoeBf16, DoubleLayerRefusesBf16) {
  MoeLayer<double> layer(spec_of(RouterKind::kTopK, 4, 2));
  Arena m;
  layer.bind(m, 1, 4);
  EXPECT_THROW(layer.set_precision(Precision::kBf16), Error);
}

}  // namespace

namespace {

// The FeedForward face (MoeFfn): describe() says bf16, and a bf16 step follows the refreshed
// weights: after the masters change, refresh_low_precision makes the next forward use them (the
// output equals a fresh bf16 layer's on the new weights, bit for bit), while without a refresh
// it still sees the old packed ones.
TEST(MoeBf16, MoeFfnRefreshesOncePerStep) {
  FfnConfig f;
  f.kind = FfnConfig::Kind::kMoe;
  f.moe.num_experts = 4;
  f.moe.top_k = 2;
  f.moe.d_expert = 40;
  f.moe.shared_experts = 1;
  ModelConfig mc;
  mc.d_model = 64;
  const int B = 2, T = 24, N = B * T, C = mc.d_model;
  auto make = [&](ParamStore& ps) {
    auto ffn = make_feed_forward(f, mc, ps, "blocks.0.ffn", 0, single_process_communicator());
    ps.allocate();
    ps.initialize(3);
    return ffn;
  };
  ParamStore ps;
  auto ffn = make(ps);
  Arena m;
  ffn->bind(m, B, T);
  Arena acts(m.used());
  ffn->bind(acts, B, T);
  EXPECT_EQ(ffn->describe().find(" bf16"), std::string::npos) << ffn->describe();
  ffn->set_precision(Precision::kBf16);
  EXPECT_NE(ffn->describe().find(" bf16"), std::string::npos) << ffn->describe();
  ffn->refresh_low_precision();
  const std::vector<float> x = to_f(randn(std::size_t(N) * C, 5));
  StepInfo info;
  info.batch = B;
  info.seq_len = T;
  std::vector<float> y0(x.size()), y1(x.size()), y2(x.size());
  ffn->forward(y0.data(), x.data(), N, info);
  // A master weight changes (as after an optimizer step): without a refresh the products still
  // read the packed weights of the last refresh; after one, the new weights.
  Param* wd = ps.find("blocks.0.ffn.experts.w_down");
  ASSERT_NE(wd, nullptr);
  for (std::size_t i = 0; i < wd->numel; ++i) wd->w[i] *= 2.f;
  ffn->forward(y1.data(), x.data(), N, info);
  EXPECT_TRUE(same_bits(y0, y1)) << "the packed weights changed without a refresh";
  ffn->refresh_low_precision();
  ffn->forward(y2.data(), x.data(), N, info);
  EXPECT_FALSE(same_bits(y0, y2)) << "the refresh did not pick up the new weights";
}

}  // namespace
