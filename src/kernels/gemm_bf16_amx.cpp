// gemm_bf16's AMX path (Intel Sapphire Rapids and later: AMX-TILE + AMX-BF16), and a software
// model of the tiles that runs the same tile program on any CPU with AVX-512.
//
// AMX holds matrices in eight tile registers of up to 16 rows × 64 bytes. `tdpbf16ps C, A, B`
// multiplies a tile A of 16 rows × 16 bf16 pairs by a tile B of 16 pair rows × 16 columns (each
// element a pair: B's row p holds (b[2p, n], b[2p+1, n]) for n = 0..15) into C, 16 × 16 f32:
//   C[m, n] += Σ_p A[m, 2p]·B[p, 2n] + A[m, 2p+1]·B[p, 2n+1]
// so a B tile is exactly 16 steps × 16 columns of the AVX512-BF16 path's B panel ([P][32][2]),
// read with a row stride of the panel's 128 bytes, and an A tile is 16 rows of op(A) with K
// contiguous (row-major, 32 bf16 = 64 bytes per tile row).
//
// The tile program: a 32 × 32 block of C in four accumulator tiles (tmm0..3), over K in steps of
// 32 values (16 pairs): two A tiles (rows 0..15, 16..31: tmm4, tmm5), two B tiles (columns 0..15,
// 16..31: tmm6, tmm7), four tdpbf16ps. Every tile is configured 16 rows × 64 bytes once per thread
// and call, so operands are padded: K to a multiple of 32 with zero pairs (B panels and packed A
// rows), M to a multiple of 32 with zero rows (packed A), N to a multiple of 32 by the panels' zero
// columns.
// The accumulators go through a per-thread 32 × 32 f32 buffer to the epilogue, which writes
// alpha·acc + beta·C on the block's mr × nr part (multiply, then add, as the AVX512-BF16 path).
//
// A: op(A) rows with K contiguous. An untransposed A with K a multiple of 32 is read in place (its
// full 32-row blocks; a last partial block is copied with zero rows). Otherwise each 32-row block
// is packed once per call, in parallel: an untransposed A row by row (zero past K); a transposed A
// by pairing rows 2p, 2p+1 of A into [16 steps][32 rows] (pack_row_pairs_avx512, as the B panels)
// and transposing those 32-bit pairs 16 × 16 in registers.
//
// Work split: items of one 32-row block × up to kGroup column panels, OpenMP dynamic; each C
// element is summed by one thread in the order the tile program fixes, then alpha·acc + beta·c:
// the bits do not depend on the threads.
//
// The OS must grant the tile state before the first tile instruction (Linux:
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once by cpu_features()), and each
// thread loads the tile configuration (ldtilecfg) before its first tile instruction and releases
// it (tilerelease) after its last, within each call: no tile state stays live between calls.
//
// The model (TileModel below) executes the same program on arrays: 8 tiles of rows × colsb bytes,
// per thread, configured by the same 64-byte configuration; loads and stores copy each row through
// its stride (so ASan sees every byte the program reads and writes); tdpbf16ps as the Intel SDM
// describes it (inputs that are bf16 subnormals read as zero; each accumulation rounded to nearest
// even, subnormal results flushed to zero); an instruction on an unconfigured thread, or with
// shapes the hardware would reject (#UD), stops the program with an error. It is a model of the
// instruction's definition, not a bit-exact twin of a particular chip: tests compare both against
// gemm_bf16_reference within the same γ_{K+3} bound, which holds for any summation order.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "gemm_bf16_internal.h"
#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "transpose16_avx512.h"

namespace moe::bf16k {

// The whole file runs on AVX-512 (packers, epilogue); the hardware tile instructions need
// AMX-TILE/AMX-BF16 as well, and run only where cpu_features().amx_usable.
#if defined(__clang__)
#pragma clang attribute push(                                                                   \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16"))), \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")
#endif
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

constexpr int kTM = 32;     // rows of a C block (two 16-row tiles)
constexpr int kTN = 32;     // columns of a C block = the B panel's width (two 16-column tiles)
constexpr int kTK = 32;     // K values per tile step: 16 pairs, a 64-byte A tile row
constexpr int kGroup = 4;   // column panels per work item (one packed A block reused across them)
constexpr int kChunk = 32;  // pair steps per item of the B packing (pack_pairs_of_rows: ≤ 32)

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tile t
  uint8_t rows[16] = {};    // rows of tile t
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// Tiles 0..7, each 16 rows × 64 bytes: the shapes of the whole program.
TileConfig block_config() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  return c;
}

