// kernels/grouped_gemm_bf16: the MoE experts' bf16 products.
//   1. The packers against their definition (grouped_gemm_bf16.h), bit for bit, on every source
//      form (transposed, rows picked by index, rows scaled) and odd sizes; on an already rounded
//      source (Bf16Src::bits) the same bits as rounding the f32 source.
//   2. bf16_panel_gemm on every path this CPU runs against a double reference on the same rounded
//      operands, for the shapes the experts use: tiny M (1, 3, 12, 13), odd K, N and K across the
//      K blocks, M = 0 and K = 0, store and accumulate.
//   3. One expert's products (first/down, forward/backward, fused and not, fused with the token
//      matrices given pre-rounded, SwiGLU and GELU) against double references on the rounded
//      operands, each path; m = 0 experts.
//   4. Bit-identical results for 1 and 2 threads on the avx512bf16 and amx paths.
// "Every path this CPU runs" includes amx-model, the AMX tile program on the software model of the
// tiles (gemm_bf16.h), wherever the CPU has AVX-512: the staging of A (rows picked by index,
// 12-row panels) and the zero-padded last chunk of B's steps are tested on machines without AMX.
//
// Tolerance (as tests/kernels/test_gemm_bf16.cpp): the operands are bf16, so each product is
// exact in f32 and the reference sums them in double. A path sums the K exact products in f32
// (pairs into lanes, per K block, then the blocks into C; or sgemm's order): ≤ K − 1 roundings per
// term, plus the add into an accumulated C, plus the reference's one rounding. With u = 2⁻²⁴,
// γ_n = n·u/(1 − n·u), S = Σ_k |a_ik·b_kj| (Higham §3.1) the test allows
//   |path − ref| ≤ γ_{K+3}·(S + |c₀|) + u·|ref|   (c₀: C before an accumulating call).
// The rounding of the f32 operands to bf16 (relative 2⁻⁸ each) is not part of the error: both
// sides round the same values (f32_to_bf16, nearest even) — that is what the packers' bit tests
// pin down.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/kernels/cpu_features.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/kernels/grouped_gemm_bf16.h"

using namespace moe;

namespace {

std::vector<Bf16GemmPath> paths() {
  std::vector<Bf16GemmPath> v;
  for (Bf16GemmPath p : {Bf16GemmPath::kAvx512Bf16, Bf16GemmPath::kWiden, Bf16GemmPath::kAmx,
                         Bf16GemmPath::kAmxModel})
    if (bf16_gemm_path_available(p)) v.push_back(p);
  return v;
}

std::vector<float> randn(std::size_t n, uint64_t seed, float scale = 1.f) {
  std::vector<float> v(n);
  const Rng r(seed, 3);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * r.normal(i);
  return v;
}

double bf(float x) { return double(bf16_to_f32(f32_to_bf16(x))); }

double gamma(int n) {
  const double u = std::ldexp(1.0, -24);
  return n * u / (1 - n * u);
}

using Get = std::function<float(int, int)>;  // the f32 value of a logical element, before rounding

// got [M, N] (row stride ldc) against Σ_k bf(a(i,k))·bf(b(k,j)) (+ c0[i,j]) with the bound above.
void expect_product(const float* got, int ldc, int M, int N, int K, const Get& a, const Get& b,
                    const float* c0, const std::string& what) {
  const double u = std::ldexp(1.0, -24);
  double worst = -1;
  std::string where;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0, S = 0;
      for (int k = 0; k < K; ++k) {
        const double t = bf(a(i, k)) * bf(b(k, j));
        s += t;
        S += std::fabs(t);
      }
      const double c = c0 ? double(c0[std::size_t(i) * ldc + j]) : 0.0;
      const double ref = s + c;
      const double bound = gamma(K + 3) * (S + std::fabs(c)) + u * std::fabs(ref);
      const double err = std::fabs(double(got[std::size_t(i) * ldc + j]) - ref) - bound;
      if (!(err <= worst) || std::isnan(err)) {
        worst = std::isnan(err) ? 1e300 : err;
        where = std::to_string(i) + "," + std::to_string(j) + " got " +
                std::to_string(got[std::size_t(i) * ldc + j]) + " ref " + std::to_string(ref);
      }
    }
  EXPECT_LE(worst, 0.0) << what << ": worst at " << where;
}

// ---- 1. Packers.

