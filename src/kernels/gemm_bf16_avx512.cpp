// gemm_bf16's AVX512-BF16 path (Zen 4, Cooper Lake, Sapphire Rapids). Compiled for that target
// with a pragma, whatever -march says, and called only when cpu_features().avx512_bf16.
//
// vdpbf16ps multiplies 16 pairs of bf16 pairs and adds both products into 16 f32 lanes:
//   acc[j] += a[2j]·b[2j] + a[2j+1]·b[2j+1]
// so the operands are laid out in pairs along K. The microkernel computes a kMR × kNR block of C
// (12 rows × 32 columns = 24 zmm accumulators) over the whole of K: per pair step it loads one
// packed B row of 32 columns × 2 k (two zmm) and broadcasts each row's (a[i,2p], a[i,2p+1]) as
// one 32-bit value, for 24 vdpbf16ps per 2 loads + 12 broadcasts.
//
// Layouts (P = ⌈K/2⌉ pair steps; zero padding past K, M and N):
//   B panel (kNR columns j0..j0+31):  bp[(p·kNR + j)·2 + h] = op(B)[2p+h, j0+j]
//   A panel (kMR rows i0..i0+11):     ap[(p·kMR + i)·2 + h] = op(A)[i0+i, 2p+h]
// Both are packed once per call, in parallel, except an untransposed A with K even: its rows'
// pairs are adjacent already, and the microkernel broadcasts them from the 12 rows in place.
// That skips a pass over A and ran 1.1–1.4× faster on the dense model's NT and NN products
// (2 threads, quiet machine, best of 4; docs/KERNELS.md), and the same on the transposed-A ones.
//
// Work split: tiles of kMC × kNC of C, one thread each (OpenMP, dynamic); inside a tile the B
// panel stays in cache across its row blocks. Every C element is summed over its pairs in order
// p = 0..P−1 by one accumulator, then alpha·acc + beta·c: the bits do not depend on the threads.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "gemm_bf16_internal.h"
#include "moe/core/threading.h"
#include "moe/kernels/cpu_features.h"
#include "transpose16_avx512.h"

namespace moe::bf16k {

// GCC compiles this part for the AVX512-BF16 target by pragma; clang (the fuzz build) by an
// attribute on every function.
#if defined(__clang__)
#pragma clang attribute push( \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#endif
// GCC 12's avx512fintrin.h builds _mm512_undefined_* as `__m512 __Y = __Y;`: noise only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

constexpr int kMR = 12;         // rows of the microkernel
constexpr int kNR = 32;         // columns of the microkernel (two zmm of 16 f32)
constexpr int kMC = 4 * kMR;    // rows of a tile
constexpr int kNC = 4 * kNR;    // columns of a tile
constexpr int kPackSteps = 32;  // pair steps per work item of the row-order packing

}  // namespace

// Interleave rows 2p and 2p+1 of X [K, ld ≥ C], for p in [p0, p1), into all ⌈C/W⌉ panels
// (pack_row_pairs_avx512, below, on X's rows). (B without trans_b: X = B, W = kNR = 32. A with
// trans_a: X = A, W = kMR = 12.)
void pack_pairs_of_rows(uint16_t* dst, std::size_t panel, const uint16_t* X, int ld, int K, int C,
                        int W, int p0, int p1) {
  const uint16_t* rows[2 * kPackSteps];  // p1 − p0 ≤ kPackSteps
  for (int r = 0; r < 2 * (p1 - p0); ++r) {
    const int k = 2 * p0 + r;
    rows[r] = k < K ? X + std::size_t(k) * ld : nullptr;
  }
  pack_row_pairs_avx512(dst, panel, rows, C, W, p0, p1);
}

