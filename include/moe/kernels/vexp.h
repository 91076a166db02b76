// exp that the compiler can vectorize. glibc's expf is a scalar call (its SIMD variants are
// only declared under -ffast-math), which made SwiGLU and softmax loops ~10× slower than their
// memory traffic. Float: Cody-Waite range reduction x = n·ln2 + r, |r| <= ln2/2, a degree-6
// polynomial for e^r (relative error < 2e-7, i.e. ~1-2 ulp), and 2^n built in the exponent bits.
// Double keeps std::exp so the gradient-check references stay exact.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace moe {

inline float vexp(float x) {
  // Clamp so 2^n stays a normal float; e^-87.3 ≈ 1.2e-38 (underflow to ~0 is what softmax wants).
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  // ln2 split in two so n·ln2_hi is exact.
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double vexp(double x) { return std::exp(x); }

}  // namespace moe
