// ggml's tensor types: block sizes, names, and the (de)quantizers we support. The formulas follow
// ggml/src/ggml-quants.c (dequantize_row_*, quantize_row_*_ref) and gguf-py/gguf/quants.py
// operation by operation, in float32 and in the same order, so results agree bit for bit (the
// build uses -ffp-contract=off, so no product is fused into a following add).
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/formats/gguf.h"

namespace moe::formats {
namespace {

struct TypeInfo {
  const char* name;  // ggml's type_name, upper-cased as gguf-py spells it
  int elements;      // per block; 0 for numbers ggml does not define
  int bytes;         // per block
};

constexpr int kQK = 256;             // QK_K: elements in a k-quant super-block
constexpr uint32_t kTypeCount = 43;  // GGML_TYPE_COUNT

// Indexed by type number; sizes from ggml.c's type_traits (= gguf-py's GGML_QUANT_SIZES). Removed
// numbers (4, 5, 31–33, 36–38) have no block, so a file using them is refused like ggml does.
constexpr TypeInfo kTypes[kTypeCount] = {
    {"F32", 1, 4},
    {"F16", 1, 2},
    {"Q4_0", 32, 2 + 16},
    {"Q4_1", 32, 2 + 2 + 16},
    {nullptr, 0, 0},
    {nullptr, 0, 0},
    {"Q5_0", 32, 2 + 4 + 16},
    {"Q5_1", 32, 2 + 2 + 4 + 16},
    {"Q8_0", 32, 2 + 32},
    {"Q8_1", 32, 4 + 4 + 32},
    {"Q2_K", kQK, 2 + 2 + kQK / 16 + kQK / 4},
    {"Q3_K", kQK, 2 + kQK / 4 + kQK / 8 + 12},
    {"Q4_K", kQK, 2 + 2 + kQK / 2 + 12},
    {"Q5_K", kQK, 2 + 2 + kQK / 2 + kQK / 8 + 12},
    {"Q6_K", kQK, 2 + kQK / 2 + kQK / 4 + kQK / 16},
    {"Q8_K", kQK, 4 + kQK + kQK / 8},
    {"IQ2_XXS", kQK, 2 + kQK / 4},
    {"IQ2_XS", kQK, 2 + kQK / 4 + kQK / 32},
    {"IQ3_XXS", kQK, 2 + kQK / 4 + kQK / 8},
    {"IQ1_S", kQK, 2 + kQK / 8 + kQK / 16},
    {"IQ4_NL", 32, 2 + 16},
    {"IQ3_S", kQK, 2 + kQK / 4 + kQK / 8 + kQK / 32 + 4},
    {"IQ2_S", kQK, 2 + kQK / 4 + kQK / 16},
    {"IQ4_XS", kQK, 2 + 2 + kQK / 2 + kQK / 64},
    {"I8", 1, 1},
    {"I16", 1, 2},
    {"I32", 1, 4},
    {"I64", 1, 8},
    {"F64", 1, 8},
    {"IQ1_M", kQK, kQK / 8 + kQK / 16 + kQK / 32},
    {"BF16", 1, 2},
    {nullptr, 0, 0},
    {nullptr, 0, 0},
    {nullptr, 0, 0},
    {"TQ1_0", kQK, 2 + 4 * 13},
    {"TQ2_0", kQK, 2 + 64},
    {nullptr, 0, 0},
    {nullptr, 0, 0},
    {nullptr, 0, 0},
    {"MXFP4", 32, 1 + 16},
    {"NVFP4", 64, 4 + 32},
    {"Q1_0", 128, 2 + 16},
    {"Q2_0", 64, 2 + 16},
};

const TypeInfo* info_of(GgmlType t) {
  const auto n = static_cast<uint32_t>(t);
  if (n >= kTypeCount || kTypes[n].elements == 0) return nullptr;
  return &kTypes[n];
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// roundf (half away from zero), written as quants.py's np_roundf does it, then the cast to int8
// that numpy performs on x86 (truncation through int32, low byte kept; NaN/out of range → int32
// min → 0). Only a block whose scale overflows 1/d reaches the out-of-range case.
int8_t round_to_i8(float v) {
  const float r = std::round(v);
  if (!(r > -2147483648.0f && r < 2147483648.0f)) return 0;
  return int8_t(uint8_t(uint32_t(int32_t(r)) & 0xffu));
}

// Q8_0 block: d (f16) then 32 int8 quants. x is [32], out is 34 bytes.
void quantize_block_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  // numpy's max: a NaN anywhere makes amax NaN.
  for (int j = 0; j < 32; ++j) {
    const float a = std::fabs(x[j]);
    if (a > amax || a != a) amax = a;
    if (amax != amax) break;
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint16_t dh = f32_to_f16(d);
  std::memcpy(out, &dh, 2);
  for (int j = 0; j < 32; ++j) out[2 + j] = uint8_t(round_to_i8(x[j] * id));
}

// Q4_0 block (18 bytes → [32]): d (f16), 16 bytes of nibbles; element j < 16 is the low nibble of
// byte j, element j + 16 its high nibble; value = d · (nibble − 8).
void dequantize_block_q4_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(int(qs[j] & 0x0f) - 8) * d;
    y[j + 16] = float(int(qs[j] >> 4) - 8) * d;
  }
}

// Q8_0 block (34 bytes → [32]): d (f16), 32 int8; value = q · d.
void dequantize_block_q8_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  for (int j = 0; j < 32; ++j) y[j] = float(int8_t(b[2 + j])) * d;
}