TEST(GroupedGemmBf16, PackersMatchTheirDefinition) {
  const int R = 45, K = 37, ld = 53, src_rows = 60;
  std::vector<float> x = randn(std::size_t(src_rows) * ld, 1);
  // Special values every few entries: ties (both directions), a NaN with payload (negative too),
  // infinities, the overflow to inf, subnormals, signed zero.
  const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x7fc12345u, 0xff812345u, 0x7f800000u,
                              0xff800000u, 0x7f7fffffu, 0x00000001u, 0x807fffffu, 0x80000000u};
  for (std::size_t i = 0; i < x.size(); i += 7) {
    const uint32_t u = special[(i / 7) % 10];
    std::memcpy(&x[i], &u, 4);
  }
  std::vector<int32_t> rows(60);
  for (int i = 0; i < 60; ++i) rows[i] = (i * 7 + 3) % src_rows;
  const std::vector<float> scale = randn(60, 2);
  for (int form = 0; form < 4; ++form) {
    const bool trans = form & 1, picked = form & 2;
    const Bf16Src L{x.data(), ld, trans, picked ? rows.data() : nullptr,
                    picked ? scale.data() : nullptr};
    // S(s, t) = scale(s)·x[row(s)·ld + t]; L = trans ? Sᵀ : S.
    auto S = [&](int s, int t) {
      const float f = x[std::size_t(picked ? rows[s] : s) * ld + t];
      return picked ? scale[s] * f : f;
    };
    auto Lv = [&](int r, int c) { return trans ? S(c, r) : S(r, c); };
    const int P = (K + 1) / 2;
    // B of L [K, R]: Bp[(jb·P + p)·64 + j·2 + h] = round(L(2p+h, 32jb + j)).
    std::vector<uint16_t> bp(bf16_pack_b_elems(K, R), 0xdead);
    bf16_pack_b(bp.data(), K, R, L);
    for (int jb = 0; jb < (R + 31) / 32; ++jb)
      for (int p = 0; p < P; ++p)
        for (int j = 0; j < 32; ++j)
          for (int h = 0; h < 2; ++h) {
            const int k = 2 * p + h, n = 32 * jb + j;
            const uint16_t want = k < K && n < R ? f32_to_bf16(Lv(k, n)) : 0;
            ASSERT_EQ(bp[(std::size_t(jb) * P + p) * 64 + j * 2 + h], want)
                << "B form " << form << " k=" << k << " n=" << n;
          }
    // A of L [R, K]: Ap[(ib·P + p)·24 + i·2 + h] = round(L(12ib + i, 2p+h)).
    std::vector<uint16_t> ap(bf16_pack_a_elems(R, K), 0xdead);
    bf16_pack_a(ap.data(), R, K, L);
    for (int ib = 0; ib < (R + 11) / 12; ++ib)
      for (int p = 0; p < P; ++p)
        for (int i = 0; i < 12; ++i)
          for (int h = 0; h < 2; ++h) {
            const int k = 2 * p + h, r = 12 * ib + i;
            const uint16_t want = k < K && r < R ? f32_to_bf16(Lv(r, k)) : 0;
            ASSERT_EQ(ap[(std::size_t(ib) * P + p) * 24 + i * 2 + h], want)
                << "A form " << form << " r=" << r << " k=" << k;
          }
  }
}

// The packers on an already rounded source (Bf16Src::bits, no row scale) give the bits they give
// when they round the f32 source themselves: every form, odd sizes, the specials included.
TEST(GroupedGemmBf16, PackersOfRoundedBitsMatchRoundingThemselves) {
  const int R = 45, K = 37, ld = 53, src_rows = 60;
  std::vector<float> x = randn(std::size_t(src_rows) * ld, 3);
  const uint32_t special[] = {0x3f808000u, 0x7fc12345u, 0xff800000u, 0x00000001u, 0x80000000u};
  for (std::size_t i = 0; i < x.size(); i += 5) std::memcpy(&x[i], &special[(i / 5) % 5], 4);
  std::vector<uint16_t> xb(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) xb[i] = f32_to_bf16(x[i]);
  std::vector<int32_t> rows(60);
  for (int i = 0; i < 60; ++i) rows[i] = (i * 11 + 5) % src_rows;
  for (int form = 0; form < 4; ++form)
    for (int k : {K, K - 1}) {  // odd and even K
      const bool trans = form & 1;
      const int32_t* rp = form & 2 ? rows.data() : nullptr;
      const Bf16Src f{x.data(), ld, trans, rp}, b{nullptr, ld, trans, rp, nullptr, xb.data()};
      std::vector<uint16_t> want(bf16_pack_b_elems(k, R), 1), got(want.size(), 2);
      bf16_pack_b(want.data(), k, R, f);
      bf16_pack_b(got.data(), k, R, b);
      ASSERT_EQ(got, want) << "B form " << form << " K=" << k;
      want.assign(bf16_pack_a_elems(R, k), 1);
      got.assign(want.size(), 2);
      bf16_pack_a(want.data(), R, k, f);
      bf16_pack_a(got.data(), R, k, b);
      ASSERT_EQ(got, want) << "A form " << form << " K=" << k;
    }
}