// ---- The software model of the tiles.

struct TileModel {
  struct Tile {
    int rows = 0, colsb = 0;
    alignas(64) uint8_t d[16][64] = {};
  };
  bool configured = false;
  Tile t[8];

  void config(const TileConfig& c) {
    MOE_CHECK(c.palette == 1 && c.start_row == 0, "AMX model: palette {} start_row {} (want 1, 0)",
              int(c.palette), int(c.start_row));
    for (int i = 0; i < 8; ++i) {
      MOE_CHECK(
          c.rows[i] <= 16 && c.colsb[i] <= 64 && c.colsb[i] % 4 == 0,
          "AMX model: tile {} configured {} rows × {} bytes (at most 16 × 64, 4-byte columns)", i,
          int(c.rows[i]), int(c.colsb[i]));
      t[i].rows = c.rows[i];
      t[i].colsb = c.colsb[i];
      std::memset(t[i].d, 0, sizeof t[i].d);  // ldtilecfg zeroes the tiles
    }
    configured = true;
  }
  Tile& use(int i) {
    MOE_CHECK(configured, "AMX model: tile instruction before ldtilecfg on this thread");
    MOE_CHECK(t[i].rows > 0, "AMX model: tile {} is not configured", i);
    return t[i];
  }
  void load(int i, const void* p, long stride) {
    Tile& x = use(i);
    for (int r = 0; r < x.rows; ++r)
      std::memcpy(x.d[r], static_cast<const uint8_t*>(p) + r * stride, std::size_t(x.colsb));
  }
  void store(int i, void* p, long stride) {
    Tile& x = use(i);
    for (int r = 0; r < x.rows; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, x.d[r], std::size_t(x.colsb));
  }
  void zero(int i) { std::memset(use(i).d, 0, sizeof t[i].d); }
  static float bf16(const uint8_t* p) {  // DAZ: a subnormal bf16 reads as zero of its sign
    uint16_t h;
    std::memcpy(&h, p, 2);
    if ((h & 0x7f80u) == 0) h &= 0x8000u;
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static float ftz(float x) { return std::fabs(x) < 0x1p-126f ? std::copysign(0.f, x) : x; }
  // tdpbf16ps c, a, b: c [M, N f32] += a [M, K pairs] · b [K pair rows, N pairs].
  void dpbf16ps(int ci, int ai, int bi) {
    Tile &c = use(ci), &a = use(ai), &b = use(bi);
    const int M = c.rows, N = c.colsb / 4, K = a.colsb / 4;
    MOE_CHECK(a.rows == M && b.rows == K && b.colsb == c.colsb,
              "AMX model: tdpbf16ps shapes C {}×{}B, A {}×{}B, B {}×{}B do not match", c.rows,
              c.colsb, a.rows, a.colsb, b.rows, b.colsb);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        float acc;
        std::memcpy(&acc, c.d[m] + 4 * n, 4);
        for (int k = 0; k < K; ++k)
          for (int h = 0; h < 2; ++h)  // each product exact in f32; each accumulation rounded
            acc = ftz(acc + bf16(a.d[m] + 4 * k + 2 * h) * bf16(b.d[k] + 4 * n + 2 * h));
        std::memcpy(c.d[m] + 4 * n, &acc, 4);
      }
  }
};

// Per thread, on the heap, made on first use: as a thread_local object its 8 KiB of tiles sat in
// every thread's static TLS block, test path or not.
thread_local std::unique_ptr<TileModel> model_tiles;
TileModel& model() {
  if (!model_tiles) model_tiles = std::make_unique<TileModel>();
  return *model_tiles;
}

struct ModelTiles {
  static void config(const TileConfig& c) { model().config(c); }
  static void release() { model().configured = false; }
  template <int T>
  static void load(const void* p, long stride) {
    model().load(T, p, stride);
  }
  template <int T>
  static void store(void* p, long stride) {
    model().store(T, p, stride);
  }
  template <int T>
  static void zero() {
    model().zero(T);
  }
  template <int C, int A, int B>
  static void dp() {
    model().dpbf16ps(C, A, B);
  }
};

