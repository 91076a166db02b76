// The counter-based RNG against the published Philox4x32-10 known answers, and the derived
// draws against what their definitions promise (range, moments, random access).
#include <gtest/gtest.h>

#include <cmath>

#include "moe/core/rng.h"

namespace moe {

TEST(Philox, RandomKnownAnswerVectors) {
  // Random123's kat_vectors for philox4x32 with 10 rounds (Salmon et al., SC'11).
  struct Kat {
    std::array<uint32_t, 4> ctr;
    std::array<uint32_t, 2> key;
    std::array<uint32_t, 4> out;
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) EXPECT_EQ(philox4x32(k.ctr, k.key), k.out);
}

TEST(Rng, DrawIsAPureFunctionOfSeedStreamAndIndex) {
  // u32(i) is word i%4 of the Philox block (i/4, stream) under key seed: random access, and the
  // sequential interface walks the same numbers.
  const uint64_t seed = 0x1234567890abcdefull, stream = stream_id(kPurposeData, 7, 3);
  Rng a(seed, stream), b(seed, stream);
  for (uint64_t i = 0; i < 16; ++i) {
    const auto blk = philox4x32({uint32_t(i / 4), 0, uint32_t(stream), uint32_t(stream >> 32)},
                                {uint32_t(seed), uint32_t(seed >> 32)});
    EXPECT_EQ(a.u32(i), blk[i % 4]) << i;
    EXPECT_EQ(b.next_u32(), a.u32(i)) << i;
  }
  // Different purposes, steps or seeds give different streams.
  EXPECT_NE(Rng(seed, stream_id(kPurposeData, 7, 3)).u32(0),
            Rng(seed, stream_id(kPurposeInit, 7, 3)).u32(0));
  EXPECT_NE(Rng(seed, stream_id(kPurposeData, 7, 3)).u32(0),
            Rng(seed, stream_id(kPurposeData, 8, 3)).u32(0));
  EXPECT_NE(Rng(1, stream).u32(0), Rng(2, stream).u32(0));
}

TEST(Rng, UniformAndNormalHaveTheirMoments) {
  // n = 2^18 draws: the sample mean of U[0,1) has std 1/sqrt(12n) ≈ 5.6e-4, that of N(0,1)
  // 1/sqrt(n) ≈ 2e-3; the bounds below are 5 standard deviations (a correct generator fails
  // them with probability < 1e-6; a wrong scale or offset misses by far more).
  const int n = 1 << 18;
  Rng r(42, stream_id(kPurposeNoise, 1));
  double su = 0, sz = 0, szz = 0, mn = 1, mx = 0;
  for (int i = 0; i < n; ++i) {
    const float u = r.uniform(i);
    mn = std::min<double>(mn, u);
    mx = std::max<double>(mx, u);
    su += u;
    const double z = r.normal(i);
    sz += z;
    szz += z * z;
  }
  EXPECT_GE(mn, 0.0);
  EXPECT_LT(mx, 1.0);
  EXPECT_NEAR(su / n, 0.5, 5 / std::sqrt(12.0 * n));
  EXPECT_NEAR(sz / n, 0.0, 5 / std::sqrt(double(n)));
  // Var of z² is 2: the sample mean of z² has std sqrt(2/n).
  EXPECT_NEAR(szz / n, 1.0, 5 * std::sqrt(2.0 / n));
}

TEST(Rng, NextBelowStaysInRangeAndCoversIt) {
  Rng r(3, stream_id(kPurposeSample, 0));
  int hist[7] = {};
  for (int i = 0; i < 7000; ++i) {
    const uint64_t v = r.next_below(7);
    ASSERT_LT(v, 7u);
    ++hist[v];
  }
  // Each bin expects 1000 with std ≈ 29: 5 std either side.
  for (int h : hist) EXPECT_NEAR(h, 1000, 150);
}

}  // namespace moe
