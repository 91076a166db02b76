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
//   q8_0     : per 32-block, quants q ∈ [-127, 127] stored as u = q + 128 (so AVX512-VNNI's
//              unsigned × signed vpdpbusd takes them; rows of ld_q8 = round_up(cols, 64) bytes,
//              u = 128 past cols), and the scale d (the f16-rounded value, as a float) of block b
//              repeated in lanes 8·(b%2)..8·(b%2)+7 of the 16-float group b/2 (ld_d floats a row,
//              0 past the last block): one aligned load gives the scales of a pair of blocks.
struct PreparedX {
  const float* x = nullptr;
  int64_t ldx = 0;
  const uint16_t* bf16 = nullptr;
  int64_t ld_bf16 = 0;
  const uint8_t* q8 = nullptr;
  int64_t ld_q8 = 0;
  const float* q8_d = nullptr;
  int64_t ld_d = 0;
};

// Y[n, r] for n ∈ [n0, n1), r ∈ [r0, r1): one work item of a product (rows of W × tokens).
using TileFn = void (*)(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1,
                        int64_t n0, int64_t n1, float* Y, int64_t ldy);

// The Q8_0 quantization of one 32-block of activations (ggml's quantize_row_q8_0_ref: d =
// amax/127 in f32, stored as f16; q = round-half-away(x · (1/d)); the same numbers as
// formats::quantize): u[j] = q[j] + 128, returns the f16-rounded d as a float.
float quantize_block_q8_0_u(const float* x, uint8_t* u);

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
