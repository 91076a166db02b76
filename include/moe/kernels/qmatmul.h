// Matrix products with weights kept in their stored type (the inference path, infer/): a weight
// matrix W [rows, cols] of f32, f16, bf16 or GGML Q8_0 read in place (from a memory-mapped model
// file: never copied, never widened to an f32 copy), times f32 activations.
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

enum class WType : uint8_t { kF32, kF16, kBF16, kQ8_0 };
const char* wtype_name(WType t);  // "f32" | "f16" | "bf16" | "q8_0"

// Bytes of one row of `cols` elements (Q8_0: cols must be a multiple of 32; 34 bytes per block).
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

// The scalar definition of qmatmul's numbers (double accumulation inside each Q8_0 block is not
// used: it is the same arithmetic as the fast path, in plain loops). Single-threaded.
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