// ---- 2. The panel GEMM.

void check_gemm(int M, int N, int K, bool accumulate, Bf16GemmPath path, uint64_t seed) {
  const std::vector<float> a = randn(std::size_t(M) * K, seed),
                           b = randn(std::size_t(K) * N, ~seed);
  std::vector<uint16_t> ap(bf16_pack_a_elems(M, K) + 1), bp(bf16_pack_b_elems(K, N) + 1);
  bf16_pack_a(ap.data(), M, K, {a.data(), K});
  bf16_pack_b(bp.data(), K, N, {b.data(), N});
  const int ldc = N + 3;
  std::vector<float> c = randn(std::size_t(M) * ldc, seed + 9);
  const std::vector<float> c0 = c;
  bf16_panel_gemm(M, N, K, ap.data(), bp.data(), c.data(), ldc, accumulate, path);
  const std::string what = std::string(bf16_gemm_path_name(path)) + " M=" + std::to_string(M) +
                           " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                           (accumulate ? " +=" : " =");
  expect_product(
      c.data(), ldc, M, N, K, [&](int i, int k) { return a[std::size_t(i) * K + k]; },
      [&](int k, int j) { return b[std::size_t(k) * N + j]; }, accumulate ? c0.data() : nullptr,
      what);
  for (int i = 0; i < M; ++i)  // the padding columns of C are not written
    for (int j = N; j < ldc; ++j)
      ASSERT_EQ(c[std::size_t(i) * ldc + j], c0[std::size_t(i) * ldc + j]) << what;
}

TEST(GroupedGemmBf16, PanelGemmMatchesReference) {
  const int shapes[][3] = {{1, 1, 1},
                           {3, 40, 17},
                           {12, 32, 64},
                           {13, 33, 65},
                           {5, 96, 515},
                           {40, 7, 513},
                           {64, 130, 300},
                           {2, 256, 1031},
                           // across kBf16KC's K blocks (2048 values each)
                           {3, 40, 2 * kBf16KC + 1},
                           {13, 33, 4 * kBf16KC + 3}};
  for (Bf16GemmPath path : paths())
    for (const auto& s : shapes)
      for (bool acc : {false, true}) check_gemm(s[0], s[1], s[2], acc, path, s[0] * 131 + s[2]);
}

TEST(GroupedGemmBf16, EmptyShapes) {
  for (Bf16GemmPath path : paths()) {
    std::vector<float> c(12, 5.f);
    uint16_t dummy[64] = {};
    bf16_panel_gemm(0, 4, 8, dummy, dummy, c.data(), 4, false, path);  // M = 0: nothing
    for (float v : c) EXPECT_EQ(v, 5.f);
    bf16_panel_gemm(3, 4, 0, dummy, dummy, c.data(), 4, true, path);  // K = 0, +=: nothing
    for (float v : c) EXPECT_EQ(v, 5.f);
    bf16_panel_gemm(3, 4, 0, dummy, dummy, c.data(), 4, false, path);  // K = 0, =: zeros
    for (float v : c) EXPECT_EQ(v, 0.f);
  }
}

// ---- 3. One expert's products.

struct Expert {
  int C, H, m, N;  // N: tokens of the token matrix the rows point into
  bool gated;
  int W1() const { return gated ? 2 * H : H; }
};

