// Private to src/kernels/qmatmul*.cpp: the activations prepared once per call for the weight
// type (bf16 rounding, Q8_0 quantization) and the per-instruction-set tile functions that
// qmatmul.cpp's dispatcher calls.
#pragma once
#include <cstdint>

#include "moe/kernels/qmatmul.h"

namespace moe::qmm {

// X [N, cols] in the form the type's products read it.
//   f32, f16 : X itself (x, ldx floats).
//   bf16     : X rounded to bf16 (nearest even), rows of ld_bf16 = round_up(cols, 32) elements,
//              zero past cols.
//   q8_0     : per 32-block, the int8 quants q ∈ [-127, 127] (rows of ld_q8 = round_up(cols, 64)
//              bytes, 0 past cols); the scale d (the f16-rounded value, as a float) of block b
//              repeated in lanes 8·(b%2)..8·(b%2)+7 of the 16-float group b/2 (ld_d floats a row,
//              0 past the last block): one load gives the scales of a pair of blocks; and in the
//              same layout, −128·(the sum of the 4 quants lane l of a pair covers) as int32: the
//              start of AVX512-VNNI's unsigned × signed vpdpbusd on (w + 128) × q, which then
//              leaves exactly Σ w·q in each lane (filled by the AVX512 preparation only).
//   q4_0     : the q8_0 form (the same activation blocks).
//   q4_k,    : per 256-block the Q8_K quants (rows of ld_qk = cols bytes, cols a multiple of 256)
//   q6_k       and a 64-byte record (rows of ld_meta bytes): bytes 0–31 the int16 sums of each 16
//              quants (ggml's bsums), bytes 32–47 the int16 sums of each 32 (bsums 2s + 2s+1: what
//              Q4_K's mins multiply), bytes 48–51 the f32 scale d, zeros after.
struct PreparedX {
  const float* x = nullptr;
  int64_t ldx = 0;
  const uint16_t* bf16 = nullptr;
  int64_t ld_bf16 = 0;
  const uint8_t* q8 = nullptr;
  int64_t ld_q8 = 0;
  const float* q8_d = nullptr;
  const int32_t* q8_c = nullptr;  // layout of q8_d
  int64_t ld_d = 0;
  const int8_t* qk = nullptr;
  int64_t ld_qk = 0;
  const uint8_t* qk_meta = nullptr;
  int64_t ld_meta = 0;
};

// The Q8_K record of one 256-block (PreparedX).
inline constexpr int kQ8KMetaBytes = 64;
inline constexpr int kQ8KPairsAt = 32;  // byte offset of the int16 sums of 32
inline constexpr int kQ8KScaleAt = 48;  // byte offset of the f32 d

// Y[n, r] for n ∈ [n0, n1), r ∈ [r0, r1): one work item of a product (rows of W × tokens).
using TileFn = void (*)(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1,
                        int64_t n0, int64_t n1, float* Y, int64_t ldy);

// The Q8_0 quantization of one 32-block of activations (ggml's quantize_row_q8_0_ref: d =
// amax/127 in f32, stored as f16; q = round-half-away(x · (1/d)); the same numbers as
// formats::quantize): q[j] as int8, returns the f16-rounded d as a float.
float quantize_block_q8_0(const float* x, int8_t* q);

// ggml's quantize_row_q8_K_ref for one 256-block of x: q[j] and the record of PreparedX (bsums,
// pair sums, d). A block holding an Inf or NaN gets d = NaN and quants 0 (ggml asserts there).
void quantize_block_q8_k(const float* x, int8_t* q, uint8_t* meta);

// The 6-bit scales and mins of a Q4_K super-block (its 12 bytes at p): ggml's get_scale_min_k4.
void q4_k_scales(const uint8_t* p, uint8_t sc[8], uint8_t m[8]);

// One row of activations into PreparedX's Q8_0 form (quants, scales, −128·Σq lane sums), padding
// included: the scalar definition, and the AVX512 one (the same bits, vectorized).
using PrepQ8Fn = void (*)(const float* x, int64_t cols, int8_t* q, int64_t ld_q8, float* d,
                          int32_t* corr, int64_t ld_d);
void prep_q8_scalar(const float* x, int64_t cols, int8_t* q, int64_t ld_q8, float* d, int32_t* corr,
                    int64_t ld_d);
void prep_q8_avx512(const float* x, int64_t cols, int8_t* q, int64_t ld_q8, float* d, int32_t* corr,
                    int64_t ld_d);

// The scalar path: each Y element is exactly qmatmul_reference's.
void tile_scalar(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
                 int64_t n1, float* Y, int64_t ldy);

// AVX512 with BF16 and VNNI (Zen 4, Sapphire Rapids, Cooper Lake …): qmatmul_avx512.cpp.
bool avx512_supported();
void tile_avx512(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
                 int64_t n1, float* Y, int64_t ldy);

// AVX2 + FMA + F16C (Haswell, Zen 1–3): qmatmul_avx2.cpp.
bool avx2_supported();
void tile_avx2(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
               int64_t n1, float* Y, int64_t ldy);

}  // namespace moe::qmm
