// kernels/gemm_bf16: bf16 × bf16 products with f32 accumulation (training's bf16 precision).
//   1. round_to_bf16 / widen_bf16 against core/half.h's scalar conversions, bit for bit, on
//      ties, subnormals, infinities, NaN payloads, the overflow to inf and random bit patterns,
//      at every tail length of the vector loop and past the parallel threshold.
//   2. Every path this CPU runs against gemm_bf16_reference on all four trans combinations and
//      odd sizes (M, N, K from 1 to 1000, padded leading dimensions), several alpha and beta.
//   3. The edge contracts: beta = 0 never reads C (NaN there stays out), alpha = 0 and K = 0
//      only scale C, nothing outside C [M, N] is written.
//   4. Bit-identical results for 1, 2, 3 and 4 threads (avx512bf16, amx, amx-model; widen: per
//      thread count).
// The amx path runs where the CPU has AMX and the OS grants it; its tile program also runs on a
// software model of the tiles (amx-model) on every CPU with AVX-512, so all of the above covers
// the program's packing, padding, blocking and epilogue on machines without AMX too.
//
// Tolerance. The inputs are bf16, so every product a·b is exact in f32 (8 + 8 significant
// bits), and the reference sums them in double then rounds alpha·s + beta·c once to f32. A path
// sums K exact products in f32 in some order (pairs into 16 lanes, or sgemm's blocks, with or
// without FMA): ≤ K − 1 roundings per term, then alpha·s, beta·c and their sum, 3 more. So with
// u = 2⁻²⁴, γ_n = n·u/(1 − n·u), S = Σ_k |a_ik·b_kj| (Higham, Accuracy and Stability §3.1):
//   |path − exact| ≤ γ_{K+2}·(|alpha|·S + |beta·c|),  |ref − exact| ≤ u·|ref| (one rounding),
// and the test allows γ_{K+3}·(|alpha|·S + |beta·c|) + u·|ref|.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../error_util.h"
#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/kernels/cpu_features.h"
#include "moe/kernels/gemm_bf16.h"

using namespace moe;

namespace {

std::vector<Bf16GemmPath> available_paths() {
  std::vector<Bf16GemmPath> v;
  for (Bf16GemmPath p : {Bf16GemmPath::kAvx512Bf16, Bf16GemmPath::kWiden, Bf16GemmPath::kAmx,
                         Bf16GemmPath::kAmxModel, Bf16GemmPath::kAuto})
    if (bf16_gemm_path_available(p)) v.push_back(p);
  return v;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// A stored matrix [rows, ld] of bf16 values N(0,1)·scale, rounded (entries past cols too: they
// must never be read into the result, so they are made huge).
std::vector<uint16_t> random_bf16(int rows, int cols, int ld, uint64_t seed, float scale = 1.f) {
  std::vector<uint16_t> v(std::size_t(rows) * ld);
  const Rng r(seed, 7);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < ld; ++j) {
      const std::size_t at = std::size_t(i) * ld + j;
      v[at] = f32_to_bf16(j < cols ? scale * r.normal(at) : 3e38f);
    }
  return v;
}

struct Case {
  bool ta, tb;
  int M, N, K;
  float alpha, beta;
};

std::string describe(const Case& c, Bf16GemmPath p) {
  return std::string(bf16_gemm_path_name(p)) + " ta=" + std::to_string(c.ta) +
         " tb=" + std::to_string(c.tb) + " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) +
         " K=" + std::to_string(c.K) + " alpha=" + std::to_string(c.alpha) +
         " beta=" + std::to_string(c.beta);
}

// Runs the case on `path` and the reference; checks the bound above element by element (the
// worst one is printed) and that the padding columns of C are untouched.
void check_case(const Case& c, Bf16GemmPath path) {
  const int a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  const int lda = a_cols + 3, ldb = b_cols + 1, ldc = c.N + 2;
  const auto A = random_bf16(a_rows, a_cols, lda, 11);
  const auto B = random_bf16(b_rows, b_cols, ldb, 12);
  std::vector<float> C0(std::size_t(c.M) * ldc);
  const Rng r(13, 1);
  for (std::size_t i = 0; i < C0.size(); ++i) C0[i] = r.normal(i);
  std::vector<float> got = C0, want = C0;
  gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, got.data(),
            ldc, path);
  gemm_bf16_reference(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta,
                      want.data(), ldc);
  const double u = std::ldexp(1.0, -24), n = c.K + 3, gamma = n * u / (1 - n * u);
  double worst = -1;
  std::string where;
  for (int i = 0; i < c.M; ++i) {
    for (int j = 0; j < c.N; ++j) {
      double S = 0;
      for (int k = 0; k < c.K; ++k) {
        const uint16_t a = c.ta ? A[std::size_t(k) * lda + i] : A[std::size_t(i) * lda + k];
        const uint16_t b = c.tb ? B[std::size_t(j) * ldb + k] : B[std::size_t(k) * ldb + j];
        S += std::fabs(double(bf16_to_f32(a)) * bf16_to_f32(b));
      }
      const std::size_t at = std::size_t(i) * ldc + j;
      const double cb = c.beta == 0 ? 0 : std::fabs(double(c.beta) * C0[at]);
      const double tol = gamma * (std::fabs(c.alpha) * S + cb) + u * std::fabs(want[at]);
      const double err = std::fabs(double(got[at]) - want[at]);
      ASSERT_TRUE(std::isfinite(got[at])) << describe(c, path) << " at " << i << "," << j;
      if (err - tol > worst) {
        worst = err - tol;
        where = std::to_string(i) + "," + std::to_string(j) + ": got " + std::to_string(got[at]) +
                " want " + std::to_string(want[at]) + " tol " + std::to_string(tol);
      }
    }
    for (int j = c.N; j < ldc; ++j)
      ASSERT_EQ(got[std::size_t(i) * ldc + j], C0[std::size_t(i) * ldc + j])
          << describe(c, path) << ": wrote padding at " << i << "," << j;
  }
  EXPECT_LE(worst, 0.0) << describe(c, path) << " worst element " << where;
}

}  // namespace