// prerounded (fused only): the token matrices X and d are also given rounded (Xb, dyb), as the
// expert bank passes them, and so are hid (hidb) and dgu (dgub), which the bank rounds row by row
// as it computes them: read in place by the microkernel (K even, avx512bf16) or copied into the
// panels; the same rounded operands, so the same references.
void check_expert(const Expert& e, bool fused, Bf16GemmPath path, bool prerounded = false) {
  const int C = e.C, H = e.H, m = e.m, W1 = e.W1(), N = e.N;
  const std::string what = std::string(bf16_gemm_path_name(path)) + " C=" + std::to_string(C) +
                           " H=" + std::to_string(H) + " m=" + std::to_string(m) +
                           (e.gated ? " swiglu" : " gelu") + (fused ? " fused" : "") +
                           (prerounded ? " prerounded" : "");
  const std::vector<float> wg = randn(std::size_t(H) * C, 11, 0.1f),
                           wu = randn(std::size_t(H) * C, 12, 0.1f),
                           wd = randn(std::size_t(C) * H, 13, 0.1f);
  // 64-byte aligned, as the expert bank's: the packer then streams the panels (non-temporal).
  std::vector<uint16_t> wp_buf(bf16_expert_weight_elems(C, H, e.gated) + 32);
  uint16_t* wp =
      wp_buf.data() + (64 - reinterpret_cast<std::uintptr_t>(wp_buf.data()) % 64) % 64 / 2;
  const Bf16ExpertWeights w = bf16_pack_expert_weights(wp, e.gated ? wg.data() : nullptr, wu.data(),
                                                       wd.data(), C, H, e.gated);
  std::vector<uint16_t> sa(bf16_expert_scratch_a(m, C, H, e.gated)),
      sb(bf16_expert_scratch_b(m, C, H));
  const Bf16ExpertScratch s{sa.data(), sb.data()};
  std::vector<int32_t> rows(m);
  for (int i = 0; i < m; ++i) rows[i] = (i * 5 + 2) % N;
  const int32_t* rp = fused ? rows.data() : nullptr;
  const std::vector<float> X = randn(std::size_t(fused ? N : m) * C, 21);
  auto x = [&](int i, int c) { return X[std::size_t(fused ? rows[i] : i) * C + c]; };
  std::vector<uint16_t> Xr(X.size());
  for (std::size_t i = 0; i < X.size(); ++i) Xr[i] = f32_to_bf16(X[i]);
  const uint16_t* Xb = prerounded ? Xr.data() : nullptr;
  auto wfirst = [&](int n, int c) {  // [W_gate; W_up] (n, c)
    return e.gated && n < H ? wg[std::size_t(n) * C + c] : wu[std::size_t(n - (W1 - H)) * C + c];
  };
  // Forward.
  std::vector<float> gu(std::size_t(m) * W1 + 1);
  bf16_first_forward(gu.data(), X.data(), rp, w, m, C, H, e.gated, s, path, Xb);
  expect_product(
      gu.data(), W1, m, W1, C, x, [&](int c, int n) { return wfirst(n, c); }, nullptr,
      what + " first_forward");
  const std::vector<float> hid0 = randn(std::size_t(m) * H + 1, 22);
  std::vector<float> ye(std::size_t(m) * C + 1);
  std::vector<uint16_t> hid0r(hid0.size());
  for (std::size_t i = 0; i < hid0.size(); ++i) hid0r[i] = f32_to_bf16(hid0[i]);
  // prerounded: hid given only rounded (the f32 hid a poisoned copy, so reading it would show).
  std::vector<float> nan_hid(hid0.size(), std::numeric_limits<float>::quiet_NaN());
  bf16_down_forward(ye.data(), prerounded ? nan_hid.data() : hid0.data(), w, m, C, H, s, path,
                    prerounded ? hid0r.data() : nullptr);
  expect_product(
      ye.data(), C, m, C, H, [&](int i, int j) { return hid0[std::size_t(i) * H + j]; },
      [&](int j, int c) { return wd[std::size_t(c) * H + j]; }, nullptr, what + " down_forward");
  // Down backward.
  const std::vector<float> d = randn(std::size_t(fused ? N : m) * C, 23);
  auto dv = [&](int i, int c) { return d[std::size_t(fused ? rows[i] : i) * C + c]; };
  std::vector<uint16_t> dr(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) dr[i] = f32_to_bf16(d[i]);
  const std::vector<float> gate = randn(m + 1, 24);
  std::vector<float> hid = hid0, dgate(m + 1, -7.f), u(std::size_t(m) * H + 1);
  const std::vector<float> dwd0 = randn(std::size_t(C) * H, 25);
  std::vector<float> dwd = dwd0;
  bf16_down_backward(dwd.data(), hid.data(), d.data(), rp, fused ? gate.data() : nullptr,
                     fused ? dgate.data() : nullptr, w, m, C, H, s, fused ? u.data() : nullptr,
                     path, prerounded ? dr.data() : nullptr);
  expect_product(
      dwd.data(), H, C, H, m, [&](int c, int i) { return dv(i, c); },
      [&](int i, int j) {
        const float h = hid0[std::size_t(i) * H + j];
        return fused ? gate[i] * h : h;
      },
      dwd0.data(), what + " dW_down");
  const float* dh = fused ? u.data() : hid.data();
  expect_product(
      dh, H, m, H, C, dv, [&](int c, int j) { return wd[std::size_t(c) * H + j]; }, nullptr,
      what + " d(hid)");
  if (fused)
    for (int i = 0; i < m; ++i) {
      // dgate = u·hid in f32 (γ_H of Σ|u·h|); hid ← gate·u is one f32 multiply.
      double ref = 0, S = 0;
      for (int j = 0; j < H; ++j) {
        const double t = double(u[std::size_t(i) * H + j]) * hid0[std::size_t(i) * H + j];
        ref += t;
        S += std::fabs(t);
        ASSERT_EQ(hid[std::size_t(i) * H + j], gate[i] * u[std::size_t(i) * H + j]) << what;
      }
      EXPECT_LE(std::fabs(dgate[i] - ref), gamma(H) * S) << what << " dgate " << i;
    }
  // First backward.
  const std::vector<float> dgu = randn(std::size_t(m) * W1 + 1, 26);
  std::vector<uint16_t> dgur(dgu.size());
  for (std::size_t i = 0; i < dgu.size(); ++i) dgur[i] = f32_to_bf16(dgu[i]);
  const std::vector<float> dwg0 = randn(std::size_t(H) * C, 27),
                           dwu0 = randn(std::size_t(H) * C, 28);
  std::vector<float> dwg = dwg0, dwu = dwu0;
  for (bool acc : {false, true}) {
    const std::vector<float> dx0 = randn(std::size_t(m) * C + 1, 29);
    std::vector<float> dx = dx0;
    if (acc) dwg = dwg0, dwu = dwu0;
    // prerounded: dgu given only rounded (null f32).
    bf16_first_backward(dx.data(), e.gated ? dwg.data() : nullptr, dwu.data(),
                        prerounded ? nullptr : dgu.data(), X.data(), rp, w, m, C, H, e.gated, acc,
                        s, path, Xb, prerounded ? dgur.data() : nullptr);
    expect_product(
        dx.data(), C, m, C, W1, [&](int i, int n) { return dgu[std::size_t(i) * W1 + n]; }, wfirst,
        acc ? dx0.data() : nullptr, what + " dX");
    for (int part = e.gated ? 0 : 1; part < 2; ++part) {
      const int off = part == 0 ? 0 : W1 - H;
      expect_product(
          part == 0 ? dwg.data() : dwu.data(), C, H, C, m,
          [&](int h, int i) { return dgu[std::size_t(i) * W1 + off + h]; }, x,
          part == 0 ? dwg0.data() : dwu0.data(), what + (part == 0 ? " dW_gate" : " dW_up"));
    }
  }
}

