// 16-bit floats as stored in checkpoints from outside (Hugging Face safetensors, GGUF):
//   BF16 = the top 16 bits of an IEEE f32 (8 exponent bits, 7 mantissa bits);
//   F16  = IEEE binary16 (5 exponent bits, bias 15, 10 mantissa bits, subnormals).
// Widening to f32 is exact. Narrowing rounds to nearest, ties to even (as numpy's astype and
// torch's .to() do); values beyond the F16 range become ±inf. A NaN stays a NaN of the same sign,
// never rounded into an infinity: BF16 keeps the top of the payload and sets the quiet bit
// (ggml's and gguf-py's rule), F16 keeps the top 10 payload bits, made non-zero (numpy's rule).
// One implementation for both formats: GGUF's (de)quantizers are bit-exact against gguf-py's
// quants.py with these (tests/python/test_gguf_quants.py).
#pragma once
#include <cstdint>
#include <cstring>

namespace moe {

inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN: keep it quiet
  // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // inf / NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);  // normal: rebias 15 → 127
  } else if (man == 0) {
    u = sign;  // ±0
  } else {
    // Subnormal man·2^-24: shift the mantissa up until its leading 1 is the implicit bit.
    int e = 113;
    uint32_t m = man;
    while (!(m & 0x400u)) {
      m <<= 1;
      --e;
    }
    u = sign | (uint32_t(e) << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) {  // NaN: the top 10 payload bits, made non-zero so it stays a NaN
    const uint16_t m = uint16_t((a & 0x7fffffu) >> 13);
    return uint16_t(sign | 0x7c00u | (m ? m : 1u));
  }
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // ≥ 65520 rounds to inf (or is inf)
  const int32_t exp = int32_t(a >> 23) - 127;
  if (exp >= -14) {
    // Normal in f16: drop 13 mantissa bits, round to nearest even (a carry into the exponent is
    // the right answer, e.g. 2047.9 → 2048).
    uint32_t r = a - (112u << 23);
    r += 0xfffu + ((r >> 13) & 1u);
    return uint16_t(sign | (r >> 13));
  }
  if (exp < -25) return sign;  // below half the smallest subnormal: ±0
  // Subnormal: value = m·2^(exp-23) with the implicit bit; f16 step is 2^-24.
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const int shift = -exp - 1;  // 14..24: bits below the 2^-24 step
  const uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  const uint32_t rounded = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
  return uint16_t(sign | rounded);
}

}  // namespace moe
