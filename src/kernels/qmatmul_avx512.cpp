// qmatmul's AVX512 path (AVX512F/BW/VL/DQ + BF16 + VNNI: Zen 4, Sapphire Rapids, Cooper Lake).
// Compiled for that target with a pragma, whatever -march says, and called only when CPUID
// reports every one of those features (avx512_supported), so the binary still runs elsewhere.
//
// One tile computes Y[n, r] for R rows of W × T tokens as R·T dot products held in zmm
// accumulators: per step the R weight vectors are loaded once and each token's activation
// vector once, so a step does R + T loads for R·T multiply-adds (T = 1 is the decode GEMV:
// it streams W, and R = 8 rows keep enough independent chains in flight).
//
// Every Y element gets its own accumulator, fed its columns in the same order whatever R, T,
// the item or the thread: one 16-lane accumulator over the columns in steps (16 f32/f16, 32
// bf16, 64 q8_0), a masked last step, then the fixed tree of _mm512_reduce_add_ps. So a GEMV
// (N = 1) and a tile of a prefill give the same bits for the same row and token.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moe/core/half.h"
#include "qmatmul_internal.h"

namespace moe::qmm {

bool avx512_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
}

// Everything below is compiled for the AVX512 target. Only this file's own (internal-linkage)
// functions live here, so no inline function of a shared header gets an AVX512 body.
// GCC compiles the rest of the file for avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni by
// pragma; clang (the fuzz build) by an attribute on every function.
#if defined(__clang__)
#pragma clang attribute push(                                                            \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni"))), \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni")
#endif
// GCC 12's avx512fintrin.h builds _mm512_undefined_* as `__m512 __Y = __Y;`, which -Wuninitialized
// reports at every inlined use (cvtph_ps, cvtepi32_ps, inserti64x4, the reduce): noise only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

// How each weight type feeds the shared tile loop: the columns of one step, the weight and
// activation vectors of a step (full, or the first n columns with zeros after them) and the
// multiply-add into an f32 accumulator.
// Decode (T = 1) streams W from memory. For f16 each row's loads are preceded by a prefetch this
// far ahead: its GEMV went from 14–19 to 20–21 GB/s a core; f32, bf16 did not change and q8_0
// lost 10% with it (measured on Zen 4, CPU time, 256 MiB of 1024×2048 matrices).
constexpr int kPrefetchBytes = 1024;

struct F32T {
  static constexpr int kStep = 16;
  static constexpr int kBytes = 4;  // bytes of W per column
  static constexpr bool kPrefetch = false;
  using WV = __m512;
  using XV = __m512;
  static const float* x_row(const PreparedX& px, int64_t n) { return px.x + n * px.ldx; }
  static WV load_w(const uint8_t* w, int64_t c) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(w) + c);
  }
  static WV load_w_tail(const uint8_t* w, int64_t c, int64_t n) {
    return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), reinterpret_cast<const float*>(w) + c);
  }
  static XV load_x(const float* x, int64_t c) { return _mm512_loadu_ps(x + c); }
  static XV load_x_tail(const float* x, int64_t c, int64_t n) {
    return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), x + c);
  }
  static __m512 madd(__m512 acc, WV w, XV x) { return _mm512_fmadd_ps(w, x, acc); }
};

struct F16T : F32T {  // the weights widened to f32 in registers (vcvtph2ps is exact)
  static constexpr int kBytes = 2;
  static constexpr bool kPrefetch = true;
  static WV load_w(const uint8_t* w, int64_t c) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 2 * c)));
  }
  static WV load_w_tail(const uint8_t* w, int64_t c, int64_t n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(__mmask16((1u << n) - 1), w + 2 * c));
  }
};

// vdpbf16ps: per f32 lane, acc += w[2i+1]·x[2i+1] then + w[2i]·x[2i] (exact bf16 products).
struct BF16T {
  static constexpr int kStep = 32;
  static constexpr int kBytes = 2;
  static constexpr bool kPrefetch = false;
  using WV = __m512bh;
  using XV = __m512bh;
  static const uint16_t* x_row(const PreparedX& px, int64_t n) { return px.bf16 + n * px.ld_bf16; }
  static WV load_w(const uint8_t* w, int64_t c) { return (__m512bh)_mm512_loadu_si512(w + 2 * c); }
  static WV load_w_tail(const uint8_t* w, int64_t c, int64_t n) {
    return (__m512bh)_mm512_maskz_loadu_epi16(__mmask32((1ull << n) - 1), w + 2 * c);
  }
  static XV load_x(const uint16_t* x, int64_t c) { return (__m512bh)_mm512_loadu_si512(x + c); }
  static XV load_x_tail(const uint16_t* x, int64_t c, int64_t n) {
    return (__m512bh)_mm512_maskz_loadu_epi16(__mmask32((1ull << n) - 1), x + c);
  }
  static __m512 madd(__m512 acc, WV w, XV x) { return _mm512_dpbf16_ps(acc, w, x); }
};