TEST(GroupedGemmBf16, ExpertProductsMatchReference) {
  const Expert shapes[] = {
      {64, 32, 5, 20, true}, {48, 40, 1, 9, true},    {33, 17, 13, 30, true},
      {64, 96, 0, 10, true}, {40, 24, 29, 50, false}, {96, 128, 70, 100, true},
  };
  for (Bf16GemmPath path : paths())
    for (const Expert& e : shapes) {
      for (bool fused : {false, true}) check_expert(e, fused, path);
      check_expert(e, true, path, true);
    }
}

// ---- 4. Determinism: avx512bf16 and amx give the same bits on 1 and 2 threads (each C element is
// summed by one task in a fixed order); widen inherits sgemm's rule, repeatable per thread count.

TEST(GroupedGemmBf16, SameBitsForOneAndTwoThreads) {
  const int M = 200, N = 170, K = 700;  // M·N·K above the threshold that shares the work out
  const std::vector<float> a = randn(std::size_t(M) * K, 5), b = randn(std::size_t(K) * N, 6);
  std::vector<uint16_t> ap(bf16_pack_a_elems(M, K)), bp(bf16_pack_b_elems(K, N));
  const int saved = omp_get_max_threads();
  for (Bf16GemmPath path : paths()) {
    std::vector<float> first;
    for (int t : {1, 2})
      for (int rep = 0; rep < 2; ++rep) {
        omp_set_num_threads(t);
        bf16_pack_a(ap.data(), M, K, {a.data(), K});
        bf16_pack_b(bp.data(), K, N, {b.data(), N});
        std::vector<float> c(std::size_t(M) * N);
        bf16_panel_gemm(M, N, K, ap.data(), bp.data(), c.data(), N, false, path);
        if (first.empty() || (path == Bf16GemmPath::kWiden && rep == 0))
          first = c;
        else
          ASSERT_EQ(std::memcmp(first.data(), c.data(), c.size() * 4), 0)
              << bf16_gemm_path_name(path) << " threads=" << t << " repeat=" << rep;
      }
  }
  omp_set_num_threads(saved);
}

}  // namespace