// ---- The hardware tiles. GCC's tile intrinsics are inline assembly that pastes the tile number
// into the instruction text, so each number is spelled out; their loads declare no memory input,
// hence the compiler barrier before each (the operands were just written by the packers).

struct HwTiles {
  static void config(const TileConfig& c) { _tile_loadconfig(&c); }
  static void release() { _tile_release(); }
  template <int T>
  static void load(const void* p, long stride) {
    asm volatile("" ::: "memory");
    if constexpr (T == 4)
      _tile_loadd(4, p, stride);
    else if constexpr (T == 5)
      _tile_loadd(5, p, stride);
    else if constexpr (T == 6)
      _tile_loadd(6, p, stride);
    else if constexpr (T == 7)
      _tile_loadd(7, p, stride);
    else
      static_assert(T >= 4 && T <= 7, "operand tiles are tmm4..7");
  }
  template <int T>
  static void store(void* p, long stride) {
    if constexpr (T == 0)
      _tile_stored(0, p, stride);
    else if constexpr (T == 1)
      _tile_stored(1, p, stride);
    else if constexpr (T == 2)
      _tile_stored(2, p, stride);
    else if constexpr (T == 3)
      _tile_stored(3, p, stride);
    else
      static_assert(T >= 0 && T <= 3, "accumulator tiles are tmm0..3");
  }
  template <int T>
  static void zero() {
    if constexpr (T == 0)
      _tile_zero(0);
    else if constexpr (T == 1)
      _tile_zero(1);
    else if constexpr (T == 2)
      _tile_zero(2);
    else if constexpr (T == 3)
      _tile_zero(3);
    else
      static_assert(T >= 0 && T <= 3, "accumulator tiles are tmm0..3");
  }
  template <int C, int A, int B>
  static void dp() {
    if constexpr (C == 0 && A == 4 && B == 6)
      _tile_dpbf16ps(0, 4, 6);
    else if constexpr (C == 1 && A == 4 && B == 7)
      _tile_dpbf16ps(1, 4, 7);
    else if constexpr (C == 2 && A == 5 && B == 6)
      _tile_dpbf16ps(2, 5, 6);
    else if constexpr (C == 3 && A == 5 && B == 7)
      _tile_dpbf16ps(3, 5, 7);
    else
      static_assert(C < 0, "the program's four products only");
  }
};

// ---- The tile program.

// acc [32, 32] f32 (row stride kTN) = the 32 rows of A at a (row stride a_ld values, K contiguous,
// Kp values each, Kp a multiple of kTK) times B, whose 16 pair steps from K offset k are
// bchunk(k): [16][kTN][2], rows 128 bytes apart (a B panel's steps, or a zero-padded copy).
template <class T, class BChunk>
void block_32x32(const uint16_t* a, std::size_t a_ld, const BChunk& bchunk, int Kp, float* acc) {
  T::template zero<0>();
  T::template zero<1>();
  T::template zero<2>();
  T::template zero<3>();
  const long as = long(a_ld * sizeof(uint16_t)), bs = kTN * 2 * sizeof(uint16_t);
  for (int k = 0; k < Kp; k += kTK) {
    const uint16_t* b = bchunk(k);
    T::template load<4>(a + k, as);
    T::template load<5>(a + 16 * a_ld + k, as);
    T::template load<6>(b, bs);       // columns 0..15: the first 64 bytes of each step's row
    T::template load<7>(b + 32, bs);  // columns 16..31
    T::template dp<0, 4, 6>();
    T::template dp<1, 4, 7>();
    T::template dp<2, 5, 6>();
    T::template dp<3, 5, 7>();
  }
  const long cs = kTN * sizeof(float);
  T::template store<0>(acc, cs);
  T::template store<1>(acc + 16, cs);
  T::template store<2>(acc + 16 * kTN, cs);
  T::template store<3>(acc + 16 * kTN + 16, cs);
}

// C [mr, nr] (row stride ldc) = alpha·acc + beta·C (beta = 0 does not read C).
void epilogue(const float* acc, float* c, int ldc, int mr, int nr, float alpha, float beta) {
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int i = 0; i < mr; ++i) {
    float* ci = c + std::size_t(i) * ldc;
    for (int h = 0; h < nr; h += 16) {
      const int n = std::min(16, nr - h);
      const __mmask16 m = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
      __m512 r = _mm512_mul_ps(va, _mm512_loadu_ps(acc + i * kTN + h));
      if (beta != 0.f) r = _mm512_add_ps(r, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, ci + h)));
      _mm512_mask_storeu_ps(ci + h, m, r);
    }
  }
}

