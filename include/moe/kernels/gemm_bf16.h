// bf16 matrix products for training (train.precision = bf16): bf16 operands, f32 accumulation,
// f32 result. The contract is gemm.h's, with A and B in bf16 (core/half.h's format: the top 16
// bits of an f32):
//
//   C[M,N] = alpha · op(A) · op(B) + beta · C      row-major; op(X) = X or Xᵀ
//   op(A) is [M,K]: A is [M, lda ≥ K], or [K, lda ≥ M] when trans_a
//   op(B) is [K,N]: B is [K, ldb ≥ N], or [N, ldb ≥ K] when trans_b
//   C [M, ldc ≥ N] f32; beta = 0 writes C without reading it (it may hold NaN), as BLAS does;
//   alpha = 0 or K = 0 only scales C by beta.
//
// The operands are rounded to bf16 beforehand (round_to_bf16: nearest, ties to even), so each
// product of two bf16 values is exact in f32 (8 + 8 significant bits); the only rounding is the
// f32 accumulation. Every path is within γ_{K+3}·(|alpha|·Σ_k |a_ik·b_kj| + |beta·c_ij|) of the
// exact result (u = 2⁻²⁴, γ_n = n·u/(1 − n·u); tests/kernels/test_gemm_bf16.cpp).
//
// Paths, chosen at run time from cpu_features() (gemm_bf16_path() names the one in use):
//   avx512bf16 : vdpbf16ps on packed panels of bf16 pairs, a register-blocked microkernel,
//                OpenMP over tiles of C. Like the instruction, it reads bf16 subnormals as zero
//                (they are below 1.2e-38: no weight or activation of a trained model is one).
//   amx        : Sapphire Rapids and later (AMX-BF16, granted by the OS): tdpbf16ps on tiles of
//                16 rows × 16 pairs, 32 × 32 blocks of C; bf16 subnormals read as zero, subnormal
//                sums flushed to zero. kAuto takes it where cpu_features().amx_usable and the
//                path passes bf16_path_self_check (once per process, on first use): the AMX
//                instructions have only run on the model below on the machines we have, so a
//                CPU where they compute otherwise falls back to avx512bf16 (amx_refused(); the
//                CLI warns).
//   amx-model  : the amx path's tile program executed on a software model of the tiles (the
//                instruction's definition), so the program is tested on CPUs without AMX. Slow.
//   widen      : any x86-64: op(A) and op(B) widened to f32 (exactly) and OpenBLAS sgemm.
// The expert panels (grouped_gemm_bf16.h) run the same AMX tile program on the amx paths; the fused
// attention (attention_bf16.h) keeps its AVX512-BF16 microkernel where kAuto resolves to amx.
//
// Determinism: on the avx512bf16 and amx paths every C element is summed by one thread in an
// order the path fixes (avx512bf16: over k = 0..K−1 in pairs), whatever the thread count, tile or
// position; so results are bit-identical for any number of threads. The widen path inherits
// OpenBLAS sgemm's rule: repeatable for a given thread count, not across thread counts (sgemm's
// blocking follows them). Threads: OpenMP inside the call; inside a parallel region it runs on the
// calling thread.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

enum class Bf16GemmPath : uint8_t {
  kAuto,        // the fastest this CPU runs
  kAvx512Bf16,  // needs cpu_features().avx512_bf16
  kWiden,       // widen to f32, OpenBLAS sgemm: runs everywhere
  kAmx,         // AMX tiles: needs cpu_features().amx_usable
  kAmxModel,    // the amx path's tile program on a software model of the tiles (tests; slow):
                // needs cpu_features().avx512
};

// "auto" | "avx512bf16" | "widen" | "amx" | "amx-model"
const char* bf16_gemm_path_name(Bf16GemmPath p);
bool bf16_gemm_path_available(Bf16GemmPath p);
Bf16GemmPath gemm_bf16_path();  // what kAuto runs on this CPU (or the scoped choice below)

// Whether `path` (available here) computes bf16 products bit for bit as gemm_bf16_reference
// does on operands of small integers (exact in bf16, every partial sum exact in f32, so any
// correct summation order gives the same bits): gemm_bf16 in all four transpose cases and the
// expert panels' products (packed A, and A's rows read in place), with partial tiles, an odd K
// and accumulation. False names a broken path; kAuto runs it on amx before first using it.
bool bf16_path_self_check(Bf16GemmPath path);
// AMX is usable here but failed that check, so kAuto runs avx512bf16 instead (runs the check on
// first call where AMX is usable; false at once elsewhere).
bool amx_refused();

// For tests and benchmarks: while one lives, kAuto resolves to `path` (which must be available)
// in every caller of the bf16 kernels, so a whole training step can run on, e.g., the amx tile
// program's model. Not for production: results follow the path, which lives in no config.
// Not nestable across threads (one process-wide choice); restores the previous one on exit.
class ScopedBf16GemmPath {
 public:
  explicit ScopedBf16GemmPath(Bf16GemmPath path);
  ~ScopedBf16GemmPath();
  ScopedBf16GemmPath(const ScopedBf16GemmPath&) = delete;
  ScopedBf16GemmPath& operator=(const ScopedBf16GemmPath&) = delete;

 private:
  Bf16GemmPath saved_;
};

// The path of the kernels that have no AMX form (the fused attention, on the 12 × 32 AVX512-BF16
// microkernel) for a requested path: kAuto resolved; the amx paths become avx512bf16 (the model
// path: widen where the CPU lacks AVX512-BF16); the others unchanged.
Bf16GemmPath bf16_microkernel_path(Bf16GemmPath p);

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
               int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc,
               Bf16GemmPath path = Bf16GemmPath::kAuto);

// The definition of the numbers: the same exact bf16 products summed in double, then
// alpha·sum + beta·c in double, rounded once to f32. Single-threaded plain loops.
void gemm_bf16_reference(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                         const uint16_t* A, int lda, const uint16_t* B, int ldb, float beta,
                         float* C, int ldc);

// dst[i] (n values, =) = f32_to_bf16(src[i]) bit for bit (core/half.h: nearest even; a NaN stays
// a quiet NaN of the same sign; subnormals are rounded, not flushed). AVX512 where the CPU has
// it; OpenMP over blocks for large n outside a parallel region.
void round_to_bf16(uint16_t* dst, const float* src, std::size_t n);

// dst[i] (n values, =) = bf16_to_f32(src[i]) (exact).
void widen_bf16(float* dst, const uint16_t* src, std::size_t n);

}  // namespace moe
