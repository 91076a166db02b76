// Private to src/kernels/gemm_bf16*.cpp: the AVX512-BF16 path, compiled for that target in its
// own file (gemm_bf16_avx512.cpp) and called only when cpu_features().avx512_bf16.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe::bf16k {

// gemm_bf16's contract (include/moe/kernels/gemm_bf16.h) with alpha ≠ 0 and K > 0.
void gemm_avx512(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                 int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc);

// round_to_bf16 / widen_bf16 on one range, single-threaded; need cpu_features().avx512.
void round_avx512(uint16_t* dst, const float* src, std::size_t n);
void widen_avx512(float* dst, const uint16_t* src, std::size_t n);

}  // namespace moe::bf16k