// Columns 2p, 2p+1 of row c0+c of X as the pair c of step p: dst[(p·W + c)·2 + h] =
// X[(c0+c)·ld + 2p + h], zero past K or w. (B with trans_b: X = B [N, ldb], W = kNR.
// A without trans_a: X = A, W = kMR.) Each row's pairs are 32-bit values in place, so a panel is
// a transpose of W rows × P pairs: 16 rows (W = 12: 12 and four zero) × 16 steps per transpose16.
void pack_cols_avx512(uint16_t* dst, const uint16_t* X, int ld, int K, int c0, int w, int W,
                      bool stream) {
  const int P = (K + 1) / 2, Pfull = K / 2;
  // 4-byte aligned: every panel starts at an even offset of a new[]-ed buffer.
  uint32_t* d32 = reinterpret_cast<uint32_t*>(dst);
  for (int h = 0; h < W; h += 16) {
    const int nr = std::min(16, W - h);  // output lanes of this group of rows
    for (int p0 = 0; p0 < Pfull; p0 += 16) {
      const int np = std::min(16, Pfull - p0);
      const __mmask16 m = np == 16 ? __mmask16(0xffff) : __mmask16((1u << np) - 1);
      // Each pair is one 32-bit lane: the f32 transpose moves its bits unchanged.
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < nr && h + i < w ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(
                                         m, X + std::size_t(c0 + h + i) * ld + 2 * p0))
                                   : _mm512_setzero_ps();
      kernels_detail::transpose16(r);
      for (int j = 0; j < np; ++j) {
        uint32_t* o = d32 + std::size_t(p0 + j) * W + h;
        if (stream && W == kNR && reinterpret_cast<std::uintptr_t>(o) % 64 == 0)
          _mm512_stream_si512(reinterpret_cast<__m512i*>(o), _mm512_castps_si512(r[j]));
        else if (nr == 16 || p0 + j + 1 < P)
          // W = 12: the 16 bytes past this step's 48 land on step p + 1's first pairs, written
          // next (by this loop or the odd-K tail below).
          _mm512_storeu_si512(o, _mm512_castps_si512(r[j]));
        else
          _mm512_mask_storeu_epi32(o, __mmask16((1u << nr) - 1), _mm512_castps_si512(r[j]));
      }
    }
  }
  if (K & 1)  // the last step's pairs: (X[·, K−1], 0)
    for (int c = 0; c < W; ++c)
      d32[std::size_t(Pfull) * W + c] = c < w ? X[std::size_t(c0 + c) * ld + K - 1] : 0u;
}

namespace {

inline __m512bh bcast_pair(const uint16_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return (__m512bh)_mm512_set1_epi32(int(v));
}

// Epilogue of a C block [mr, nr] at c (row stride ldc): alpha·acc (+ beta·c), f32 multiply
// then add (no FMA: -ffp-contract=off); beta = 0 does not read c.
template <int R>
inline void store_block(__m512 (&acc)[R][2], float* c, int ldc, int mr, int nr, float alpha,
                        float beta) {
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32  ? __mmask16(0xffff)
                       : nr > 16 ? __mmask16((1u << (nr - 16)) - 1)
                                 : 0;
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int i = 0; i < mr; ++i) {
    float* ci = c + std::size_t(i) * ldc;
    __m512 r0 = _mm512_mul_ps(va, acc[i][0]), r1 = _mm512_mul_ps(va, acc[i][1]);
    if (nr == kNR) {  // full width: plain loads and stores (masked stores are slow on Zen)
      if (beta != 0.f) {
        r0 = _mm512_add_ps(r0, _mm512_mul_ps(vb, _mm512_loadu_ps(ci)));
        r1 = _mm512_add_ps(r1, _mm512_mul_ps(vb, _mm512_loadu_ps(ci + 16)));
      }
      _mm512_storeu_ps(ci, r0);
      _mm512_storeu_ps(ci + 16, r1);
      continue;
    }
    if (beta != 0.f) {
      r0 = _mm512_add_ps(r0, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, ci)));
      r1 = _mm512_add_ps(r1, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16)));
    }
    _mm512_mask_storeu_ps(ci, m0, r0);
    _mm512_mask_storeu_ps(ci + 16, m1, r1);
  }
}

// Where the microkernel reads A's pairs: a packed panel (layout above), the rows themselves (row
// i's pair p at row[i] + 2p; K even, no pair runs past a row), or a pair-interleaved matrix with a
// step of astep pairs (row i's pair p at ap + (p·astep + i)·2: a panel is astep = kMR; attention's
// Pᵀ and dSᵀ are interleaved pairs of query rows, astep their row length).
enum class ASrc { kPanel, kRows, kStrided };