// dst [32][Kp] = rows i0 .. i0+31 of A [M, K], row i at bits + row(i)·ld (row(i) = rows ? rows[i]
// : i), zero past M and K.
void stage_a_rows(uint16_t* dst, int Kp, const uint16_t* bits, int ld, const int32_t* rows, int M,
                  int K, int i0) {
  for (int r = 0; r < kTM; ++r) {
    uint16_t* d = dst + std::size_t(r) * Kp;
    const int i = i0 + r;
    if (i < M) {
      std::memcpy(d, bits + std::size_t(rows ? rows[i] : i) * ld, std::size_t(K) * 2);
      std::fill(d + K, d + Kp, uint16_t(0));
    } else {
      std::fill(d, d + Kp, uint16_t(0));
    }
  }
}

// dst [32][Kp] = op(A) rows i0 .. i0+31 for a transposed A ([K, lda]: op(A)[i, k] = A[k, i]),
// zero past K and M: 16 pair steps at a time, rows 2p and 2p+1 of A interleaved into
// [16 steps][32 rows] pairs, then each 16 × 16 block of 32-bit pairs transposed in registers into
// 16 rows × 16 steps.
void pack_a_trans(uint16_t* dst, int Kp, const uint16_t* A, int lda, int M, int K, int i0) {
  alignas(64) uint32_t steps[16][kTM];
  uint32_t* d32 = reinterpret_cast<uint32_t*>(dst);  // Kp/2 pairs per row
  const int Pp = Kp / 2, m = std::min(kTM, M - i0);
  for (int p0 = 0; p0 < Pp; p0 += 16) {
    const uint16_t* rows[32];
    for (int r = 0; r < 32; ++r) {
      const int k = 2 * p0 + r;
      rows[r] = k < K ? A + std::size_t(k) * lda + i0 : nullptr;
    }
    pack_row_pairs_avx512(reinterpret_cast<uint16_t*>(steps), 0, rows, m, kTM, 0, 16);
    for (int h = 0; h < kTM; h += 16) {
      __m512 r[16];
      for (int j = 0; j < 16; ++j) r[j] = _mm512_castsi512_ps(_mm512_load_si512(steps[j] + h));
      kernels_detail::transpose16(r);
      for (int i = 0; i < 16; ++i)
        _mm512_storeu_si512(d32 + std::size_t(h + i) * Pp + p0, _mm512_castps_si512(r[i]));
    }
  }
}

