// 16-bit floats (core/half.h) against a scalar twin in double written from the formats'
// definitions: widening is exact for all 65536 codes of each type, and narrowing picks the
// nearest representable value, ties to the even code, overflow to ±inf, NaN kept NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "moe/core/half.h"

namespace moe {
namespace {

// IEEE binary16 from its fields.
double f16_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 31  ? (m ? std::numeric_limits<double>::quiet_NaN()
                           : std::numeric_limits<double>::infinity())
             : e == 0 ? std::ldexp(double(m), -24)
                      : std::ldexp(1.0 + m / 1024.0, e - 15);
  return s ? -v : v;
}

double bf16_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
  double v = e == 255 ? (m ? std::numeric_limits<double>::quiet_NaN()
                           : std::numeric_limits<double>::infinity())
             : e == 0 ? std::ldexp(double(m), -133)
                      : std::ldexp(1.0 + m / 128.0, e - 127);
  return s ? -v : v;
}

// Nearest code to x among the positive finite codes [0, max_code] (values increase with the
// code), ties to the even code; past the largest finite value the next step is `beyond` (what
// the exponent would give), whose code is infinity.
uint16_t nearest(double x, double (*value)(uint16_t), uint16_t max_code, double beyond) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(x);
  uint16_t lo = 0, hi = max_code;
  if (a >= value(max_code)) {
    lo = max_code;
  } else {
    while (hi - lo > 1) {  // value(lo) <= a < value(hi)
      const uint16_t mid = uint16_t((lo + hi) / 2);
      (value(mid) <= a ? lo : hi) = mid;
    }
  }
  const double vlo = value(lo), vhi = lo == max_code ? beyond : value(uint16_t(lo + 1));
  uint16_t code = lo;
  if (a - vlo > vhi - a || (a - vlo == vhi - a && (lo & 1))) code = uint16_t(lo + 1);
  return uint16_t(sign | code);  // lo + 1 past max_code is the infinity code
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Half, WideningIsExactForEveryCode) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double want16 = f16_value(uint16_t(h)), want_bf = bf16_value(uint16_t(h));
    const float got16 = f16_to_f32(uint16_t(h)), got_bf = bf16_to_f32(uint16_t(h));
    if (std::isnan(want16)) {
      EXPECT_TRUE(std::isnan(got16)) << h;
    } else {
      EXPECT_EQ(double(got16), want16) << h;
      EXPECT_EQ(std::signbit(got16), std::signbit(want16)) << h;
    }
    if (std::isnan(want_bf))
      EXPECT_TRUE(std::isnan(got_bf)) << h;
    else
      EXPECT_EQ(double(got_bf), want_bf) << h;
  }
}

// Random bit patterns (every exponent), values right at and next to the midpoints between
// codes (the ties), the overflow edge and the subnormal range.
std::vector<float> narrowing_inputs() {
  std::vector<float> xs = {0.f,    -0.f,          65504.f,  65519.99f, 65520.f,
                           1e9f,   -1e9f,         5.96e-8f, 2.98e-8f,  2.9802322e-8f,
                           1e-30f, 6.1035156e-5f, 6.1e-5f};
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const float f = from_bits(uint32_t(rng()));
    if (!std::isnan(f)) xs.push_back(f);
  }
  for (uint32_t h = 0; h < 0x7c00; h += 3) {  // f16 midpoints and their neighbours
    const double mid = (f16_value(uint16_t(h)) + f16_value(uint16_t(h + 1))) / 2;
    xs.push_back(float(mid));
    xs.push_back(std::nextafter(float(mid), 0.f));
    xs.push_back(-std::nextafter(float(mid), 1e30f));
  }
  for (uint32_t b = 0; b < 0x7f80; b += 5) {  // bf16 midpoints and their neighbours
    const float mid = from_bits((b << 16) | 0x8000u);
    xs.push_back(mid);
    xs.push_back(std::nextafter(mid, 0.f));
    xs.push_back(std::nextafter(mid, 1e30f));
  }
  return xs;
}

TEST(Half, NarrowingRoundsToNearestEven) {
  for (float x : narrowing_inputs()) {
    ASSERT_EQ(f32_to_f16(x), nearest(x, f16_value, 0x7bff, 65536.0)) << x;
    ASSERT_EQ(f32_to_bf16(x), nearest(x, bf16_value, 0x7f7f, std::ldexp(1.0, 128))) << x;
  }
}

TEST(Half, InfinityAndNaN) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  EXPECT_EQ(f32_to_f16(inf), 0x7c00);
  EXPECT_EQ(f32_to_f16(-inf), 0xfc00);
  EXPECT_EQ(f32_to_bf16(inf), 0x7f80);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(nan))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(nan))));
  // A NaN whose payload sits only in the low 16 bits must not truncate to infinity.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7f800001u)))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(from_bits(0x7f800001u)))));
}

}  // namespace
}  // namespace moe