TEST(Bf16Convert, RoundMatchesHalfHBitForBit) {
  std::vector<uint32_t> bits = {
      0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00008000u, 0x00018000u,  // subnormals
      0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,  // ties to even (down, up), near ties
      0x7f7fffffu, 0xff7fffffu, 0x7f7f8000u,               // the largest floats round to ±inf
      0x7f800000u, 0xff800000u,                            // ±inf
      0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu, 0xffbfffffu, 0x7f80ffffu};  // NaNs
  const Rng r(5, 5);
  for (int i = 0; i < 200000; ++i) bits.push_back(r.u32(uint64_t(i)));
  std::vector<float> src(bits.size());
  for (std::size_t i = 0; i < bits.size(); ++i) src[i] = from_bits(bits[i]);
  // Every tail length of the 16-lane loop, then the whole (past the parallel threshold).
  for (std::size_t n : {std::size_t(1), std::size_t(15), std::size_t(16), std::size_t(17),
                        std::size_t(21), std::size_t(33), src.size()}) {
    std::vector<uint16_t> got(n + 1, 0xabcd);
    round_to_bf16(got.data(), src.data(), n);
    for (std::size_t i = 0; i < n; ++i)
      ASSERT_EQ(got[i], f32_to_bf16(src[i])) << "n=" << n << " input bits " << std::hex << bits[i];
    EXPECT_EQ(got[n], 0xabcd) << "wrote past n=" << n;
  }
  // The same specials without the subnormals, in whole blocks of 32: on a CPU with AVX512-BF16
  // these take vcvtne2ps2bf16 (a block holding a subnormal takes the integer rule).
  std::vector<float> special;
  while (special.size() < 96)
    for (std::size_t i = 6; i < 21 && special.size() < 96; ++i) special.push_back(src[i]);
  std::vector<uint16_t> got(special.size());
  round_to_bf16(got.data(), special.data(), special.size());
  for (std::size_t i = 0; i < special.size(); ++i)
    ASSERT_EQ(got[i], f32_to_bf16(special[i])) << "input " << std::hex << to_bits(special[i]);
  for (std::size_t i = 15; i < 21; ++i)  // the NaNs stay NaNs (quiet, same sign)
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(src[i])))) << std::hex << bits[i];
}

TEST(Bf16Convert, WidenIsExact) {
  std::vector<uint16_t> h(70000);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = uint16_t(i * 40503u);
  for (std::size_t n : {std::size_t(1), std::size_t(17), h.size()}) {
    std::vector<float> got(n);
    widen_bf16(got.data(), h.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      const float w = bf16_to_f32(h[i]);
      ASSERT_EQ(std::memcmp(&got[i], &w, 4), 0) << "n=" << n << " i=" << i;
    }
  }
}

TEST(GemmBf16, ReportsItsPath) {
  const Bf16GemmPath p = gemm_bf16_path();
  const CpuFeatures& f = cpu_features();
  EXPECT_NE(p, Bf16GemmPath::kAuto);
  EXPECT_NE(p, Bf16GemmPath::kAmxModel);
  EXPECT_EQ(p == Bf16GemmPath::kAmx, f.amx_usable) << cpu_features_string();
  EXPECT_FALSE(amx_refused()) << "the AMX products failed bf16_path_self_check on "
                              << cpu_features_string();
  EXPECT_EQ(p == Bf16GemmPath::kAvx512Bf16, f.avx512_bf16 && !f.amx_usable)
      << cpu_features_string();
  // The amx model runs wherever AVX-512 does: the tile program is tested on every CI machine.
  EXPECT_EQ(bf16_gemm_path_available(Bf16GemmPath::kAmxModel), f.avx512);
}

