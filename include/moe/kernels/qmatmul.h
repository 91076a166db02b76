// Matrix products with weights kept in their stored type (the inference path, infer/): a weight
// matrix W [rows, cols] of f32, f16, bf16 or GGML Q8_0, Q4_0, Q4_K, Q6_K read in place (from a
// memory-mapped model file: never copied, never widened to an f32 copy), times f32 activations.
//
//   Y[n, r] = Σ_c X[n, c] · W[r, c]     n < N, r < rows        (Y written, not accumulated)
//
// Per type (llama.cpp's "vec_dot_type" rule, so the two engines do the same arithmetic):
//   f32  : f32 × f32, f32 accumulation; from N = kQmatmulSgemmMinN tokens on, OpenBLAS sgemm
//          (faster there; its sums are thread-count independent too, but not those of N = 1).
//   f16  : W widened to f32 in registers, f32 × f32.
//   bf16 : X rounded to bf16 (nearest even) once per call, bf16 × bf16 products with f32
//          accumulation (AVX512-BF16 vdpbf16ps where the CPU has it; the fallback widens both to
//          f32 and computes the same products).
//   q8_0 : X quantized to Q8_0 blocks of 32 (d = amax/127, q = round(x/d)) once per call; per
//          block the int32 dot product of the int8 quants (AVX512-VNNI vpdpbusd / AVX2 maddubs /
//          scalar), scaled by d_w·d_x in f32 and summed over blocks in f32.
//   q4_0 : X quantized to Q8_0 as for q8_0; per block the int32 Σ (w − 8)·q of the 4-bit weights
//          (nibble w ∈ [0, 15]), scaled by d_w·d_x in f32, summed over blocks in f32.
//   q4_k, q6_k : X quantized to Q8_K once per call (ggml's quantize_row_q8_K: per 256-block
//          the f32 d = 1/(−127/max) with max the element of largest |x|, q = nearest-even
//          (x·(−127/max)) capped at 127, and the int16 sums of each 16 quants). Per super-block of
//          256 the exact int32 sums (llama.cpp's ggml_vec_dot_q4_K_q8_K / q6_K_q8_K):
//            q4_k: isum = Σ_s sc_s·Σ_{j∈s} w_j·q_j (8 sub-blocks of 32, w ∈ [0, 15]),
//                  msum = Σ_s m_s·(the two bsums of s);
//                  y += (d_w·d_x)·isum − (dmin_w·d_x)·msum
//            q6_k: isum = Σ_s sc_s·Σ_{j∈s} (w_j − 32)·q_j (16 sub-blocks of 16, w ∈ [0, 63]);
//                  y += (d_w·d_x)·isum
//          each product and sum rounded to f32, summed over super-blocks in f32.
// The instruction set is chosen at run time from what the CPU reports (qmatmul_isa() names it).
// Every path has a scalar reference (qmatmul_reference) that defines its numbers; the fast paths
// agree with it to a tolerance derived from cols and the type (tests/kernels/test_qmatmul.cpp).
//
// Determinism: each Y element is reduced in an order that depends only on cols and the type —
// never on the thread count — so results are bit-identical for any number of threads. On the
// SIMD paths it does not depend on N either (a token alone gives the bits it gets inside a
// batch), except f32 from kQmatmulSgemmMinN tokens on.
// Threads: OpenMP over output rows (and, for large N, token blocks), inside the call.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moe {

// The numbers are ggml's type numbers' layouts (ggml-common.h): Q8_0 blocks of 32 = f16 d + 32
// int8; Q4_0 blocks of 32 = f16 d + 16 bytes of nibbles (element j < 16 the low nibble of byte j,
// j + 16 its high one); Q4_K super-blocks of 256 = f16 d, f16 dmin, 12 bytes of 6-bit scales and
// mins, 128 bytes of nibbles; Q6_K super-blocks of 256 = 128 bytes of low nibbles, 64 bytes of
// 2-bit highs, 16 int8 scales, f16 d (formats/ggml_quants.cpp spells each out).
enum class WType : uint8_t { kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_K, kQ6_K };
// "f32" | "f16" | "bf16" | "q8_0" | "q4_0" | "q4_k" | "q6_k"
const char* wtype_name(WType t);

// Bytes of one row of `cols` elements. Q8_0: cols a multiple of 32, 34 bytes per block; Q4_0: a
// multiple of 32, 18 bytes per block; Q4_K: a multiple of 256, 144 bytes; Q6_K: 256, 210 bytes.
std::size_t wtype_row_bytes(WType t, int64_t cols);

// f32 products with at least this many tokens run on OpenBLAS sgemm (SIMD paths only; an f32
// matrix that is not 4-byte aligned stays on our tiles).
inline constexpr int64_t kQmatmulSgemmMinN = 16;

// A row-major weight matrix in its stored type: row r starts at data + r·row_bytes. No alignment
// is required of data (a GGUF tensor is 32-byte aligned in the file, a safetensors one is not).
struct WeightMatrix {
  WType type = WType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  std::size_t row_bytes = 0;  // wtype_row_bytes(type, cols) for a packed matrix
};

// Y [N, ldy ≥ W.rows] (written) = X [N, ldx ≥ W.cols] · Wᵀ. Runs on the OpenMP threads.
void qmatmul(float* Y, int64_t ldy, const float* X, int64_t ldx, int64_t N, const WeightMatrix& W);

// Several independent products in one parallel region (e.g. the gate, up and down products of
// the k experts of one decode step): the work of all tasks is split over the threads together,
// so small products do not each pay a fork/join. Each task's result equals qmatmul's.
struct QMatmulTask {
  float* Y;
  int64_t ldy;
  const float* X;
  int64_t ldx;
  int64_t N;
  WeightMatrix W;
};
void qmatmul_many(std::span<const QMatmulTask> tasks);

// dst [W.cols] = row r of W in f32 (an embedding lookup).
void dequantize_row(float* dst, const WeightMatrix& W, int64_t r);

// The scalar definition of qmatmul's numbers (double accumulation inside each block is not used:
// it is the same arithmetic as the fast path, in plain loops). Single-threaded.
void qmatmul_reference(float* Y, int64_t ldy, const float* X, int64_t ldx, int64_t N,
                       const WeightMatrix& W);

// The instruction set qmatmul uses on this CPU, e.g. "avx512bf16+avx512vnni", "avx2", "scalar".
std::string qmatmul_isa();

// For tests and benchmarks: the paths this CPU can run, fastest first (the last is "scalar"),
// and a switch that makes qmatmul use one of them ("" returns to the fastest). Not thread-safe
// against concurrent qmatmul calls; the scalar path gives exactly qmatmul_reference's numbers.
std::vector<std::string> qmatmul_isas();
void qmatmul_force_isa(const std::string& isa);

}  // namespace moe
