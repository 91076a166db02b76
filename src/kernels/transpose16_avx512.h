// Private to src/kernels: the in-register 16×16 transpose of 32-bit values shared by the f32
// panel packer (grouped_gemm.cpp) and the bf16 pair packer (gemm_bf16_avx512.cpp, whose bf16
// pairs are 32-bit values: the shuffles move bits, so any pattern passes unchanged). Compiled for
// AVX-512F by its own target attribute, whatever the includer's flags, and inlined into callers
// whose target includes it (-march=native with AVX-512, or gemm_bf16_avx512.cpp's pragma);
// static, so each file keeps its own copy.
#pragma once
#include <immintrin.h>

namespace moe::kernels_detail {

// r[j] = row j on entry, column j on exit.
// (GCC 12 warns that the intrinsics' internal _mm512_undefined_ps() "may be used
// uninitialized"; the shuffles overwrite every lane, so the warning is off for this function.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  // Pairs of rows interleaved, then 4×4 blocks inside each 128-bit lane: r[4g+b] lane L holds
  // column 4L+b of rows 4g..4g+3.
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // Then a 4×4 transpose of the 128-bit lanes of {r[b], r[4+b], r[8+b], r[12+b]} for each b:
  // column 4L+b gathers lane L of the four.
  for (int b = 0; b < 4; ++b) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[b], r[4 + b], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 u1 = _mm512_shuffle_f32x4(r[b], r[4 + b], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], _MM_SHUFFLE(3, 2, 3, 2));
    t[b] = _mm512_shuffle_f32x4(u0, u2, _MM_SHUFFLE(2, 0, 2, 0));
    t[4 + b] = _mm512_shuffle_f32x4(u0, u2, _MM_SHUFFLE(3, 1, 3, 1));
    t[8 + b] = _mm512_shuffle_f32x4(u1, u3, _MM_SHUFFLE(2, 0, 2, 0));
    t[12 + b] = _mm512_shuffle_f32x4(u1, u3, _MM_SHUFFLE(3, 1, 3, 1));
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}
#pragma GCC diagnostic pop

}  // namespace moe::kernels_detail