// C block [mr ≤ R ≤ kMR, nr ≤ kNR] at c (row stride ldc) = alpha·op(A)·op(B) + beta·C over all
// K, from a B panel bp and A as kSrc says (rows mr ≤ i < R are read but never stored).
template <ASrc kSrc, int R>
void micro_r(const uint16_t* ap, int astep, const uint16_t* const* row, const uint16_t* bp, int K,
             float* c, int ldc, int mr, int nr, float alpha, float beta) {
  __m512 acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  // C's rows asked for now, read (beta ≠ 0) or written only after the K loop: a weight
  // gradient's tiles (accumulated, from memory) and a fresh output's lines then arrive while the
  // block computes instead of stalling its epilogue. Alternating runs, 2026-12-07: the E = 64
  // MoE bf16 step 84.9 → 80.4 ms (mean of 6), E = 8 ~3%, the dense model's bf16 step 2–7%.
  // (prefetchw, for ownership, measured between the two.)
  for (int i = 0; i < mr; ++i) {
    const char* ci = reinterpret_cast<const char*>(c + std::size_t(i) * ldc);
    _mm_prefetch(ci, _MM_HINT_T0);
    _mm_prefetch(ci + 64, _MM_HINT_T0);
  }
  const int P = (K + 1) / 2;
  for (int p = 0; p < P; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + std::size_t(p) * kNR * 2);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + std::size_t(p) * kNR * 2 + 32);
    for (int i = 0; i < R; ++i) {
      const __m512bh av =
          bcast_pair(kSrc == ASrc::kRows    ? row[i] + 2 * p
                     : kSrc == ASrc::kPanel ? ap + (std::size_t(p) * kMR + i) * 2
                                            : ap + (std::size_t(p) * astep + i) * 2);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
    }
  }
  store_block<R>(acc, c, ldc, mr, nr, alpha, beta);
}

// The block on as few rows as cover mr (a last panel of M): R rows cost R/12 of the full kernel's
// multiply-adds (4 rows, 8 accumulators, run below the unit's rate: about half its time), and
// each element's sum is the same steps in the same order, so the bits do not depend on R. The
// experts' dW_gate, dW_up (M = H = 128: 10 panels and 8 rows) and every expert's rows mod 12 ran
// the full 12: 1.5% of the E = 64 step's multiply-adds. One thread, hot panels (2026-12-07, 12
// rows always vs this): M 128, N 512, K 512 393.5 → 400.5 and 394.7 → 403.1 GFLOP/s; M 520
// (4 rows last), N 512, K 128 366.8 → 369.6, 367.7 → 370.6; M 132, 516 (no tail) unchanged.
template <ASrc kSrc>
void micro(const uint16_t* ap, int astep, const uint16_t* const* row, const uint16_t* bp, int K,
           float* c, int ldc, int mr, int nr, float alpha, float beta) {
  if (mr <= 4)
    micro_r<kSrc, 4>(ap, astep, row, bp, K, c, ldc, mr, nr, alpha, beta);
  else if (mr <= 8)
    micro_r<kSrc, 8>(ap, astep, row, bp, K, c, ldc, mr, nr, alpha, beta);
  else
    micro_r<kSrc, kMR>(ap, astep, row, bp, K, c, ldc, mr, nr, alpha, beta);
}

}  // namespace

void micro_12x32(const uint16_t* ap, const uint16_t* bp, int K, float* c, int ldc, int mr, int nr,
                 float alpha, float beta) {
  micro<ASrc::kPanel>(ap, kMR, nullptr, bp, K, c, ldc, mr, nr, alpha, beta);
}

void micro_rows_12x32(const uint16_t* const* rows, const uint16_t* bp, int K, float* c, int ldc,
                      int mr, int nr, float alpha, float beta) {
  micro<ASrc::kRows>(nullptr, 0, rows, bp, K, c, ldc, mr, nr, alpha, beta);
}

void store_fence() { _mm_sfence(); }

void micro_strided_12x32(const uint16_t* ap, int astep, const uint16_t* bp, int K, float* c,
                         int ldc, int mr, int nr, float alpha, float beta) {
  micro<ASrc::kStrided>(ap, astep, nullptr, bp, K, c, ldc, mr, nr, alpha, beta);
}

