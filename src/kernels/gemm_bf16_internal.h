// Private to src/kernels/gemm_bf16*.cpp (and attention_bf16.cpp, grouped_gemm_bf16.cpp): the
// AVX512-BF16 path, compiled for that target in its own file (gemm_bf16_avx512.cpp) and called only
// when cpu_features().avx512_bf16; the AMX path (gemm_bf16_amx.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "moe/core/arena.h"

namespace moe::bf16k {

// A per-thread buffer (as a thread_local), grown on demand and kept: no allocation once the
// largest shape was seen. Zero-filled when it grows, so padding a caller never writes reads as
// zero (attention's interleaved rows rely on it).
// 64-byte aligned (core/arena.h's AlignedAllocator says why).
template <typename T>
struct Scratch {
  AlignedVector<T> v;
  T* get(std::size_t n) {
    if (n > v.size()) {
      v.clear();
      v.resize(n);  // value-initialised: zeros
    }
    return v.data();
  }
};

// gemm_bf16's contract (include/moe/kernels/gemm_bf16.h) with alpha ≠ 0 and K > 0.
void gemm_avx512(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                 int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc);

// gemm_bf16's contract with alpha ≠ 0 and K > 0 on AMX tiles (gemm_bf16_amx.cpp): hardware =
// true issues the tile instructions (needs cpu_features().amx_usable); false runs the same tile
// program on the software model of the tiles (needs cpu_features().avx512).
void gemm_amx(bool hardware, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const uint16_t* A, int lda, const uint16_t* B, int ldb, float beta, float* C,
              int ldc);

// The expert panels' product (grouped_gemm_bf16.h's layouts) on the same tile program:
// C [M, N] (= or += when accumulate; row stride ldc) = A·B with B in 32-column panels
// Bp [⌈N/32⌉][P][32][2] (P = ⌈K/2⌉), and A either in 12-row panels Ap [⌈M/12⌉][P][12][2]
// (a_bits null) or as rows of bf16 values, row i at a_bits + (a_rows ? a_rows[i] : i)·a_ld.
void panel_gemm_amx(bool hardware, int M, int N, int K, const uint16_t* Ap, const uint16_t* a_bits,
                    int a_ld, const int32_t* a_rows, const uint16_t* Bp, float* C, int ldc,
                    bool accumulate);

// The 12×32 microkernel: C block [mr ≤ 12, nr ≤ 32] (row stride ldc) = alpha·Â·B̂ + beta·C
// over K (⌈K/2⌉ pair steps) from one A panel ap [⌈K/2⌉][12][2] and one B panel bp
// [⌈K/2⌉][32][2] (layouts in gemm_bf16_avx512.cpp); beta = 0 does not read C. The expert
// products (grouped_gemm_bf16.cpp) run it on their own K blocks of the panels.
void micro_12x32(const uint16_t* ap, const uint16_t* bp, int K, float* c, int ldc, int mr, int nr,
                 float alpha, float beta);
// The same with A read in place from 12 row pointers: row i's pair p at rows[i] + 2p (K even;
// rows i ≥ mr must point at readable rows of K values, their results are not stored).
void micro_rows_12x32(const uint16_t* const* rows, const uint16_t* bp, int K, float* c, int ldc,
                      int mr, int nr, float alpha, float beta);

// The same with A's pair (row i, step p) at ap + (p·astep + i)·2: pairs of rows of a matrix
// whose rows are interleaved in pairs (row i's rows ≥ mr must be readable; not stored).
void micro_strided_12x32(const uint16_t* ap, int astep, const uint16_t* bp, int K, float* c,
                         int ldc, int mr, int nr, float alpha, float beta);

// The panel of rows c0 .. c0+w−1 (w ≤ W; W = 12 or 32) of bf16 X [·, ld], K along the rows:
// dst[(p·W + c)·2 + h] = X[(c0+c)·ld + 2p + h], zero past K or w (layouts in
// gemm_bf16_avx512.cpp). Needs cpu_features().avx512.
// stream (W = 32): 64-byte-aligned stores go to memory non-temporally (store_fence before the
// panels are read by another thread): for panels read only later, the experts' weights.
void pack_cols_avx512(uint16_t* dst, const uint16_t* X, int ld, int K, int c0, int w, int W,
                      bool stream = false);

// Pairs of rows of bf16 matrices into panels of W pairs (W = 12 or 32): for the pair steps
// p0 ≤ p < p1, dst[cb·panel + (p·W + c)·2 + h] = rows[2(p − p0) + h][cb·W + c] for every panel
// cb < ⌈C/W⌉, zero past C and for a null row (the missing row past an odd K). At most 64 rows
// (32 steps) per call. Needs cpu_features().avx512.
void pack_row_pairs_avx512(uint16_t* dst, std::size_t panel, const uint16_t* const* rows, int C,
                           int W, int p0, int p1, bool stream = false);

// The same on the rows of one matrix X [K, ld ≥ C]: rows 2p, 2p+1 of X (null past K) for the pair
// steps p0 ≤ p < p1 (p1 − p0 ≤ 32). Needs cpu_features().avx512.
void pack_pairs_of_rows(uint16_t* dst, std::size_t panel, const uint16_t* X, int ld, int K, int C,
                        int W, int p0, int p1);

// sfence: this thread's non-temporal stores ordered before its later stores (so before the
// release of the OpenMP barrier or lock through which another thread then reads them).
void store_fence();

// round_to_bf16 / widen_bf16 on one range, single-threaded; need cpu_features().avx512. The
// rounding takes vcvtne2ps2bf16 where the CPU has AVX512-BF16 (round_bf16insn), the integer
// rule otherwise (round_int_avx512): the same bits.
void round_avx512(uint16_t* dst, const float* src, std::size_t n);
void round_int_avx512(uint16_t* dst, const float* src, std::size_t n);
void round_bf16insn(uint16_t* dst, const float* src, std::size_t n);  // needs avx512_bf16
void widen_avx512(float* dst, const uint16_t* src, std::size_t n);

// dst[j] = bf16(f0·s0[j]) | bf16(f1·s1[j]) << 16 for j < n: the pairs (k = 2p, 2p + 1) of two
// source rows, rounded as round_avx512 rounds. The products by f0, f1 are taken only when scaled
// (one f32 multiply each); s1 = null gives zero high halves (the missing row past an odd K).
// Needs cpu_features().avx512.
void round_pairs_avx512(uint32_t* dst, const float* s0, const float* s1, std::size_t n, bool scaled,
                        float f0, float f1);
void round_pairs_int_avx512(uint32_t* dst, const float* s0, const float* s1, std::size_t n,
                            bool scaled, float f0, float f1);
void round_pairs_bf16insn(uint32_t* dst, const float* s0, const float* s1, std::size_t n,
                          bool scaled, float f0, float f1);  // needs avx512_bf16

// dst[j] = r0[j] | r1[j] << 16 for j < n (r1 null: zero high halves): two rows of bf16 already
// rounded, as the pairs of round_pairs_avx512. Needs cpu_features().avx512.
void interleave_pairs_avx512(uint32_t* dst, const uint16_t* r0, const uint16_t* r1, std::size_t n);

}  // namespace moe::bf16k
