#include "moe/kernels/grouped_gemm.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "moe/core/error.h"
#include "moe/core/threading.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include "transpose16_avx512.h"
#endif

namespace moe {

namespace {

constexpr int NR = kPanelNR;
constexpr int MR = 12;   // rows of the micro-kernel's C block: 12×32 = 24 zmm accumulators
constexpr int KC = 256;  // k rows of a B panel per pass: 256·32·4 B = 32 KiB stays in L1

// The generic (unaligned or partial-panel) packing path: one element at a time.
void pack_elementwise(float* Bp, int K, int k0, int n0, int kn, int nn, const float* src, int ld,
                      bool trans, const int32_t* rows = nullptr, const float* scale = nullptr) {
  for (int j = 0; j < nn; ++j) {
    const int n = n0 + j;
    float* d = Bp + (std::size_t(n / NR) * K + k0) * NR + n % NR;
    for (int i = 0; i < kn; ++i) {
      const std::size_t r = rows ? std::size_t(rows[i]) : std::size_t(i);
      const float x = trans ? src[std::size_t(j) * ld + i] : src[r * ld + j];
      d[std::size_t(i) * NR] = scale ? scale[i] * x : x;
    }
  }
}

#if defined(__AVX512F__)

// How a pass leaves C: overwritten, added to, or overwritten with streaming stores.
enum CMode { kStore, kAccumulate, kStream };

// C[MR_, ≤32] (+)= A[MR_, K] · Bp[K, 32]; A(i, k) = AT ? A[k·lda + i] : A[i·lda + k].
// m0/m1 mask the two 16-column halves for a partial last panel.
template <int MR_, bool AT>
inline void micro(int K, const float* A, std::int64_t lda, const float* Bp, float* C,
                  std::int64_t ldc, __mmask16 m0, __mmask16 m1, CMode mode) {
  // Every loop over i is unrolled in full (GCC unroll pragmas), so the accumulators live in
  // registers only. Left as loops, GCC 12 kept c0/c1 as stack arrays outside the k loop: each
  // call cleared 1.5 KiB with rep stos and spilled and reloaded all 24 accumulators, ~5% of a
  // K = 256 call (K = 128: ~5% measured, 158 → 166 GFLOP/s on one core).
  __m512 c0[MR_], c1[MR_];
  // C's lines are usually cold (an expert's output panel): ask for them now so they arrive
  // while the k loop runs instead of stalling the stores. (Not when streaming: the stores then
  // skip the cache, and reading the lines in would be the very traffic they avoid.)
  if (mode != kStream)
#pragma GCC unroll 16
    for (int i = 0; i < MR_; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + 16), _MM_HINT_T0);
    }
#pragma GCC unroll 16
  for (int i = 0; i < MR_; ++i) {
    c0[i] = _mm512_setzero_ps();
    c1[i] = _mm512_setzero_ps();
  }
  for (int k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_load_ps(Bp + std::size_t(k) * NR);
    const __m512 b1 = _mm512_load_ps(Bp + std::size_t(k) * NR + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR_; ++i) {
      const __m512 a = _mm512_set1_ps(AT ? A[k * lda + i] : A[i * lda + k]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR_; ++i) {
    float* c = C + i * ldc;
    if (mode == kAccumulate) {
      c0[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), c0[i]);
      c1[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), c1[i]);
    }
    if (mode == kStream && (m0 & m1) == 0xFFFF && (reinterpret_cast<std::uintptr_t>(c) & 63) == 0) {
      _mm512_stream_ps(c, c0[i]);
      _mm512_stream_ps(c + 16, c1[i]);
    } else {
      _mm512_mask_storeu_ps(c, m0, c0[i]);
      _mm512_mask_storeu_ps(c + 16, m1, c1[i]);
    }
  }
}