// The check kAuto runs on the amx path before first using it (no machine we have has AMX, so on
// real tiles it is the only test the hardware instructions get): it passes on every path this
// CPU runs, the amx tile program's model included. A broken product fails it: checked when
// written on the model with its tile products scaled by 1.01, the 12-row panels' lanes swapped
// pairwise when staged into tiles, and A's rows read in place staged one row off (each: false).
TEST(GemmBf16, SelfCheckPassesOnEveryPath) {
  for (Bf16GemmPath path : available_paths()) {
    if (path != Bf16GemmPath::kAuto) {
      EXPECT_TRUE(bf16_path_self_check(path)) << bf16_gemm_path_name(path);
    }
  }
  moe::testing::expect_error([] { bf16_path_self_check(Bf16GemmPath::kAuto); }, "not available");
}

TEST(GemmBf16, EveryPathMatchesTheReference) {
  const int shapes[][3] = {{1, 1, 1},
                           {7, 1, 1},
                           {1, 7, 33},
                           {33, 7, 1},
                           {7, 33, 7},
                           {1, 1000, 7},
                           {1000, 1, 33},
                           {7, 33, 1000},
                           {33, 1000, 1},
                           {13, 45, 64},
                           {25, 64, 2},
                           {100, 97, 101},
                           {49, 129, 255},
                           // K a multiple of 32 (amx: an untransposed A read in place), full
                           // and partial 32-row blocks, one and several column panels.
                           {64, 40, 64},
                           {70, 33, 96},
                           {32, 160, 32},
                           {96, 5, 320}};
  for (Bf16GemmPath path : available_paths())
    for (const auto& s : shapes)
      for (int t = 0; t < 4; ++t)
        check_case({bool(t & 1), bool(t & 2), s[0], s[1], s[2], 1.f, 0.f}, path);
}

TEST(GemmBf16, AlphaAndBeta) {
  const float ab[][2] = {{1.f, 1.f}, {-1.25f, 0.f}, {0.5f, -0.75f}, {3.f, 1.f}};
  for (Bf16GemmPath path : available_paths())
    for (const auto& x : ab)
      for (int t = 0; t < 4; ++t)
        check_case({bool(t & 1), bool(t & 2), 37, 70, 129, x[0], x[1]}, path);
}

TEST(GemmBf16, EdgeContracts) {
  const int M = 5, N = 9, K = 6;
  const auto A = random_bf16(M, K, K, 1), B = random_bf16(K, N, N, 2);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (Bf16GemmPath path : available_paths()) {
    // beta = 0: C's NaNs are never read.
    std::vector<float> C(M * N, nan);
    gemm_bf16(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N, path);
    for (float c : C) ASSERT_TRUE(std::isfinite(c)) << bf16_gemm_path_name(path);
    // alpha = 0: C = beta·C, A and B not used (an Inf in them would give NaN).
    std::vector<uint16_t> Ainf(A.size(), f32_to_bf16(INFINITY));
    std::vector<float> D(M * N, 2.f);
    gemm_bf16(false, false, M, N, K, 0.f, Ainf.data(), K, B.data(), N, 0.5f, D.data(), N, path);
    for (float d : D) ASSERT_EQ(d, 1.f) << bf16_gemm_path_name(path);
    // K = 0: beta = 0 zeroes C.
    std::vector<float> E(M * N, nan);
    gemm_bf16(false, false, M, N, 0, 1.f, A.data(), 1, B.data(), N, 0.f, E.data(), N, path);
    for (float e : E) ASSERT_EQ(e, 0.f) << bf16_gemm_path_name(path);
  }
}

// The avx512bf16 path gives the same bits for any thread count. The widen path inherits
// OpenBLAS sgemm's rule: repeatable for a given thread count (checked here), not across counts
// (sgemm's blocking depends on the threads it runs on).
TEST(GemmBf16, BitIdenticalForAnyThreadCount) {
  const int M = 203, N = 301, K = 257;
  const int saved = omp_get_max_threads();
  for (Bf16GemmPath path : available_paths())
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const bool across = path != Bf16GemmPath::kWiden;
      const auto A = random_bf16(ta ? K : M, ta ? M : K, ta ? M : K, 3);
      const auto B = random_bf16(tb ? N : K, tb ? K : N, tb ? K : N, 4);
      std::vector<float> first;
      for (int threads : {1, 2, 3, 4}) {
        omp_set_num_threads(threads);
        for (int rep = 0; rep < 2; ++rep) {
          std::vector<float> C(std::size_t(M) * N, 1.f);
          gemm_bf16(ta, tb, M, N, K, 1.f, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.5f,
                    C.data(), N, path);
          if (first.empty() || (!across && rep == 0))
            first = C;
          else
            ASSERT_EQ(std::memcmp(first.data(), C.data(), C.size() * 4), 0)
                << bf16_gemm_path_name(path) << " ta=" << ta << " tb=" << tb
                << " threads=" << threads << " repeat=" << rep;
        }
      }
    }
  omp_set_num_threads(saved);
}
