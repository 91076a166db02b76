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
#include "moe/kernels/cpu_features.h"
#include "qmatmul_internal.h"

namespace moe::qmm {

bool avx512_supported() {
  const CpuFeatures& f = cpu_features();
  return f.avx512 && f.avx512_bf16 && f.avx512_vnni;  // avx512 = F, BW, VL and DQ
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
struct Q40T {};

// The eight 6-bit scales and mins of a Q4_K block's 12 bytes at p (get_scale_min_k4), as the 8
// bytes of a uint64 each, computed in registers: q4_k_scales' byte stores followed by a vector
// load of them stalled on store forwarding (Q4_K ran at half Q6_K's rate with it).
inline void q4_k_scales_u64(const uint8_t* p, uint64_t& sc, uint64_t& m) {
  uint32_t u[3];
  std::memcpy(u, p, 12);
  const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, m_lo = u[1] & 0x3f3f3f3fu;
  // Scales/mins 4–7: a nibble of bytes 8–11 below the top 2 bits of bytes 0–3 / 4–7.
  const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
  const uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
  sc = uint64_t(sc_lo) | uint64_t(sc_hi) << 32;
  m = uint64_t(m_lo) | uint64_t(m_hi) << 32;
}

inline float f16_to_f32_bits(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}
struct Q4KT {};
struct Q6KT {};

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

// The 32 nibbles of a Q4_0 block's 16 bytes at p as bytes: element j < 16 the low nibble of byte
// j, j + 16 its high nibble (128-bit lanes [p & 15, p >> 4 & 15]).
inline __m256i q4_0_nibbles(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f));
}

// Y[n + t, r] for t < T, r < R over a pair of Q8_0 (or Q4_0) blocks per step (64 columns: block
// 2j in the low 256 bits, 2j+1 in the high). vpdpbusd multiplies unsigned × signed bytes against
// the activation quants q. Q8_0: the weights go in as w + 128 (w ^ 0x80: exact for every int8,
// −128 included), starting from PreparedX's −128·Σq lane sums, which leaves the exact Σ w·q of each
// lane's 4 products. Q4_0: the nibbles u ∈ [0, 15] go in as they are, starting from −8·Σq (the
// same sums / 16, exact), which leaves Σ (u − 8)·q. Those are scaled by d_w·d_x, summed in f32.
template <bool kQ4, int R, int T>
void kern_q8(const uint8_t* w, std::size_t ws, const PreparedX& px, int64_t n, int64_t cols,
             float* y, int64_t ldy) {
  constexpr int kBlockBytes = kQ4 ? 18 : 34;
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
      const uint8_t* p = w + r * ws + kBlockBytes * b;
      if constexpr (kQ4) {
        const __m256i lo = q4_0_nibbles(p + 2);
        if (pair) {
          wq[r] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), q4_0_nibbles(p + 20), 1);
          dw[r] = q8_scales(p, p + 18);
        } else {  // high half: 0 against quants 0 and a correction of 0
          wq[r] = _mm512_zextsi256_si512(lo);
          dw[r] = q8_scales(p, p);
        }
        continue;
      }
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
      __m512i c = _mm512_loadu_si512(xc + t * px.ld_d + 8 * b);
      if constexpr (kQ4) c = _mm512_srai_epi32(c, 4);
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

// Q4_K and Q6_K against Q8_K activations: per 256-block and row, R × T exact int32 lane sums.
// A step covers 64 columns (one zmm of weights as bytes, unsigned). vpmaddubsw multiplies them by
// the activation quants into int16 pairs (Q4_K: 2·15·127, Q6_K: 2·63·127 < 2^15: no saturation),
// vpdpwssd multiplies the pairs by the sub-block scales (int16 per word) and adds them into the
// int32 lanes. Lane l of a step holds columns 4l … 4l+3, so the scale of word 2l, 2l+1 is that of
// the sub-block of those columns. The per-block offsets (Q4_K: −m_s·Σq over a sub-block; Q6_K:
// −32·Σq) come from the activations' bsums: Σ_s m_s·Σ_{j∈s}q_j, resp. 32·Σ_s sc_s·Σ_{j∈s}q_j.
// Each lane's sum, converted to f32, is scaled by d·d_x (FMA) into the row's f32 accumulator.
// Shapes: w [R rows, ws bytes apart], the activation quants px.qk [T, ld_qk], records px.qk_meta.

// Word indexes that spread 8 (Q4_K: sub-blocks of 32) or 16 (Q6_K: of 16) int16 scales over the
// 32 words of step k: word i takes the scale of the sub-block of columns 64k + 2i, 64k + 2i + 1.
template <int kSub>
__m512i scale_index(int k) {
  alignas(64) int16_t idx[32];
  for (int i = 0; i < 32; ++i) idx[i] = int16_t((64 * k + 2 * i) / kSub);
  return _mm512_load_si512(idx);
}