void gemm_avx512(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                 int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  // op(A)·op(B) [M,K]·[K,N] → C [M,N]; B panels [⌈N/kNR⌉][P][kNR][2], A panels likewise.
  const int P = (K + 1) / 2;
  const int nb = (N + kNR - 1) / kNR, mb = (M + kMR - 1) / kMR;
  const std::size_t b_panel = std::size_t(P) * kNR * 2, a_panel = std::size_t(P) * kMR * 2;
  // An untransposed A with K even is read in place (its rows' pairs are adjacent already).
  const bool inplace = !trans_a && K % 2 == 0;
  thread_local Scratch<uint16_t> b_scratch, a_scratch;
  uint16_t* bp = b_scratch.get(nb * b_panel);
  uint16_t* ap = inplace ? nullptr : a_scratch.get(mb * a_panel);
  const int tm = (M + kMC - 1) / kMC, tn = (N + kNC - 1) / kNC;
  const int chunks = (P + kPackSteps - 1) / kPackSteps;
  // Untransposed B and transposed A are packed in chunks of kPackSteps pair steps (pairs of rows
  // of X), the others panel by panel. Items of each stage:
  const int b_items = trans_b ? nb : chunks, a_items = inplace ? 0 : trans_a ? chunks : mb;
  auto pack_b = [&](int it) {
    if (trans_b) {
      const int j0 = it * kNR;
      pack_cols_avx512(bp + it * b_panel, B, ldb, K, j0, std::min(kNR, N - j0), kNR);
    } else {
      pack_pairs_of_rows(bp, b_panel, B, ldb, K, N, kNR, it * kPackSteps,
                         std::min(P, (it + 1) * kPackSteps));
    }
  };
  auto pack_a = [&](int it) {
    if (trans_a) {
      pack_pairs_of_rows(ap, a_panel, A, lda, K, M, kMR, it * kPackSteps,
                         std::min(P, (it + 1) * kPackSteps));
    } else {
      const int i0 = it * kMR;
      pack_cols_avx512(ap + it * a_panel, A, lda, K, i0, std::min(kMR, M - i0), kMR);
    }
  };
  auto tile = [&](int t) {
    const int i_end = std::min(M, (t / tn + 1) * kMC), j_end = std::min(N, (t % tn + 1) * kNC);
    for (int j0 = (t % tn) * kNC; j0 < j_end; j0 += kNR) {
      const uint16_t* bpj = bp + (j0 / kNR) * b_panel;
      const int nr = std::min(kNR, N - j0);
      for (int i0 = (t / tn) * kMC; i0 < i_end; i0 += kMR) {
        const int mr = std::min(kMR, M - i0);
        float* c = C + std::size_t(i0) * ldc + j0;
        if (inplace) {
          const uint16_t* row[kMR];
          for (int i = 0; i < kMR; ++i) row[i] = A + std::size_t(i0 + (i < mr ? i : 0)) * lda;
          micro<ASrc::kRows>(nullptr, 0, row, bpj, K, c, ldc, mr, nr, alpha, beta);
        } else {
          micro<ASrc::kPanel>(ap + (i0 / kMR) * a_panel, kMR, nullptr, bpj, K, c, ldc, mr, nr,
                              alpha, beta);
        }
      }
    }
  };
  // Inside a parallel region (attention's per-head products) or for a small product, no team:
  // a nested parallel region costs libgomp a team allocation and futex wake-ups per call.
  if (in_parallel() || max_threads() == 1 || double(M) * N * K < double(1 << 18)) {
    for (int it = 0; it < b_items; ++it) pack_b(it);
    for (int it = 0; it < a_items; ++it) pack_a(it);
    for (int t = 0; t < tm * tn; ++t) tile(t);
    return;
  }
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int it = 0; it < b_items; ++it) pack_b(it);
#pragma omp for schedule(static)
    for (int it = 0; it < a_items; ++it) pack_a(it);
#pragma omp for schedule(dynamic)
    for (int t = 0; t < tm * tn; ++t) tile(t);
  }
}