template <bool AT>
void micro_rows(int rows, int K, const float* A, std::int64_t lda, const float* Bp, float* C,
                std::int64_t ldc, __mmask16 m0, __mmask16 m1, CMode mode) {
  switch (rows) {
#define MOE_PANEL_CASE(r)                              \
  case r:                                              \
    micro<r, AT>(K, A, lda, Bp, C, ldc, m0, m1, mode); \
    break;
    MOE_PANEL_CASE(1)
    MOE_PANEL_CASE(2)
    MOE_PANEL_CASE(3)
    MOE_PANEL_CASE(4)
    MOE_PANEL_CASE(5)
    MOE_PANEL_CASE(6)
    MOE_PANEL_CASE(7)
    MOE_PANEL_CASE(8)
    MOE_PANEL_CASE(9)
    MOE_PANEL_CASE(10)
    MOE_PANEL_CASE(11)
    MOE_PANEL_CASE(12)
#undef MOE_PANEL_CASE
    default:
      break;
  }
}

using kernels_detail::transpose16;  // transpose16_avx512.h

// One k pass (k0..k0+kc) of column panel p over all M rows. A is row-major with this pass's
// column 0 at ak0 (in place: ak0 = k0; a gathered block: 0), or (AT) tiles [⌈M/MR⌉][kc][MR],
// so the micro-kernel reads it contiguously.
template <bool AT>
void pass(int p, int i0, int i1, int N, int kc, int K, int k0, const float* A, std::int64_t lda,
          int ak0, const float* Bp, float* C, std::int64_t ldc, CMode mode) {
  const int nv = std::min(NR, N - p * NR);
  const __mmask16 m0 = nv >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nv) - 1);
  const __mmask16 m1 = nv >= 32  ? __mmask16(0xFFFF)
                       : nv > 16 ? __mmask16((1u << (nv - 16)) - 1)
                                 : __mmask16(0);
  const float* B = Bp + (std::size_t(p) * K + k0) * NR;
  float* Cp = C + std::size_t(p) * NR;
  for (int i = i0; i < i1; i += MR) {
    const float* Ai = AT ? A + std::size_t(i) * kc : A + std::size_t(i) * lda + ak0;
    micro_rows<AT>(std::min(MR, i1 - i), kc, Ai, AT ? MR : lda, B, Cp + std::size_t(i) * ldc, ldc,
                   m0, m1, mode);
  }
}

#else

// Portable path (no AVX-512): the same tiles, one element at a time.
template <bool AT>
void tile(int p, int i0, int i1, int N, int K, const float* A, std::int64_t lda,
          const int32_t* rows, const float* Bp, float* C, std::int64_t ldc, bool accumulate) {
  const int nv = std::min(NR, N - p * NR);
  const float* Bpan = Bp + std::size_t(p) * K * NR;
  auto row = [rows](int i) { return std::int64_t(rows ? rows[i] : i); };
  for (int i = i0; i < i1; ++i)
    for (int j = 0; j < nv; ++j) {
      float s = 0;
      for (int k = 0; k < K; ++k)
        s += (AT ? A[row(k) * lda + i] : A[row(i) * lda + k]) * Bpan[std::size_t(k) * NR + j];
      float& c = C[i * ldc + p * NR + j];
      c = accumulate ? c + s : s;
    }
}

#endif

