// qmatmul's AVX2 path (AVX2 + FMA + F16C: Haswell and later, Zen 1–3), for CPUs without the
// AVX512 BF16/VNNI set. Compiled for that target with a pragma whatever -march says, called only
// when CPUID reports the features (avx2_supported).
//
// The same tile scheme as qmatmul_avx512.cpp on 8-lane ymm vectors with 16 registers: R rows ×
// T tokens of accumulators (R·T + R + 1 ≤ 16), each Y element one accumulator fed its columns
// in a fixed order, then a fixed reduction tree: results depend on neither threads nor tiles.
//   bf16 : both operands widened to f32 (exact: a bf16 is the top half of an f32) and FMA'd, so
//          each product is the exact bf16 × bf16 product, as vdpbf16ps computes it.
//   q8_0 : no VNNI: vpmaddubsw multiplies unsigned × signed bytes into saturating int16 pairs.
//          The weights' signs are moved onto the activation quants, |w| · sign(q, w) (|−128| =
//          128 is still exact as an unsigned byte, and q ∈ [−127, 127] negates safely): a pair
//          sums to at most 2·128·127 = 32512 < 2^15, so nothing saturates; vpmaddwd then adds
//          pairs into int32.
//   q4_0 : the nibbles minus 8 as int8, then the q8_0 products.
//   q4_k : per 32 columns (one sub-block of Q4_K, half of Q6_K's two) vpmaddubsw of the unsigned
//   q6_k   weights (0..15, 0..63) with the Q8_K quants (2·63·127 < 2^15: no saturation), vpmaddwd
//          with the sub-block scales into int32 lanes; the offsets from the activations' bsums as
//          in qmatmul_avx512.cpp.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moe/kernels/cpu_features.h"
#include "qmatmul_internal.h"

namespace moe::qmm {

bool avx2_supported() {
  const CpuFeatures& f = cpu_features();
  return f.avx2 && f.fma && f.f16c;
}

// GCC compiles the rest of the file for avx2,fma,f16c by pragma; clang (the fuzz build) by an
// attribute on every function.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace {

inline __m256i tail_mask32(int64_t n) {  // lanes < n of 8 int32 set
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), idx);
}

// The first n (< 8) 16-bit values at p, zero after: copied through a small buffer (AVX2 has no
// 16-bit masked load).
inline __m128i load_u16_tail(const void* p, int64_t n) {
  uint16_t buf[8] = {};
  std::memcpy(buf, p, std::size_t(n) * 2);
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(buf));
}

struct F32T {
  static constexpr int kStep = 8;
  static const float* x_row(const PreparedX& px, int64_t n) { return px.x + n * px.ldx; }
  static __m256 load_w(const uint8_t* w, int64_t c) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + c);
  }
  static __m256 load_w_tail(const uint8_t* w, int64_t c, int64_t n) {
    return _mm256_maskload_ps(reinterpret_cast<const float*>(w) + c, tail_mask32(n));
  }
  static __m256 load_x(const float* x, int64_t c) { return _mm256_loadu_ps(x + c); }
  static __m256 load_x_tail(const float* x, int64_t c, int64_t n) {
    return _mm256_maskload_ps(x + c, tail_mask32(n));
  }
};

struct F16T : F32T {
  static __m256 load_w(const uint8_t* w, int64_t c) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * c)));
  }
  static __m256 load_w_tail(const uint8_t* w, int64_t c, int64_t n) {
    return _mm256_cvtph_ps(load_u16_tail(w + 2 * c, n));
  }
};

inline __m256 widen_bf16(__m128i h) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

struct BF16T {
  static constexpr int kStep = 8;
  static const uint16_t* x_row(const PreparedX& px, int64_t n) { return px.bf16 + n * px.ld_bf16; }
  static __m256 load_w(const uint8_t* w, int64_t c) {
    return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * c)));
  }
  static __m256 load_w_tail(const uint8_t* w, int64_t c, int64_t n) {
    return widen_bf16(load_u16_tail(w + 2 * c, n));
  }
  // Prepared bf16 rows are padded with zeros to a multiple of 32: a full load is in bounds.
  static __m256 load_x(const uint16_t* x, int64_t c) {
    return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + c)));
  }
  static __m256 load_x_tail(const uint16_t* x, int64_t c, int64_t n) { return load_x(x, c); }
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
struct Q4KT {};
struct Q6KT {};

// A fixed tree: 8 → 4 → 2 → 1 lanes.
inline float reduce8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float f16_scale(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

// One Q8_0 (or Q4_0) block (32 columns) per step; see the file comment for the int8 products.
template <bool kQ4, int R, int T>
void kern_q8(const uint8_t* w, std::size_t ws, const PreparedX& px, int64_t n, int64_t cols,
             float* y, int64_t ldy) {
  constexpr int kBlockBytes = kQ4 ? 18 : 34;
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  const uint8_t* xq = px.q8 + n * px.ld_q8;
  const float* xd = px.q8_d + n * px.ld_d;
  for (int64_t b = 0; b < cols / 32; ++b) {
    __m256i wq[R], aw[R];
    float dw[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * ws + kBlockBytes * b;
      if constexpr (kQ4) {  // element j < 16 the low nibble of byte j, j + 16 the high one
        const __m128i nb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
        wq[r] = _mm256_sub_epi8(
            _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nb, 4), nb), _mm256_set1_epi8(0x0f)),
            _mm256_set1_epi8(8));
      } else {
        wq[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      }
      aw[r] = _mm256_abs_epi8(wq[r]);
      dw[r] = f16_scale(p);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const __m256i q =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * px.ld_q8 + 32 * b));
      const float dx = xd[t * px.ld_d + 8 * b];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i p16 = _mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(q, wq[r]));
        const __m256i p32 = _mm256_madd_epi16(p16, ones);
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(dw[r] * dx), acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[t * ldy + r] = reduce8(acc[r][t]);
}

