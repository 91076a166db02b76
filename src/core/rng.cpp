#include "moe/core/rng.h"

namespace moe {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  // Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11), 10 rounds.
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(kM0) * c[0];
    const uint64_t p1 = uint64_t(kM1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1],
         uint32_t(p0)};
    k[0] += kW0;
    k[1] += kW1;
  }
  return c;
}

uint32_t Rng::u32(uint64_t i) const {
  // One Philox call yields 4 words: counter = (i/4, stream), key = seed.
  const uint64_t block = i >> 2;
  auto r = philox4x32(
      {uint32_t(block), uint32_t(block >> 32), uint32_t(stream_), uint32_t(stream_ >> 32)},
      {uint32_t(seed_), uint32_t(seed_ >> 32)});
  return r[i & 3];
}

float Rng::normal(uint64_t i) const {
  // Two uniforms in (0,1]; double math so the tails are right.
  const double u1 = (double(u32(2 * i)) + 1.0) * (1.0 / 4294967296.0);
  const double u2 = double(u32(2 * i + 1)) * (1.0 / 4294967296.0);
  return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace moe