#if defined(__AVX512F__)
// k passes of ≤ KC rows; per pass each B panel (≤ 32 KiB) stays in L1 while all M rows use it.
void run(int M, int N, int K, const float* A, int lda, bool a_trans, const int32_t* rows,
         const float* Bp, float* C, int ldc, bool accumulate, float* apack, bool stream) {
  const int np = (N + NR - 1) / NR;
  // Outside a parallel region (the layer's few-experts mode) the k pass's copies and its
  // (panel, block of MB rows) tiles are shared out among the threads; the k passes stay in
  // order, so each element of C is still summed over k in increasing order, by one thread.
  constexpr int MB = 4 * MR;
  const int nb = (M + MB - 1) / MB;
  const bool par =
      !in_parallel() && max_threads() > 1 && np * nb > 1 && double(M) * N * K >= double(1 << 22);
  // The pass's A: in place, or copied into apack (a_trans: tiles of MR rows; rows: gathered).
  const bool copy = a_trans || rows;
  const int ntile = a_trans ? (M + MR - 1) / MR : M;
  auto copy_part = [&](int t, int k0, int kc) {
    if (a_trans) {
      // A(i, k) = A[k·lda + i]: every k would touch a new line of a strided column (and with
      // lda a multiple of 512 floats those lines share a few L1 sets), so copy the pass's A
      // into micro-tiles once and let every panel read it contiguously.
      const int nr = std::min(MR, M - t * MR);
      const __mmask16 mk = __mmask16((1u << nr) - 1);
      float* d = apack + std::size_t(t) * kc * MR;
      for (int k = 0; k < kc; ++k) {
        const std::size_t r = rows ? std::size_t(rows[k0 + k]) : std::size_t(k0 + k);
        _mm512_mask_storeu_ps(d + k * MR, mk, _mm512_maskz_loadu_ps(mk, A + r * lda + t * MR));
      }
    } else {
      // Rows picked by index (an expert's tokens, read straight from the token matrix): gather
      // row t of the pass's [M, kc] block into contiguous scratch, which every panel then reads.
      const float* src = A + std::size_t(rows[t]) * lda + k0;
      float* d = apack + std::size_t(t) * kc;
      int k = 0;
      for (; k + 16 <= kc; k += 16) _mm512_storeu_ps(d + k, _mm512_loadu_ps(src + k));
      if (k < kc) {
        const __mmask16 mk = __mmask16((1u << (kc - k)) - 1);
        _mm512_mask_storeu_ps(d + k, mk, _mm512_maskz_loadu_ps(mk, src + k));
      }
    }
  };
  // Streaming stores only where each element is written once (one k pass, not accumulating).
  auto mode = [&](int k0) {
    return accumulate || k0 > 0 ? kAccumulate : stream && K <= KC ? kStream : kStore;
  };
  auto tile_part = [&](int p, int i0, int i1, int k0, int kc, CMode cm) {
    if (a_trans)
      pass<true>(p, i0, i1, N, kc, K, k0, apack, MR, 0, Bp, C, ldc, cm);
    else if (rows)
      pass<false>(p, i0, i1, N, kc, K, k0, apack, kc, 0, Bp, C, ldc, cm);
    else
      pass<false>(p, i0, i1, N, kc, K, k0, A, lda, k0, Bp, C, ldc, cm);
  };
  if (!par) {
    for (int k0 = 0; k0 < K; k0 += KC) {
      const int kc = std::min(KC, K - k0);
      if (copy)
        for (int t = 0; t < ntile; ++t) copy_part(t, k0, kc);
      // Per pass each B panel (≤ 32 KiB) stays in L1 while all M rows use it.
      for (int p = 0; p < np; ++p) tile_part(p, 0, M, k0, kc, mode(k0));
    }
    if (stream) _mm_sfence();  // the streamed lines reach memory before anyone reads them
    return;
  }
#pragma omp parallel
  for (int k0 = 0; k0 < K; k0 += KC) {
    const int kc = std::min(KC, K - k0);
    if (copy) {
#pragma omp for schedule(static)
      for (int t = 0; t < ntile; ++t) copy_part(t, k0, kc);
    }
#pragma omp for schedule(dynamic, 1) nowait
    for (int task = 0; task < np * nb; ++task) {
      const int p = task % np, b = task / np;
      tile_part(p, b * MB, std::min(M, (b + 1) * MB), k0, kc, mode(k0));
    }
    // Each thread fences its own streamed lines before the barrier that ends the pass.
    if (stream) _mm_sfence();
#pragma omp barrier
  }
}
#else
void run(int M, int N, int K, const float* A, int lda, bool a_trans, const int32_t* rows,
         const float* Bp, float* C, int ldc, bool accumulate, float*, bool) {
  const int np = (N + NR - 1) / NR;
  for (int p = 0; p < np; ++p) {
    if (a_trans)
      tile<true>(p, 0, M, N, K, A, lda, rows, Bp, C, ldc, accumulate);
    else
      tile<false>(p, 0, M, N, K, A, lda, rows, Bp, C, ldc, accumulate);
  }
}
#endif

}  // namespace