template <bool kQ6, int R, int T>
void kern_qk(const uint8_t* w, std::size_t ws, const PreparedX& px, int64_t n, int64_t cols,
             float* y, int64_t ldy) {
  constexpr int kBlockBytes = kQ6 ? 210 : 144;
  __m512 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512i sidx[4];
  for (int k = 0; k < 4; ++k) sidx[k] = kQ6 ? scale_index<16>(k) : scale_index<32>(k);
  const int8_t* xq = px.qk + n * px.ld_qk;
  const uint8_t* xm = px.qk_meta + n * px.ld_meta;
  for (int64_t i = 0; i < cols / 256; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * ws + kBlockBytes * i;
      __m512i sc16;  // the scales as int16 words 0..7 (Q4_K) or 0..15 (Q6_K)
      __m128i m16 = _mm_setzero_si128();
      float d, dmin = 0.0f;
      if constexpr (kQ6) {
        sc16 = _mm512_castsi256_si512(
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192))));
        d = f16_to_f32_bits(p + 208);
      } else {
        uint64_t sc, m;
        q4_k_scales_u64(p + 4, sc, m);
        sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(sc))));
        m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(m)));
        d = f16_to_f32_bits(p);
        dmin = f16_to_f32_bits(p + 2);
      }
      __m512i isum[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) isum[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {  // columns 64k … 64k+63 of the block
        __m512i wv;
        if constexpr (kQ6) {
          // Half k/2: ql bytes 64h … 64h+63 hold columns 128h + 0..63 in their low nibbles (k
          // even) and 128h + 64..127 in their high ones (k odd); qh bytes 32h … 32h+31 hold the
          // 2-bit highs of column 128h + 32j + l at bits 2j, 2j+1 of byte l.
          const __m512i ql = _mm512_loadu_si512(p + 64 * (k / 2));
          const __m512i qh = _mm512_broadcast_i64x4(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 128 + 32 * (k / 2))));
          const __m512i lo =
              k % 2 ? _mm512_and_si512(_mm512_srli_epi16(ql, 4), low4) : _mm512_and_si512(ql, low4);
          // Bits 2j, 2j+1 to bits 4, 5 (j = 2(k%2) in the low 256 bits, j + 1 in the high).
          const __m512i hs =
              k % 2
                  ? _mm512_srlv_epi16(
                        qh, _mm512_set_epi64(0x0002000200020002, 0x0002000200020002,
                                             0x0002000200020002, 0x0002000200020002, 0, 0, 0, 0))
                  : _mm512_sllv_epi16(qh, _mm512_set_epi64(0x0002000200020002, 0x0002000200020002,
                                                           0x0002000200020002, 0x0002000200020002,
                                                           0x0004000400040004, 0x0004000400040004,
                                                           0x0004000400040004, 0x0004000400040004));
          wv = _mm512_or_si512(lo, _mm512_and_si512(hs, _mm512_set1_epi8(0x30)));
        } else {
          // qs bytes 32k … 32k+31: columns 64k + 0..31 in the low nibbles, 64k + 32..63 high.
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 + 32 * k));
          wv = _mm512_and_si512(
              _mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1), low4);
        }
        const __m512i sck = _mm512_permutexvar_epi16(sidx[k], sc16);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m512i xv = _mm512_loadu_si512(xq + t * px.ld_qk + 256 * i + 64 * k);
          isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(wv, xv), sck);
        }
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const uint8_t* meta = xm + t * px.ld_meta + kQ8KMetaBytes * i;
        float dx;
        std::memcpy(&dx, meta + kQ8KScaleAt, 4);
        if constexpr (kQ6) {  // − 32·Σ_s sc_s·bsum_s, in lanes 0–7
          const __m256i c =
              _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(meta)),
                                _mm512_castsi512_si256(sc16));
          isum[t] = _mm512_sub_epi32(isum[t], _mm512_zextsi256_si512(_mm256_slli_epi32(c, 5)));
        }
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(d * dx), acc[r][t]);
        if constexpr (!kQ6) {  // − (dmin·d_x)·Σ_s m_s·Σ_{j∈s} q_j, in lanes 0–3
          const __m128i ms = _mm_madd_epi16(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(meta + kQ8KPairsAt)), m16);
          acc[r][t] = _mm512_fnmadd_ps(_mm512_zextps128_ps512(_mm_cvtepi32_ps(ms)),
                                       _mm512_set1_ps(dmin * dx), acc[r][t]);
        }
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
    kern_q8<false, R, T>(w, ws, px, n, cols, y, ldy);
  } else if constexpr (std::is_same_v<Tr, Q40T>) {
    kern_q8<true, R, T>(w, ws, px, n, cols, y, ldy);
  } else if constexpr (std::is_same_v<Tr, Q4KT> || std::is_same_v<Tr, Q6KT>) {
    kern_qk<std::is_same_v<Tr, Q6KT>, R, T>(w, ws, px, n, cols, y, ldy);
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
// registers (q8_0/q4_0 also hold R scale vectors; q4_k/q6_k T int32 sums: T = 4).
template <class Tr>
constexpr int kTokens =
    std::is_same_v<Tr, F32T> || std::is_same_v<Tr, F16T> || std::is_same_v<Tr, BF16T> ? 6 : 4;

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
    case WType::kQ4_0:
      return tiles<Q40T>(px, W, r0, r1, n0, n1, Y, ldy);
    case WType::kQ4_K:
      return tiles<Q4KT>(px, W, r0, r1, n0, n1, Y, ldy);
    case WType::kQ6_K:
      return tiles<Q6KT>(px, W, r0, r1, n0, n1, Y, ldy);
  }
}

#pragma GCC diagnostic pop
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

}  // namespace moe::qmm