template <class T>
void gemm_tiles(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  const int Kp = (K + kTK - 1) / kTK * kTK, P = (K + 1) / 2, Pp = Kp / 2;
  const int nb = (N + kTN - 1) / kTN, mb = (M + kTM - 1) / kTM;
  const std::size_t b_panel = std::size_t(Pp) * kTN * 2, a_block = std::size_t(kTM) * Kp;
  // An untransposed A with K a multiple of kTK is read in place, except a last partial block.
  const bool inplace = !trans_a && K % kTK == 0;
  const int packed_blocks = inplace ? (M % kTM ? 1 : 0) : mb;
  thread_local Scratch<uint16_t> b_scratch, a_scratch;
  uint16_t* bp = b_scratch.get(nb * b_panel);
  uint16_t* ap = a_scratch.get(packed_blocks * a_block);
  const int chunks = (P + kChunk - 1) / kChunk;
  const int b_items = trans_b ? nb : chunks;
  auto pack_b = [&](int it) {
    if (trans_b) {
      const int j0 = it * kTN;
      uint16_t* d = bp + it * b_panel;
      pack_cols_avx512(d, B, ldb, K, j0, std::min(kTN, N - j0), kTN);
      std::fill(d + std::size_t(P) * kTN * 2, d + b_panel, uint16_t(0));
    } else {
      const int p0 = it * kChunk, p1 = std::min(P, p0 + kChunk);
      pack_pairs_of_rows(bp, b_panel, B, ldb, K, N, kTN, p0, p1);
      if (it == chunks - 1)  // the zero steps P .. Pp−1 of every panel
        for (int j = 0; j < nb; ++j)
          std::fill(bp + j * b_panel + std::size_t(P) * kTN * 2, bp + (j + 1) * b_panel,
                    uint16_t(0));
    }
  };
  auto pack_a = [&](int it) {
    const int i0 = inplace ? (mb - 1) * kTM : it * kTM;
    uint16_t* d = ap + it * a_block;
    if (trans_a)
      pack_a_trans(d, Kp, A, lda, M, K, i0);
    else
      stage_a_rows(d, Kp, A, lda, nullptr, M, K, i0);
  };
  const int groups = (nb + kGroup - 1) / kGroup;
  auto item = [&](int t, float* acc) {
    const int ib = t / groups, j_begin = (t % groups) * kGroup;
    const int i0 = ib * kTM, mr = std::min(kTM, M - i0);
    const uint16_t* a;
    std::size_t a_ld;
    if (inplace && mr == kTM) {
      a = A + std::size_t(i0) * lda;
      a_ld = std::size_t(lda);
    } else {
      a = ap + (inplace ? 0 : ib) * a_block;
      a_ld = std::size_t(Kp);
    }
    for (int jb = j_begin; jb < std::min(nb, j_begin + kGroup); ++jb) {
      const int j0 = jb * kTN;
      const uint16_t* b = bp + jb * b_panel;
      block_32x32<T>(
          a, a_ld, [b](int k) { return b + std::size_t(k / 2) * kTN * 2; }, Kp, acc);
      epilogue(acc, C + std::size_t(i0) * ldc + j0, ldc, mr, std::min(kTN, N - j0), alpha, beta);
    }
  };
  const TileConfig cfg = block_config();
  if (in_parallel() || max_threads() == 1 || double(M) * N * K < double(1 << 18)) {
    alignas(64) float acc[kTM * kTN];
    for (int it = 0; it < b_items; ++it) pack_b(it);
    for (int it = 0; it < packed_blocks; ++it) pack_a(it);
    T::config(cfg);
    for (int t = 0; t < mb * groups; ++t) item(t, acc);
    T::release();
    return;
  }
#pragma omp parallel
  {
    alignas(64) float acc[kTM * kTN];
#pragma omp for schedule(static)
    for (int it = 0; it < b_items; ++it) pack_b(it);
#pragma omp for schedule(static)
    for (int it = 0; it < packed_blocks; ++it) pack_a(it);
    T::config(cfg);  // per thread: the configuration is thread state
#pragma omp for schedule(dynamic)
    for (int t = 0; t < mb * groups; ++t) item(t, acc);
    T::release();
  }
}

// ---- The expert panels (grouped_gemm_bf16.cpp) on the same tile program.

constexpr int kPanelRows = 12;  // rows of the expert packer's A panels (its microkernel's rows)

// dst [32][Kp] = rows i0 .. i0+31 of A [M, K] held as 12-row panels Ap [⌈M/12⌉][P][12][2]
// (row i's pair p at Ap + ((i/12)·P + p)·24 + (i%12)·2), zero past M and past P: per panel and
// 16 steps, the steps' 12 pairs (16 lanes, 4 zero) transposed in registers into 12 rows' pairs.
void stage_a_panels(uint16_t* dst, int Kp, const uint16_t* Ap, int P, int M, int i0) {
  uint32_t* d32 = reinterpret_cast<uint32_t*>(dst);
  const int Pp = Kp / 2, i1 = std::min(M, i0 + kTM);
  for (int r = i1 - i0; r < kTM; ++r) std::fill(d32 + std::size_t(r) * Pp, d32 + (r + 1) * Pp, 0u);
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(Ap);
  for (int pb = i0 / kPanelRows; pb * kPanelRows < i1; ++pb) {
    const uint32_t* panel = a32 + std::size_t(pb) * P * kPanelRows;
    for (int p0 = 0; p0 < Pp; p0 += 16) {
      __m512 r[16];
      for (int j = 0; j < 16; ++j)
        r[j] = p0 + j < P ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(
                                __mmask16(0x0fff), panel + std::size_t(p0 + j) * kPanelRows))
                          : _mm512_setzero_ps();
      kernels_detail::transpose16(r);
      for (int l = 0; l < kPanelRows; ++l) {
        const int i = pb * kPanelRows + l;
        if (i < i0 || i >= i1) continue;
        _mm512_storeu_si512(d32 + std::size_t(i - i0) * Pp + p0, _mm512_castps_si512(r[l]));
      }
    }
  }
}