// Q4_K / Q6_K against Q8_K activations, 32 columns a step: R × T exact int32 lane sums per
// 256-block and row, then scaled by d·d_x into f32 (qmatmul_avx512.cpp's kern_qk on 8 lanes; the
// Q6_K offset −32·Σ_s sc_s·bsum_s in lanes 0–7, Q4_K's −(dmin·d_x)·Σ_s m_s·Σq in lanes 0–3).
template <bool kQ6, int R, int T>
void kern_qk(const uint8_t* w, std::size_t ws, const PreparedX& px, int64_t n, int64_t cols,
             float* y, int64_t ldy) {
  constexpr int kBlockBytes = kQ6 ? 210 : 144;
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
  const int8_t* xq = px.qk + n * px.ld_qk;
  const uint8_t* xm = px.qk_meta + n * px.ld_meta;
  for (int64_t i = 0; i < cols / 256; ++i) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = w + r * ws + kBlockBytes * i;
      const auto* s6 = reinterpret_cast<const int8_t*>(p + 192);  // Q6_K's 16 scales
      uint64_t sc = 0, m = 0;                                     // Q4_K's, bytes of a uint64
      float d, dmin = 0.0f;
      if constexpr (kQ6) {
        d = f16_scale(p + 208);
      } else {
        q4_k_scales_u64(p + 4, sc, m);
        d = f16_scale(p);
        dmin = f16_scale(p + 2);
      }
      __m256i isum[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
      for (int k = 0; k < 8; ++k) {  // columns 32k … 32k+31 of the block
        __m256i wv, sck;
        if constexpr (kQ6) {
          // Half h = k/4, j = k%4: nibble j/2 of ql[64h + 32(j%2) + l], bits 2j, 2j+1 of
          // qh[32h + l] moved to bits 4, 5.
          const int h = k / 4, j = k % 4;
          const __m256i ql =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * h + 32 * (j % 2)));
          const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 128 + 32 * h));
          const __m256i lo = _mm256_and_si256(j < 2 ? ql : _mm256_srli_epi16(ql, 4), low4);
          const __m256i hs = j == 0   ? _mm256_slli_epi16(qh, 4)
                             : j == 1 ? _mm256_slli_epi16(qh, 2)
                             : j == 2 ? qh
                                      : _mm256_srli_epi16(qh, 2);
          wv = _mm256_or_si256(lo, _mm256_and_si256(hs, bits45));
          sck = _mm256_set_m128i(_mm_set1_epi16(s6[2 * k + 1]), _mm_set1_epi16(s6[2 * k]));
        } else {  // sub-block k: the low (k even) or high nibbles of qs bytes 32(k/2) …
          const __m256i b =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 + 32 * (k / 2)));
          wv = _mm256_and_si256(k % 2 ? _mm256_srli_epi16(b, 4) : b, low4);
          sck = _mm256_set1_epi16(short((sc >> (8 * k)) & 0xff));
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const __m256i xv = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(xq + t * px.ld_qk + 256 * i + 32 * k));
          isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), sck));
        }
      }
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const uint8_t* meta = xm + t * px.ld_meta + kQ8KMetaBytes * i;
        float dx;
        std::memcpy(&dx, meta + kQ8KScaleAt, 4);
        if constexpr (kQ6) {
          const __m256i sc16 =
              _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s6)));
          const __m256i c =
              _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(meta)), sc16);
          isum[t] = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(c, 5));
        }
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dx), acc[r][t]);
        if constexpr (!kQ6) {
          const __m128i ms =
              _mm_madd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(meta + kQ8KPairsAt)),
                             _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(m))));
          acc[r][t] =
              _mm256_fnmadd_ps(_mm256_insertf128_ps(_mm256_setzero_ps(), _mm_cvtepi32_ps(ms), 0),
                               _mm256_set1_ps(dmin * dx), acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[t * ldy + r] = reduce8(acc[r][t]);
}

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
    __m256 acc[R][T];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + Tr::kStep <= cols; c += Tr::kStep) {
      __m256 wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = Tr::load_w(w + r * ws, c);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256 xv = Tr::load_x(x + t * ldx, c);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
      }
    }
    if (c < cols) {
      const int64_t left = cols - c;
      __m256 wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) wv[r] = Tr::load_w_tail(w + r * ws, c, left);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256 xv = Tr::load_x_tail(x + t * ldx, c, left);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) y[t * ldy + r] = reduce8(acc[r][t]);
  }
}

using KernFn = void (*)(const uint8_t*, std::size_t, const PreparedX&, int64_t, int64_t, float*,
                        int64_t);

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

// 16 ymm registers: 4 rows × 2 tokens (8 accumulators + 4 weights + 1 activation); decode 4 rows.
template <class Tr>
void tiles(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
           int64_t n1, float* Y, int64_t ldy) {
  const auto* w = static_cast<const uint8_t*>(W.data);
  const std::size_t ws = W.row_bytes;
  constexpr int RM = 4, TM = 2;
  for (int64_t r = r0; r < r1; r += RM) {
    const int R = int(std::min<int64_t>(RM, r1 - r));
    for (int64_t n = n0; n < n1; n += TM) {
      const int T = int(std::min<int64_t>(TM, n1 - n));
      pick<Tr, RM, TM>(R, T)(w + r * ws, ws, px, n, W.cols, Y + n * ldy + r, ldy);
    }
  }
}

}  // namespace

void tile_avx2(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
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

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

}  // namespace moe::qmm
