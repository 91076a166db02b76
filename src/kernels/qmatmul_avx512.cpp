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
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni")
// GCC 12's avx512fintrin.h builds _mm512_undefined_* as `__m512 __Y = __Y;`, which -Wuninitialized
// reports at every inlined use (cvtph_ps, cvtepi32_ps, inserti64x4, the reduce): noise only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

// How each weight type feeds the shared tile loop: the columns of one step, the weight and
// activation vectors of a step (full, or the first n columns with zeros after them) and the
// multiply-add into an f32 accumulator.
struct F32T {
  static constexpr int kStep = 16;
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

// Y[n + t, r] for t < T, r < R over a pair of Q8_0 blocks per step (64 columns: block 2j in the
// low 256 bits, 2j+1 in the high). The activations are stored as u = q + 128 (PreparedX), so the
// unsigned × signed vpdpbusd gives Σ u·w = Σ q·w + 128·Σ w: each weight vector's −128·Σw lane
// sums are computed once (shared by the T tokens) and start the accumulation, leaving the exact
// Σ q·w of each lane's 4 products; those are scaled by d_w·d_x and summed in f32.
template <int R, int T>
void kern_q8(const uint8_t* w, std::size_t ws, const PreparedX& px, int64_t n, int64_t cols,
             float* y, int64_t ldy) {
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const __m512i c128 = _mm512_set1_epi8(char(0x80)), zero = _mm512_setzero_si512();
  const int64_t blocks = cols / 32;
  const uint8_t* xq = px.q8 + n * px.ld_q8;
  const float* xd = px.q8_d + n * px.ld_d;
  for (int64_t b = 0; b < blocks; b += 2) {
    const bool pair = b + 1 < blocks;  // the last step holds one block when blocks is odd
    __m512i wq[R], corr[R];
    __m512 dw[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * ws + 34 * b;
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      wq[r] =
          pair ? _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 36)), 1)
               : _mm512_zextsi256_si512(lo);
      corr[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c128, wq[r]));
      dw[r] = q8_scales(p, pair ? p + 34 : p);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      // Rows of u are padded to 64 bytes with u = 128 and the scales with 0 past the last block.
      const __m512i xv = _mm512_loadu_si512(xq + t * px.ld_q8 + 32 * b);
      const __m512 dx = _mm512_loadu_ps(xd + t * px.ld_d + 8 * b);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i s = _mm512_dpbusd_epi32(corr[r], xv, wq[r]);
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
      for (int r = 0; r < R; ++r) wv[r] = Tr::load_w(w + r * ws, c);
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
#pragma GCC pop_options

}  // namespace moe::qmm