struct Q8T {};

// The f16 scales of the Q8_0 blocks at p0 and p1, in lanes 0–7 and 8–15.
inline __m512 q8_scales(const uint8_t* p0, const uint8_t* p1) {
  uint16_t a, b;
  std::memcpy(&a, p0, 2);
  std::memcpy(&b, p1, 2);
  const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(short(a))),
                                            _mm_set1_epi16(short(b)), 1);
  return _mm512_cvtph_ps(h);
}

// The same for a pair of adjacent blocks at p (scales at bytes 0 and 34): one 64-byte load, which
// stays inside the pair's 68 bytes, and a word permute.
inline __m512 q8_pair_scales(const uint8_t* p) {
  const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 17,
                                       17, 17, 17, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i v = _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(p));
  return _mm512_cvtph_ps(_mm512_castsi512_si256(v));
}

// Y[n + t, r] for t < T, r < R over a pair of Q8_0 blocks per step (64 columns: block 2j in the
// low 256 bits, 2j+1 in the high). vpdpbusd multiplies unsigned × signed bytes: the weights go in
// as w + 128 (w ^ 0x80: exact for every int8, −128 included) against the activation quants q,
// starting from PreparedX's −128·Σq lane sums, which leaves the exact Σ w·q of each lane's 4
// products; those are scaled by d_w·d_x and summed in f32.
template <int R, int T>
void kern_q8(const uint8_t* w, std::size_t ws, const PreparedX& px, int64_t n, int64_t cols,
             float* y, int64_t ldy) {
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const int64_t blocks = cols / 32;
  const uint8_t* xq = px.q8 + n * px.ld_q8;
  const float* xd = px.q8_d + n * px.ld_d;
  const int32_t* xc = px.q8_c + n * px.ld_d;
  for (int64_t b = 0; b < blocks; b += 2) {
    const bool pair = b + 1 < blocks;  // the last step holds one block when blocks is odd
    __m512i wq[R];
    __m512 dw[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * ws + 34 * b;
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      if (pair) {
        wq[r] = _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 36)), 1);
        dw[r] = q8_pair_scales(p);
      } else {  // high half: w = 0, against quants 0 (the padding) and a correction of 0
        wq[r] = _mm512_zextsi256_si512(lo);
        dw[r] = q8_scales(p, p);
      }
      wq[r] = _mm512_xor_si512(wq[r], flip);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m512i xv = _mm512_loadu_si512(xq + t * px.ld_q8 + 32 * b);
      const __m512 dx = _mm512_loadu_ps(xd + t * px.ld_d + 8 * b);
      const __m512i c = _mm512_loadu_si512(xc + t * px.ld_d + 8 * b);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i s = _mm512_dpbusd_epi32(c, wq[r], xv);
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[r], dx), acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// Y[n + t, r] for t < T, r < R: w is row 0 of the R rows (ws bytes apart).
template <class Tr, int R, int T>
void kern(const uint8_t* w, std::size_t ws, const PreparedX& px, int64_t n, int64_t cols, float* y,
          int64_t ldy) {
  if constexpr (std::is_same_v<Tr, Q8T>) {
    kern_q8<R, T>(w, ws, px, n, cols, y, ldy);
  } else {
    const auto* x = Tr::x_row(px, n);
    const int64_t ldx = Tr::x_row(px, n + 1) - x;
    __m512 acc[R][T];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + Tr::kStep <= cols; c += Tr::kStep) {
      typename Tr::WV wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        if constexpr (T == 1 && Tr::kPrefetch)
          _mm_prefetch(reinterpret_cast<const char*>(w + r * ws) + Tr::kBytes * c + kPrefetchBytes,
                       _MM_HINT_T0);
        wv[r] = Tr::load_w(w + r * ws, c);
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const typename Tr::XV xv = Tr::load_x(x + t * ldx, c);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][t] = Tr::madd(acc[r][t], wv[r], xv);
      }
    }
    if (c < cols) {
      const int64_t left = cols - c;
      typename Tr::WV wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = Tr::load_w_tail(w + r * ws, c, left);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const typename Tr::XV xv = Tr::load_x_tail(x + t * ldx, c, left);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][t] = Tr::madd(acc[r][t], wv[r], xv);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
  }
}

using KernFn = void (*)(const uint8_t*, std::size_t, const PreparedX&, int64_t, int64_t, float*,
                        int64_t);

// kern<Tr, r, t> for 1 ≤ r ≤ RM, 1 ≤ t ≤ TM (the remainders of the row and token blocks).
template <class Tr, int R, int TM>
KernFn pick_t(int t) {
  if constexpr (TM == 0) {
    return nullptr;
  } else {
    return t == TM ? &kern<Tr, R, TM> : pick_t<Tr, R, TM - 1>(t);
  }
}
template <class Tr, int RM, int TM>
KernFn pick(int r, int t) {
  if constexpr (RM == 0) {
    return nullptr;
  } else {
    return r == RM ? pick_t<Tr, RM, TM>(t) : pick<Tr, RM - 1, TM>(r, t);
  }
}