std::size_t panel_b_floats(int K, int N) {
  return std::size_t((N + NR - 1) / NR) * NR * std::size_t(K);
}

void panel_pack_b(float* Bp, int K, int N, int k0, int n0, int kn, int nn, const float* src, int ld,
                  bool trans, const int32_t* rows, const float* row_scale) {
  MOE_CHECK(!trans || (!rows && !row_scale),
            "internal: panel_pack_b picks or scales rows of a row-major source only");
  const int full = n0 % NR == 0 ? nn / NR : 0;  // whole 32-column panels from n0 on
  if (!trans) {
    // Row-major source: each (k, panel) is one contiguous 32-float copy (of row rows[i] if
    // given, times row_scale[i] if given).
    for (int i = 0; i < kn; ++i) {
      const float* s = src + (rows ? std::size_t(rows[i]) : std::size_t(i)) * ld;
      for (int q = 0; q < full; ++q) {
        float* d = Bp + (std::size_t(n0 / NR + q) * K + k0 + i) * NR;
#if defined(__AVX512F__)
        __m512 lo = _mm512_loadu_ps(s + q * NR), hi = _mm512_loadu_ps(s + q * NR + 16);
        if (row_scale) {
          const __m512 f = _mm512_set1_ps(row_scale[i]);
          lo = _mm512_mul_ps(lo, f);
          hi = _mm512_mul_ps(hi, f);
        }
        _mm512_store_ps(d, lo);
        _mm512_store_ps(d + 16, hi);
#else
        for (int j = 0; j < NR; ++j)
          d[j] = row_scale ? row_scale[i] * s[q * NR + j] : s[q * NR + j];
#endif
      }
    }
  } else {
#if defined(__AVX512F__)
    // Transposed source (B(k, n) = src[n·ld + k]): 16×16 blocks transposed in registers, so
    // each source line is read once (strided scalar reads would keep re-missing in L1: rows
    // 2 KiB apart share its sets).
    const int kb16 = kn / 16 * 16;
    for (int q = 0; q < full; ++q)
      for (int h = 0; h < 2; ++h) {
        const float* s = src + std::size_t(q * NR + h * 16) * ld;
        float* d = Bp + (std::size_t(n0 / NR + q) * K + k0) * NR + h * 16;
        for (int kb = 0; kb < kb16; kb += 16) {
          __m512 r[16];
          for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(s + std::size_t(j) * ld + kb);
          transpose16(r);
          for (int i = 0; i < 16; ++i) _mm512_store_ps(d + std::size_t(kb + i) * NR, r[i]);
        }
        if (kb16 < kn)
          pack_elementwise(Bp, K, k0 + kb16, n0 + q * NR + h * 16, kn - kb16, 16, s + kb16, ld,
                           true);
      }
#else
    for (int q = 0; q < full; ++q)
      pack_elementwise(Bp, K, k0, n0 + q * NR, kn, NR, src + std::size_t(q * NR) * ld, ld, true);
#endif
  }
  // The columns not covered by whole panels (n0 unaligned, or a partial last panel).
  if (full * NR < nn) {
    const int j0 = full * NR;
    pack_elementwise(Bp, K, k0, n0 + j0, kn, nn - j0, trans ? src + std::size_t(j0) * ld : src + j0,
                     ld, trans, rows, row_scale);
  }
  if (n0 + nn == N && N % NR != 0) {
    // Zero the padding columns of the last panel (they feed only masked-out accumulators, but
    // uninitialised floats could be denormals or NaNs and slow the FMAs down).
    float* last = Bp + std::size_t(N / NR) * K * NR;
    for (int i = k0; i < k0 + kn; ++i)
      std::fill(last + std::size_t(i) * NR + N % NR, last + std::size_t(i + 1) * NR, 0.0f);
  }
}

std::size_t panel_a_floats(int M) { return std::size_t((M + MR - 1) / MR) * MR * KC; }