namespace {

// Lanes of a or b holding a subnormal (exponent bits 0, mantissa not).
inline bool any_subnormal(__m512 a, __m512 b) {
  const __m512i e = _mm512_set1_epi32(0x7f800000), m = _mm512_set1_epi32(0x007fffff);
  const __m512i ua = _mm512_castps_si512(a), ub = _mm512_castps_si512(b);
  return ((_mm512_testn_epi32_mask(ua, e) & _mm512_test_epi32_mask(ua, m)) |
          (_mm512_testn_epi32_mask(ub, e) & _mm512_test_epi32_mask(ub, m))) != 0;
}

}  // namespace

// vcvtne2ps2bf16 rounds as core/half.h's f32_to_bf16 (nearest even; a NaN keeps its top half
// with the quiet bit set, as Intel's pseudocode for it says) except that it flushes subnormal
// inputs to ±0: a block of 32 holding one goes through the integer rule, as does the tail. One
// instruction per 32 values instead of ~20 (rounding was 15% of a dense bf16 step).
void round_bf16insn(uint16_t* dst, const float* src, std::size_t n) {
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(src + i), b = _mm512_loadu_ps(src + i + 16);
    if (any_subnormal(a, b)) {
      round_int_avx512(dst + i, src + i, 32);
      continue;
    }
    _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(b, a));  // a → words 0..15
  }
  if (i < n) round_int_avx512(dst + i, src + i, n - i);
}

void round_pairs_bf16insn(uint32_t* dst, const float* s0, const float* s1, std::size_t n,
                          bool scaled, float f0, float f1) {
  alignas(64) uint16_t order[32];  // word 2j ← s0[j] (word j), word 2j+1 ← s1[j] (word 16 + j)
  for (int t = 0; t < 32; ++t) order[t] = uint16_t((t & 1) * 16 + t / 2);
  const __m512i idx = _mm512_load_si512(order);
  const __m512 v0 = _mm512_set1_ps(f0), v1 = _mm512_set1_ps(f1);
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 a = _mm512_loadu_ps(s0 + i);
    __m512 b = s1 ? _mm512_loadu_ps(s1 + i) : _mm512_setzero_ps();
    if (scaled) {
      a = _mm512_mul_ps(v0, a);
      if (s1) b = _mm512_mul_ps(v1, b);
    }
    if (any_subnormal(a, b)) {
      round_pairs_int_avx512(dst + i, s0 + i, s1 ? s1 + i : nullptr, 16, scaled, f0, f1);
      continue;
    }
    const __m512i r = (__m512i)_mm512_cvtne2ps_pbh(b, a);
    _mm512_storeu_si512(dst + i, _mm512_permutexvar_epi16(idx, r));
  }
  if (i < n) round_pairs_int_avx512(dst + i, s0 + i, s1 ? s1 + i : nullptr, n - i, scaled, f0, f1);
}

#pragma GCC diagnostic pop
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// The conversions need AVX512 F/BW/VL only (cpu_features().avx512).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#endif
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

// f32 → bf16 exactly as core/half.h's f32_to_bf16 (not vcvtneps2bf16, which flushes subnormals),
// on 16 lanes: u + 0x7fff + (bit 16 of u), top half; a NaN keeps its top half with the quiet bit
// set. The result is in the low half of each 32-bit lane.
inline __m512i round_lanes(__m512i u) {
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                         _mm512_and_si512(hi, _mm512_set1_epi32(1))),
                        16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
}

}  // namespace

void round_int_avx512(uint16_t* dst, const float* src, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    _mm512_mask_cvtepi32_storeu_epi16(dst + i, m,
                                      round_lanes(_mm512_maskz_loadu_epi32(m, src + i)));
  }
}

void round_pairs_int_avx512(uint32_t* dst, const float* s0, const float* s1, std::size_t n,
                            bool scaled, float f0, float f1) {
  const __m512 v0 = _mm512_set1_ps(f0), v1 = _mm512_set1_ps(f1);
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 a = _mm512_maskz_loadu_ps(m, s0 + i);
    if (scaled) a = _mm512_mul_ps(v0, a);
    __m512i r = round_lanes(_mm512_castps_si512(a));
    if (s1) {
      __m512 b = _mm512_maskz_loadu_ps(m, s1 + i);
      if (scaled) b = _mm512_mul_ps(v1, b);
      r = _mm512_or_si512(r, _mm512_slli_epi32(round_lanes(_mm512_castps_si512(b)), 16));
    }
    _mm512_mask_storeu_epi32(dst + i, m, r);
  }
}