// Tile shapes: R·T accumulators + R weight vectors + 1 activation vector fit the 32 zmm
// registers (q8_0 also holds R correction and R scale vectors: T = 4).
template <class Tr>
constexpr int kTokens = std::is_same_v<Tr, Q8T> ? 4 : 6;

template <class Tr>
void tiles(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
           int64_t n1, float* Y, int64_t ldy) {
  const auto* w = static_cast<const uint8_t*>(W.data);
  const std::size_t ws = W.row_bytes;
  if (n1 - n0 == 1) {  // decode: stream 8 rows at a time
    for (int64_t r = r0; r < r1; r += 8) {
      const int R = int(std::min<int64_t>(8, r1 - r));
      pick<Tr, 8, 1>(R, 1)(w + r * ws, ws, px, n0, W.cols, Y + n0 * ldy + r, ldy);
    }
    return;
  }
  constexpr int TM = kTokens<Tr>;
  for (int64_t r = r0; r < r1; r += 4) {
    const int R = int(std::min<int64_t>(4, r1 - r));
    for (int64_t n = n0; n < n1; n += TM) {
      const int T = int(std::min<int64_t>(TM, n1 - n));
      pick<Tr, 4, TM>(R, T)(w + r * ws, ws, px, n, W.cols, Y + n * ldy + r, ldy);
    }
  }
}

}  // namespace

// quantize_block_q8_0's numbers 16 lanes at a time: the same f32 amax, d = amax/127 and
// id = 1/d (scalar), v = x·id, and round-half-away as trunc(v) ± 1 where |v − trunc(v)| ≥ 0.5
// (v − trunc(v) is exact). A block holding an Inf or NaN goes to the scalar code (its rules).
void prep_q8_avx512(const float* x, int64_t cols, int8_t* q, int64_t ld_q8, float* d, int32_t* corr,
                    int64_t ld_d) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(int(0x80000000u)));
  for (int64_t b = 0; b < cols / 32; ++b) {
    const __m512 a0 = _mm512_loadu_ps(x + 32 * b), a1 = _mm512_loadu_ps(x + 32 * b + 16);
    // x − x is NaN exactly for Inf and NaN.
    const __mmask16 bad =
        _mm512_cmp_ps_mask(_mm512_sub_ps(a0, a0), _mm512_setzero_ps(), _CMP_NEQ_UQ) |
        _mm512_cmp_ps_mask(_mm512_sub_ps(a1, a1), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    float db;
    if (bad) {
      db = quantize_block_q8_0(x + 32 * b, q + 32 * b);
    } else {
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a0), _mm512_abs_ps(a1)));
      const float dd = amax / 127.0f;
      const __m512 id = _mm512_set1_ps(dd != 0.0f ? 1.0f / dd : 0.0f);
      const __m512 v[2] = {_mm512_mul_ps(a0, id), _mm512_mul_ps(a1, id)};
      for (int h = 0; h < 2; ++h) {
        const __m512 t = _mm512_roundscale_ps(v[h], _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __mmask16 up =
            _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v[h], t)), half, _CMP_GE_OQ);
        const __m512 r = _mm512_mask_add_ps(t, up, t, _mm512_or_ps(one, _mm512_and_ps(v[h], sign)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 * b + 16 * h),
                         _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r)));
      }
      db = f16_to_f32(f32_to_f16(dd));
    }
    _mm256_storeu_ps(d + 8 * b, _mm256_set1_ps(db));
  }
  std::memset(q + cols, 0, std::size_t(ld_q8 - cols));
  std::fill(d + 8 * (cols / 32), d + ld_d, 0.0f);
  // −128·Σq per lane: vpdpbusd of bytes 1 (unsigned) with the quants, shifted and negated.
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t l = 0; l < ld_d; l += 16) {
    const __m512i s =
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q + 4 * l));
    _mm512_storeu_si512(corr + l,
                        _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, 7)));
  }
}

void tile_avx512(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
                 int64_t n1, float* Y, int64_t ldy) {
  switch (W.type) {
    case WType::kF32:
      return tiles<F32T>(px, W, r0, r1, n0, n1, Y, ldy);
    case WType::kF16:
      return tiles<F16T>(px, W, r0, r1, n0, n1, Y, ldy);
    case WType::kBF16:
      return tiles<BF16T>(px, W, r0, r1, n0, n1, Y, ldy);
    case WType::kQ8_0:
      return tiles<Q8T>(px, W, r0, r1, n0, n1, Y, ldy);
  }
}

#pragma GCC diagnostic pop
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

}  // namespace moe::qmm