void panel_gemm(int M, int N, int K, const float* A, int lda, bool a_trans, const float* Bp,
                float* C, int ldc, bool accumulate, float* apack, const int32_t* a_rows,
                bool stream_c) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int i = 0; i < M; ++i)
        std::fill(C + std::size_t(i) * ldc, C + std::size_t(i) * ldc + N, 0.0f);
    return;
  }
  run(M, N, K, A, lda, a_trans, a_rows, Bp, C, ldc, accumulate, apack, stream_c);
}

bool panel_gemm_native() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

// ---- One expert's products (shapes and contracts in grouped_gemm.h).

void panel_first_forward(float* gu, const float* X, const int32_t* rows, const float* wg,
                         const float* wu, int m, int C, int H, bool gated, float* pack,
                         float* apack) {
  const int W1 = gated ? 2 * H : H;
  // B(k = c, n) = W_gate[n, c] for n < H, W_up[n − H, c] after: [W_gate; W_up]ᵀ [C, W1].
  if (gated) panel_pack_b(pack, C, W1, 0, 0, C, H, wg, C, true);
  panel_pack_b(pack, C, W1, 0, W1 - H, C, H, wu, C, true);
  panel_gemm(m, W1, C, X, C, false, pack, gu, W1, false, apack, rows);
}

void panel_down_forward(float* ye, const float* hid, const float* wd, int m, int C, int H,
                        float* pack) {
  panel_pack_b(pack, H, C, 0, 0, H, C, wd, H, true);
  panel_gemm(m, C, H, hid, H, false, pack, ye, C, false, nullptr, nullptr, /*stream_c=*/true);
}

void panel_down_backward(float* dwd, float* hid, const float* d, const int32_t* rows,
                         const float* gate, float* dgate, const float* wd, int m, int C, int H,
                         float* pack, float* apack, float* u) {
  auto weight_grad = [&] {
    panel_pack_b(pack, m, H, 0, 0, m, H, hid, H, false, nullptr, gate);
    panel_gemm(C, H, m, d, C, true, pack, dwd, H, true, apack, rows);
  };
  auto input_grad = [&] {
    panel_pack_b(pack, C, H, 0, 0, C, H, wd, H, false);
    panel_gemm(m, H, C, d, C, false, pack, rows ? u : hid, H, false, apack, rows);
  };
  if (!rows) {  // hid is overwritten by d(hid): its weight gradient first
    weight_grad();
    input_grad();
    return;
  }
  // Fused, u first: it gathers the expert's dy rows by row (sequential within each row, which
  // the hardware prefetcher follows), so the weight gradient's column-wise (transposed) walk
  // over the same rows then finds them in L2 instead of missing on each new line.
  input_grad();
  weight_grad();
  gate_split_backward(hid, dgate, u, gate, m, H);
}

void gate_split_backward(float* hid, float* dgate, const float* u, const float* gate, int m,
                         int H) {
  for (int i = 0; i < m; ++i) {
    float* h = hid + std::size_t(i) * H;
    const float* ui = u + std::size_t(i) * H;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < H; ++j) dot += ui[j] * h[j];
    dgate[i] = dot;
    const float gi = gate[i];
#pragma omp simd
    for (int j = 0; j < H; ++j) h[j] = gi * ui[j];
  }
}

void panel_first_backward(float* dX, float* dwg, float* dwu, const float* dgu, const float* X,
                          const int32_t* rows, const float* wg, const float* wu, int m, int C,
                          int H, bool gated, bool accumulate, float* pack, float* apack) {
  const int W1 = gated ? 2 * H : H;
  panel_pack_b(pack, m, C, 0, 0, m, C, X, C, false, rows);
  if (gated) panel_gemm(H, C, m, dgu, W1, true, pack, dwg, C, true, apack);
  panel_gemm(H, C, m, dgu + (W1 - H), W1, true, pack, dwu, C, true, apack);
  if (gated) panel_pack_b(pack, W1, C, 0, 0, H, C, wg, C, false);
  panel_pack_b(pack, W1, C, W1 - H, 0, H, C, wu, C, false);
  panel_gemm(m, C, W1, dgu, W1, false, pack, dX, C, accumulate, nullptr, nullptr,
             /*stream_c=*/true);
}

}  // namespace moe