// Q4_K super-block (144 bytes → [256]): d, dmin (f16), 12 bytes packing eight 6-bit scales and
// eight 6-bit mins, 128 bytes of nibbles. Sub-block s (32 elements) has value
// d·sc[s]·q − dmin·m[s]; sub-blocks 2i and 2i+1 share bytes 32i..32i+31 (low, then high nibble).
void dequantize_block_q4_k(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float dmin = f16_to_f32(load_u16(b + 2));
  const uint8_t* sc = b + 4;
  const uint8_t* qs = b + 16;
  for (int s = 0; s < 8; ++s) {
    // get_scale_min_k4: the first four in the low 6 bits of bytes 0–3 / 4–7, the last four
    // split between a nibble of bytes 8–11 and the top 2 bits of bytes 0–3 / 4–7.
    int scale, min;
    if (s < 4) {
      scale = sc[s] & 63;
      min = sc[s + 4] & 63;
    } else {
      scale = (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
      min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    }
    const float d1 = d * float(scale);
    const float m1 = dmin * float(min);
    const uint8_t* q = qs + 32 * (s / 2);
    const int shift = (s % 2) * 4;
    for (int l = 0; l < 32; ++l) y[32 * s + l] = d1 * float((q[l] >> shift) & 0x0f) - m1;
  }
}

// Q6_K super-block (210 bytes → [256]): ql[128] low nibbles, qh[64] 2-bit highs, 16 int8 scales
// (one per 16 elements), d (f16); value = d·scale·(q − 32) with q = low | high << 4. Each half of
// 128 elements uses 64 ql bytes and 32 qh bytes: element l + 32k (k = 0..3) takes nibble k / 2 of
// ql[l + 32(k % 2)] and bits 2k..2k+1 of qh[l].
void dequantize_block_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_to_f32(load_u16(b + 208));
  for (int half = 0; half < 2; ++half) {
    const uint8_t* l8 = ql + 64 * half;
    const uint8_t* h8 = qh + 32 * half;
    const int8_t* sc = scales + 8 * half;
    float* out = y + 128 * half;
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const int low = (l8[l + 32 * (k % 2)] >> (4 * (k / 2))) & 0x0f;
        const int high = (h8[l] >> (2 * k)) & 3;
        const int q = (low | (high << 4)) - 32;
        out[l + 32 * k] = d * float(sc[l / 16 + 2 * k]) * float(q);
      }
    }
  }
}

// Runs f(block) for every block, in parallel when the tensor is large enough to pay for it. Each
// block is independent, so the result does not depend on the schedule.
template <class F>
void for_blocks(int64_t n_blocks, F f) {
  if (n_blocks >= 4096 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_blocks; ++i) f(i);
  } else {
    for (int64_t i = 0; i < n_blocks; ++i) f(i);
  }
}