void interleave_pairs_avx512(uint32_t* dst, const uint16_t* r0, const uint16_t* r1, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512i r = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0 + i));
    if (r1)
      r = _mm512_or_si512(
          r, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1 + i)), 16));
    _mm512_mask_storeu_epi32(dst + i, m, r);
  }
}

// Panel by panel, each panel's steps in order, so its stores are sequential; per panel and step,
// two masked loads of ≤ 32 columns interleaved by two vpermt2w. (Step by step across all panels,
// consecutive stores were a panel apart — 48–128 KiB at K = 4096, the same L1 sets — and this
// packing was 8.5% of a dense bf16 step.) The chunk's rows are read once per panel: from L1 or
// L2 after the first panel.
void pack_row_pairs_avx512(uint16_t* dst, std::size_t panel, const uint16_t* const* rows, int C,
                           int W, int p0, int p1, bool stream) {
  static_assert(kNR == 32 && kMR <= 16, "one zmm of 32 columns per row; A's pairs in one zmm");
  alignas(64) uint16_t lo[32], hi[32];  // output lane t ← column t/2 (+16) of row h = t%2
  for (int t = 0; t < 32; ++t) {
    lo[t] = uint16_t((t & 1) * 32 + t / 2);
    hi[t] = uint16_t((t & 1) * 32 + 16 + t / 2);
  }
  const __m512i vlo = _mm512_load_si512(lo), vhi = _mm512_load_si512(hi);
  const __mmask32 m_out = W >= 16 ? __mmask32(~0u) : __mmask32((1u << (2 * W)) - 1);
  const int nb = (C + W - 1) / W;
  for (int cb = 0; cb < nb; ++cb) {
    const int c0 = cb * W, w = std::min(W, C - c0);
    const __mmask32 m = w >= 32 ? __mmask32(~0u) : __mmask32((1u << w) - 1);
    for (int p = p0; p < p1; ++p) {
      const uint16_t* r0 = rows[2 * (p - p0)];
      const uint16_t* r1 = rows[2 * (p - p0) + 1];
      const __m512i v0 = r0 ? _mm512_maskz_loadu_epi16(m, r0 + c0) : _mm512_setzero_si512();
      const __m512i v1 = r1 ? _mm512_maskz_loadu_epi16(m, r1 + c0) : _mm512_setzero_si512();
      uint16_t* d = dst + cb * panel + std::size_t(p) * W * 2;
      const __m512i o0 = _mm512_permutex2var_epi16(v0, vlo, v1);
      if (W == kNR && stream && reinterpret_cast<std::uintptr_t>(d) % 64 == 0) {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(d), o0);
        _mm512_stream_si512(reinterpret_cast<__m512i*>(d + 32),
                            _mm512_permutex2var_epi16(v0, vhi, v1));
      } else if (W == kNR) {
        _mm512_storeu_si512(d, o0);
        _mm512_storeu_si512(d + 32, _mm512_permutex2var_epi16(v0, vhi, v1));
      } else if (p + 1 < p1) {
        // 64 bytes for W = 12's 48: the last 16 (zeros) land on step p + 1's first pairs of
        // this panel, which this thread writes next. (Masked stores are slow on Zen.)
        _mm512_storeu_si512(d, o0);
      } else {
        _mm512_mask_storeu_epi16(d, m_out, o0);  // the chunk's last step: the next is another's
      }
    }
  }
}

void widen_avx512(float* dst, const uint16_t* src, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
    _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
  }
}

#pragma GCC diagnostic pop
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void round_avx512(uint16_t* dst, const float* src, std::size_t n) {
  if (cpu_features().avx512_bf16) return round_bf16insn(dst, src, n);
  round_int_avx512(dst, src, n);
}

void round_pairs_avx512(uint32_t* dst, const float* s0, const float* s1, std::size_t n, bool scaled,
                        float f0, float f1) {
  if (cpu_features().avx512_bf16) return round_pairs_bf16insn(dst, s0, s1, n, scaled, f0, f1);
  round_pairs_int_avx512(dst, s0, s1, n, scaled, f0, f1);
}

}  // namespace moe::bf16k