template <class T>
void panel_tiles(int M, int N, int K, const uint16_t* Ap, const uint16_t* a_bits, int a_ld,
                 const int32_t* a_rows, const uint16_t* Bp, float* C, int ldc, bool accumulate) {
  const int P = (K + 1) / 2, Kp = (K + kTK - 1) / kTK * kTK;
  const int nb = (N + kTN - 1) / kTN, mb = (M + kTM - 1) / kTM, groups = (nb + kGroup - 1) / kGroup;
  const float beta = accumulate ? 1.f : 0.f;
  // One item: 32 rows of A staged (per thread), against up to kGroup B panels. The panels hold
  // P steps, not a multiple of 16: a last partial chunk of steps is copied into a zeroed buffer.
  auto item = [&](int t, int j_count, uint16_t* a, uint32_t* tail, float* acc) {
    const int ib = t / groups, j_begin = (t % groups) * kGroup, i0 = ib * kTM;
    if (a_bits)
      stage_a_rows(a, Kp, a_bits, a_ld, a_rows, M, K, i0);
    else
      stage_a_panels(a, Kp, Ap, P, M, i0);
    for (int jb = j_begin; jb < std::min(nb, j_begin + j_count); ++jb) {
      const uint16_t* b = Bp + std::size_t(jb) * P * kTN * 2;
      auto bchunk = [&](int k) -> const uint16_t* {
        const int p0 = k / 2;
        if (p0 + 16 <= P) return b + std::size_t(p0) * kTN * 2;
        std::memset(tail, 0, 16 * kTN * 4);
        std::memcpy(tail, b + std::size_t(p0) * kTN * 2, std::size_t(P - p0) * kTN * 4);
        return reinterpret_cast<const uint16_t*>(tail);
      };
      block_32x32<T>(a, std::size_t(Kp), bchunk, Kp, acc);
      const int j0 = jb * kTN;
      epilogue(acc, C + std::size_t(i0) * ldc + j0, ldc, std::min(kTM, M - i0),
               std::min(kTN, N - j0), 1.f, beta);
    }
  };
  thread_local Scratch<uint16_t> a_scratch;
  const TileConfig cfg = block_config();
  const bool par = !in_parallel() && max_threads() > 1 && mb * groups > 1 &&
                   double(M) * N * K >= double(1 << 22);
  if (!par) {  // every panel per staged block of A
    alignas(64) float acc[kTM * kTN];
    alignas(64) uint32_t tail[16 * kTN];
    uint16_t* a = a_scratch.get(std::size_t(kTM) * Kp);
    T::config(cfg);
    for (int ib = 0; ib < mb; ++ib) item(ib * groups, nb, a, tail, acc);
    T::release();
    return;
  }
#pragma omp parallel
  {
    alignas(64) float acc[kTM * kTN];
    alignas(64) uint32_t tail[16 * kTN];
    uint16_t* a = a_scratch.get(std::size_t(kTM) * Kp);  // this thread's own
    T::config(cfg);
#pragma omp for schedule(dynamic)
    for (int t = 0; t < mb * groups; ++t) item(t, kGroup, a, tail, acc);
    T::release();
  }
}

}  // namespace

void gemm_amx(bool hardware, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const uint16_t* A, int lda, const uint16_t* B, int ldb, float beta, float* C,
              int ldc) {
  if (hardware)
    gemm_tiles<HwTiles>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_tiles<ModelTiles>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void panel_gemm_amx(bool hardware, int M, int N, int K, const uint16_t* Ap, const uint16_t* a_bits,
                    int a_ld, const int32_t* a_rows, const uint16_t* Bp, float* C, int ldc,
                    bool accumulate) {
  if (hardware)
    panel_tiles<HwTiles>(M, N, K, Ap, a_bits, a_ld, a_rows, Bp, C, ldc, accumulate);
  else
    panel_tiles<ModelTiles>(M, N, K, Ap, a_bits, a_ld, a_rows, Bp, C, ldc, accumulate);
}

#pragma GCC diagnostic pop
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

}  // namespace moe::bf16k