void check_blocks(GgmlType t, int64_t n, const char* what) {
  const TypeInfo* ti = info_of(t);
  MOE_CHECK(ti != nullptr, "{}: unknown ggml type {}", what, static_cast<uint32_t>(t));
  MOE_CHECK(n >= 0 && n % ti->elements == 0,
            "{}: {} elements of type {} are not a whole number of {}-element blocks", what, n,
            ti->name, ti->elements);
}

}  // namespace

std::string ggml_type_name(GgmlType t) {
  const TypeInfo* ti = info_of(t);
  return ti ? std::string(ti->name) : fmt::format("type {}", static_cast<uint32_t>(t));
}

std::optional<GgmlBlock> ggml_block(GgmlType t) {
  const TypeInfo* ti = info_of(t);
  if (!ti) return std::nullopt;
  return GgmlBlock{ti->elements, ti->bytes};
}

bool can_dequantize(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

bool can_quantize(GgmlType t) {
  return t == GgmlType::kF32 || t == GgmlType::kF16 || t == GgmlType::kBF16 || t == GgmlType::kQ8_0;
}

uint64_t ggml_nbytes(GgmlType t, int64_t n) {
  check_blocks(t, n, "ggml_nbytes");
  const TypeInfo* ti = info_of(t);
  return uint64_t(checked_mul(n / ti->elements, ti->bytes, "ggml tensor bytes"));
}

void dequantize(GgmlType t, const void* src, float* dst, int64_t n) {
  check_blocks(t, n, "dequantize");
  MOE_CHECK(can_dequantize(t), "dequantize: type {} is not supported", ggml_type_name(t));
  if (n == 0) return;  // dst may be null (an empty vector's data())
  const auto* s = static_cast<const uint8_t*>(src);
  const TypeInfo* ti = info_of(t);
  const int64_t n_blocks = n / ti->elements;
  switch (t) {
    case GgmlType::kF32:
      std::memcpy(dst, s, size_t(n) * 4);
      return;
    case GgmlType::kF16:
      for_blocks(n_blocks, [&](int64_t i) { dst[i] = f16_to_f32(load_u16(s + 2 * i)); });
      return;
    case GgmlType::kBF16:  // bf16 is the top half of a float
      for_blocks(n_blocks, [&](int64_t i) { dst[i] = bf16_to_f32(load_u16(s + 2 * i)); });
      return;
    case GgmlType::kQ8_0:
      for_blocks(n_blocks, [&](int64_t i) { dequantize_block_q8_0(s + 34 * i, dst + 32 * i); });
      return;
    case GgmlType::kQ4_0:
      for_blocks(n_blocks, [&](int64_t i) { dequantize_block_q4_0(s + 18 * i, dst + 32 * i); });
      return;
    case GgmlType::kQ4_K:
      for_blocks(n_blocks, [&](int64_t i) { dequantize_block_q4_k(s + 144 * i, dst + 256 * i); });
      return;
    case GgmlType::kQ6_K:
      for_blocks(n_blocks, [&](int64_t i) { dequantize_block_q6_k(s + 210 * i, dst + 256 * i); });
      return;
    default:
      MOE_FAIL("dequantize: type {} is not supported", ggml_type_name(t));
  }
}

void quantize(GgmlType t, const float* src, void* dst, int64_t n) {
  check_blocks(t, n, "quantize");
  MOE_CHECK(can_quantize(t), "quantize: type {} is not supported", ggml_type_name(t));
  if (n == 0) return;
  auto* d = static_cast<uint8_t*>(dst);
  switch (t) {
    case GgmlType::kF32:
      std::memcpy(d, src, size_t(n) * 4);
      return;
    case GgmlType::kF16:
      for_blocks(n, [&](int64_t i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      });
      return;
    case GgmlType::kBF16:
      for_blocks(n, [&](int64_t i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      });
      return;
    case GgmlType::kQ8_0:
      for_blocks(n / 32, [&](int64_t i) { quantize_block_q8_0(src + 32 * i, d + 34 * i); });
      return;
    default:
      MOE_FAIL("quantize: type {} is not supported", ggml_type_name(t));
  }
}

}  // namespace moe::formats
