// Counter-based RNG (Philox-4x32-10). A random number is a pure function of
// (seed, stream, counter): streams name a purpose (init of parameter i, data sampling at step s,
// dropout of layer l at step s ...), so results never depend on thread scheduling or on how
// many numbers some other part of the program drew before. Resume needs only the step.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace moe {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Builds a 64-bit stream id from purpose tags, e.g. stream_id(kPurposeData, step).
constexpr uint64_t stream_id(uint32_t purpose, uint32_t a = 0, uint32_t b = 0) {
  return (uint64_t(purpose) << 48) ^ (uint64_t(a) << 24) ^ uint64_t(b);
}

enum Purpose : uint32_t {
  kPurposeInit = 1,
  kPurposeData = 2,
  kPurposeSample = 3,
  kPurposeNoise = 4,
  kPurposeDropout = 5,
};

// The draws of one layer at one step: a purpose tag and a flag or-ed into the layer word, so
// several purposes share a tag without sharing a stream. The values are those every recorded
// run and checkpoint was made with: changing one changes the bits of training.
struct LayerStreamPurpose {
  uint32_t tag;
  uint32_t layer_flag;
};
// MoE: noisy top-k's Gaussian noise ε [N, E].
inline constexpr LayerStreamPurpose kPurposeRouterNoise{kPurposeNoise, 0};
// MoE: GShard's uniform draw per token that keeps or skips its second expert.
inline constexpr LayerStreamPurpose kPurposeGShardSecond{kPurposeNoise, 0x8000u};
// MoE: the router input's multiplicative jitter [N, C].
inline constexpr LayerStreamPurpose kPurposeJitter{kPurposeNoise, 0x4000u};
// MoE: the dropout mask of the experts' hidden units (redrawn in backward from the same key).
inline constexpr LayerStreamPurpose kPurposeExpertDropout{kPurposeDropout, 0};

// The stream of `purpose` for `layer` at training step `step`.
constexpr uint64_t layer_stream(LayerStreamPurpose purpose, int64_t step, int layer) {
  return stream_id(purpose.tag, uint32_t(step), uint32_t(layer) | purpose.layer_flag);
}

class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}

  // The i-th 32-bit draw of this stream (random access).
  uint32_t u32(uint64_t i) const;
  // Uniform in [0, 1) with 24 bits, from draw i.
  float uniform(uint64_t i) const { return (u32(i) >> 8) * (1.0f / 16777216.0f); }
  // Standard normal from draws 2i, 2i+1 (Box-Muller).
  float normal(uint64_t i) const;

  // Sequential interface for code that just wants "the next" number.
  uint32_t next_u32() { return u32(pos_++); }
  float next_uniform() { return uniform(pos_++); }
  float next_normal() {
    float z = normal(pos_);
    pos_ += 1;
    return z;
  }
  uint64_t next_below(uint64_t n) { return uint64_t(next_uniform_double() * double(n)) % n; }
  double next_uniform_double() {
    uint64_t hi = next_u32() >> 5, lo = next_u32() >> 6;  // 53 bits
    return (double(hi) * 67108864.0 + double(lo)) * (1.0 / 9007199254740992.0);
  }

 private:
  uint64_t seed_, stream_, pos_ = 0;
};

}  // namespace moe
