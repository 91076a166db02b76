// The MoE experts' bf16 products (grouped_gemm_bf16.h): the packers (rounding f32 → bf16 while
// they lay the pairs out), the panel GEMM's two paths, and one expert's fused products.
#include "moe/kernels/grouped_gemm_bf16.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm_bf16_internal.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/core/threading.h"
#include "moe/kernels/cpu_features.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/grouped_gemm.h"

namespace moe {

namespace {

constexpr int kMR = 12;  // rows of an A panel (the microkernel's rows)
constexpr int kNR = 32;  // columns of a B panel (the microkernel's columns)
// Packs and products of fewer multiply-adds than this stay on one thread outside a parallel
// region (a fork/join costs more than it saves).
constexpr double kParallelWork = double(1 << 22);

int pairs(int K) { return (K + 1) / 2; }

// dst[0..n) = round(scale·src[0..n)) (scale applied in f32 first when has_scale).
void round_row(uint16_t* dst, const float* src, int n, const float* scale) {
  if (scale) {
    thread_local bf16k::Scratch<float> t;
    float* s = t.get(std::size_t(n));
    const float f = *scale;
    for (int i = 0; i < n; ++i) s[i] = f * src[i];
    src = s;
  }
  if (cpu_features().avx512) {
    bf16k::round_avx512(dst, src, std::size_t(n));
    return;
  }
  for (int i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

// Source row s of L's storage: p + row(s)·ld, and its scale (null: none).
const float* src_row(const Bf16Src& L, int s) {
  return L.p + std::size_t(L.rows ? L.rows[s] : s) * std::size_t(L.ld);
}
const float* src_scale(const Bf16Src& L, int s) { return L.row_scale ? L.row_scale + s : nullptr; }
// The same row in L.bits (already rounded).
const uint16_t* src_bits_row(const Bf16Src& L, int s) {
  return L.bits + std::size_t(L.rows ? L.rows[s] : s) * std::size_t(L.ld);
}

// K along the storage's rows: logical (k, r) = storage (row k, column r), r < R. Panels of W
// over r: dst[(blk·P + p)·2W + 2j + h] = round(S(2p+h, blk·W + j)), zero past K and R.
// (B untransposed: W = 32, R = N. A transposed: W = 12, R = M.) In chunks of kPackPairs pair
// steps: the chunk's source rows (already rounded: in place; f32: rounded whole into a block of
// rows) go to every panel by bf16k::pack_row_pairs_avx512, panel by panel, so each panel's part
// is written in order from rows in L1. (Interleaving each step's two rows whole into a row of
// pairs, then copying every panel's W pairs out of it, was 9% of an E = 64 bf16 step; row by
// row into every panel at once, consecutive stores were a panel size apart, on a few L1 sets.)
void pack_k_along_rows(uint16_t* dst, int W, int R, int K, const Bf16Src& L) {
  constexpr int kPackPairs = 16;
  const int P = pairs(K), nblk = (R + W - 1) / W, chunks = (P + kPackPairs - 1) / kPackPairs;
  const bool vec = cpu_features().avx512;
  const bool par = !in_parallel() && max_threads() > 1 && double(R) * K >= kParallelWork / 8;
  const std::size_t panel = std::size_t(P) * 2 * W;
  parallel_for_if(chunks, par, [&](int ch) {
    const int p0 = ch * kPackPairs, p1 = std::min(P, p0 + kPackPairs);
    if (vec) {
      const uint16_t* rows[2 * kPackPairs];
      thread_local bf16k::Scratch<uint16_t> buf;
      uint16_t* t = L.bits ? nullptr : buf.get(std::size_t(2 * kPackPairs) * R);
      for (int r = 0; r < 2 * (p1 - p0); ++r) {
        const int k = 2 * p0 + r;
        if (k >= K) {
          rows[r] = nullptr;
        } else if (L.bits) {
          rows[r] = src_bits_row(L, k);
        } else {
          round_row(t + std::size_t(r) * R, src_row(L, k), R, src_scale(L, k));
          rows[r] = t + std::size_t(r) * R;
        }
      }
      bf16k::pack_row_pairs_avx512(dst, panel, rows, R, W, p0, p1);
      return;
    }
    for (int p = p0; p < p1; ++p)
      for (int blk = 0; blk < nblk; ++blk)
        for (int j = 0; j < W; ++j)
          for (int h = 0; h < 2; ++h) {
            const int k = 2 * p + h, r = blk * W + j;
            uint16_t v = 0;
            if (k < K && r < R) {
              if (L.bits) {
                v = src_bits_row(L, k)[r];
              } else {
                const float* sc = src_scale(L, k);
                v = f32_to_bf16(sc ? *sc * src_row(L, k)[r] : src_row(L, k)[r]);
              }
            }
            dst[std::size_t(blk) * panel + (std::size_t(p) * W + j) * 2 + h] = v;
          }
  });
}

// K along the storage's columns: logical (k, r) = storage (row r, column k). Panels of W over
// r: dst[(blk·P + p)·2W + 2j + h] = round(S(blk·W + j, 2p+h)), zero past K and R.
// (A untransposed: W = 12, R = M. B transposed: W = 32, R = N.) Per panel, its w ≤ W rows are
// rounded whole into a block of rows, then transposed into the panel 16 × 16 pairs at a time
// (bf16k::pack_cols_avx512, gemm_bf16's packer); without AVX-512, pair by pair.
void pack_k_along_cols(uint16_t* dst, int W, int R, int K, const Bf16Src& L) {
  const int P = pairs(K), nblk = (R + W - 1) / W;
  const bool vec = cpu_features().avx512;
  const bool par = !in_parallel() && max_threads() > 1 && double(R) * K >= kParallelWork / 8;
  parallel_for_if(nblk, par, [&](int blk) {
    thread_local bf16k::Scratch<uint16_t> buf;
    const std::size_t ld = 2 * std::size_t(P);
    uint16_t* t = buf.get(std::size_t(W) * ld);
    const int r0 = blk * W, w = std::min(W, R - r0);
    uint16_t* d = dst + std::size_t(blk) * P * 2 * W;
    for (int j = 0; j < w; ++j) {
      t[j * ld + ld - 1] = 0;  // the missing half of the last pair when K is odd
      if (L.bits)
        std::memcpy(t + j * ld, src_bits_row(L, r0 + j), std::size_t(K) * 2);
      else
        round_row(t + j * ld, src_row(L, r0 + j), K, src_scale(L, r0 + j));
    }
    if (vec) {
      bf16k::pack_cols_avx512(d, t, int(ld), K, 0, w, W);
      return;
    }
    for (int j = 0; j < W; ++j)
      for (int p = 0; p < P; ++p) {
        uint16_t* o = d + (std::size_t(p) * W + j) * 2;
        if (j < w)
          std::memcpy(o, t + j * ld + 2 * p, 4);
        else
          o[0] = o[1] = 0;
      }
  });
}

// A read in place by the microkernel (panel_product's alternative to a packed A): row i of
// A [M, K] is bits + rows[i]·ld (rows null: bits + i·ld), already rounded; K even.
struct Bf16Rows {
  const uint16_t* bits = nullptr;
  int ld = 0;
  const int32_t* rows = nullptr;
};

// Which kernel runs the panel products for a requested path: the microkernel (avx512bf16), the
// AMX tile program on the hardware or on its model, or the widen fallback.
enum class PanelKernel { kMicro, kAmx, kAmxModel, kWiden };

PanelKernel panel_kernel(Bf16GemmPath path) {
  if (path == Bf16GemmPath::kAuto) path = gemm_bf16_path();
  switch (path) {
    case Bf16GemmPath::kAvx512Bf16:
      return PanelKernel::kMicro;
    case Bf16GemmPath::kAmx:
      return PanelKernel::kAmx;
    case Bf16GemmPath::kAmxModel:
      return PanelKernel::kAmxModel;
    default:
      return PanelKernel::kWiden;
  }
}

// C [M, N] (= or +=) from packed panels on the microkernel, K blocks of kBf16KC pairs in order.
// With Ar.bits set, A is read in place from those rows and Ap is unused. On the amx kernels, the
// AMX tile program on the same operands instead (bf16k::panel_gemm_amx).
void panel_product(int M, int N, int K, const uint16_t* Ap, const uint16_t* Bp, float* C, int ldc,
                   bool accumulate, const Bf16Rows& Ar, PanelKernel kernel) {
  if (kernel == PanelKernel::kAmx || kernel == PanelKernel::kAmxModel)
    return bf16k::panel_gemm_amx(kernel == PanelKernel::kAmx, M, N, K, Ap, Ar.bits, Ar.ld, Ar.rows,
                                 Bp, C, ldc, accumulate);
  const int P = pairs(K), nb = (N + kNR - 1) / kNR, mb = (M + kMR - 1) / kMR;
  constexpr int kMB = 8;  // A panels per block of rows (and per task when shared out)
  const int mg = (mb + kMB - 1) / kMB;
  // One K block: every (B panel, A panel) pair; each C block is written by one task.
  auto block = [&](int p0, int jb, int ib0, int ib1) {
    const int pc = std::min(kBf16KC, P - p0);
    const int kc = p0 + pc == P ? K - 2 * p0 : 2 * pc;  // elements (odd only in the last block)
    const float beta = accumulate || p0 > 0 ? 1.f : 0.f;
    const uint16_t* bp = Bp + (std::size_t(jb) * P + p0) * 2 * kNR;
    const int nr = std::min(kNR, N - jb * kNR);
    for (int ib = ib0; ib < ib1; ++ib) {
      const int mr = std::min(kMR, M - ib * kMR);
      float* c = C + std::size_t(ib) * kMR * ldc + jb * kNR;
      // The C tile two calls ahead, for writing: the microkernel's own prefetch of its tile
      // (issued as its K loop starts) had too little time at K = 128 and on the fresh outputs
      // (gu, ye, u, dX rows), where the products ran ~10% below their rate on hot caches.
      // E = 64 bf16 step, one binary with the distance switched at run time, 8–10 alternating
      // rounds (2026-12-07): none 78.6 / 84.3 ms, one ahead 75.1 / 82.6, two ahead 74.3 / 82.1;
      // E = 8: 129.6, 127.1, 122.0 (6 rounds, a drifting spell).
      if (ib + 2 < ib1) {
        const int mn = std::min(kMR, M - (ib + 2) * kMR);
        for (int i = 0; i < mn; ++i) {
          const float* cn = c + std::size_t(2 * kMR + i) * ldc;
          __builtin_prefetch(cn, 1, 3);
          __builtin_prefetch(cn + 16, 1, 3);
        }
      }
      if (Ar.bits) {
        const uint16_t* row[kMR];
        for (int i = 0; i < kMR; ++i) {
          const int r = ib * kMR + (i < mr ? i : 0);
          row[i] = Ar.bits + std::size_t(Ar.rows ? Ar.rows[r] : r) * Ar.ld + 2 * std::size_t(p0);
        }
        bf16k::micro_rows_12x32(row, bp, kc, c, ldc, mr, nr, 1.f, beta);
        continue;
      }
      const uint16_t* ap = Ap + (std::size_t(ib) * P + p0) * 2 * kMR;
      bf16k::micro_12x32(ap, bp, kc, c, ldc, mr, nr, 1.f, beta);
    }
  };
  const bool par =
      !in_parallel() && max_threads() > 1 && nb * mg > 1 && double(M) * N * K >= kParallelWork;
  if (!par) {
    // Blocks of kMB A panels (96 rows), each against every B panel, as the shared-out tasks: an
    // expert's rows read in place stay in L2 while the B panels pass, instead of all its rows
    // (512 KiB at E = 64, beside its 512 KiB of output) streaming once per B panel. Alternating
    // runs (2026-12-07): E64k8H128 bf16 step mean of 12 79.5 → 77.7 ms, E8k2H1024 ~1%.
    for (int p0 = 0; p0 < P; p0 += kBf16KC)
      for (int ib = 0; ib < mb; ib += kMB)
        for (int jb = 0; jb < nb; ++jb) block(p0, jb, ib, std::min(mb, ib + kMB));
    return;
  }
#pragma omp parallel
  for (int p0 = 0; p0 < P; p0 += kBf16KC) {
    // The implicit barrier at the end of each K block keeps every C element's blocks in order.
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nb * mg; ++t)
      block(p0, t % nb, (t / nb) * kMB, std::min(mb, (t / nb + 1) * kMB));
  }
}

// The widen path: both panels unpacked to f32 (exact), then OpenBLAS sgemm.
void gemm_widen(int M, int N, int K, const uint16_t* Ap, const uint16_t* Bp, float* C, int ldc,
                bool accumulate) {
  thread_local bf16k::Scratch<float> a_buf, b_buf;
  const int P = pairs(K);
  float* a = a_buf.get(std::size_t(M) * K);
  float* b = b_buf.get(std::size_t(K) * N);
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k)
      a[std::size_t(i) * K + k] =
          bf16_to_f32(Ap[(std::size_t(i / kMR) * P + k / 2) * 2 * kMR + (i % kMR) * 2 + k % 2]);
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n)
      b[std::size_t(k) * N + n] =
          bf16_to_f32(Bp[(std::size_t(n / kNR) * P + k / 2) * 2 * kNR + (n % kNR) * 2 + k % 2]);
  gemm<float>(false, false, M, N, K, 1.f, a, K, b, N, accumulate ? 1.f : 0.f, C, ldc);
}

}  // namespace

std::size_t bf16_pack_b_elems(int K, int N) {
  return std::size_t((N + kNR - 1) / kNR) * pairs(K) * 2 * kNR;
}

std::size_t bf16_pack_a_elems(int M, int K) {
  return std::size_t((M + kMR - 1) / kMR) * pairs(K) * 2 * kMR;
}

void bf16_pack_b(uint16_t* Bp, int K, int N, const Bf16Src& L) {
  MOE_CHECK(!L.bits || !L.row_scale, "internal: bf16 pack of rounded bits with a row scale");
  if (L.trans)
    pack_k_along_cols(Bp, kNR, N, K, L);
  else
    pack_k_along_rows(Bp, kNR, N, K, L);
}

void bf16_pack_a(uint16_t* Ap, int M, int K, const Bf16Src& L) {
  MOE_CHECK(!L.bits || !L.row_scale, "internal: bf16 pack of rounded bits with a row scale");
  if (L.trans)
    pack_k_along_rows(Ap, kMR, M, K, L);
  else
    pack_k_along_cols(Ap, kMR, M, K, L);
}

void bf16_panel_gemm(int M, int N, int K, const uint16_t* Ap, const uint16_t* Bp, float* C, int ldc,
                     bool accumulate, Bf16GemmPath path) {
  MOE_CHECK(M >= 0 && N >= 0 && K >= 0 && ldc >= std::max(1, N),
            "bf16_panel_gemm: bad shape M={} N={} K={} ldc={}", M, N, K, ldc);
  MOE_CHECK(bf16_gemm_path_available(path), "bf16_panel_gemm: path {} needs a CPU with AVX512-BF16",
            bf16_gemm_path_name(path));
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int i = 0; i < M; ++i) std::fill_n(C + std::size_t(i) * ldc, N, 0.f);
    return;
  }
  const PanelKernel kernel = panel_kernel(path);
  if (kernel == PanelKernel::kWiden)
    gemm_widen(M, N, K, Ap, Bp, C, ldc, accumulate);
  else
    panel_product(M, N, K, Ap, Bp, C, ldc, accumulate, {}, kernel);
}

// ---- One expert's products.

namespace {

// Whether an A already rounded (bits, K columns) is read in place by the microkernel instead of
// packed: on the avx512bf16 path, K even. (Gathering an expert's token rows into a panel was a
// memcpy per row and a transpose, ~7% of an E = 64 bf16 step; the microkernel broadcasts from
// the rows as gemm_bf16 does from an untransposed A.) The amx kernels copy the rows straight
// into their tile rows instead of going through a panel.
bool rows_in_place(const uint16_t* bits, int K, PanelKernel kernel) {
  return bits && K % 2 == 0 && kernel != PanelKernel::kWiden;
}

}  // namespace

std::size_t bf16_expert_weight_elems(int C, int H, bool gated) {
  const int W1 = gated ? 2 * H : H;
  return bf16_pack_b_elems(C, W1) + bf16_pack_b_elems(H, C) + bf16_pack_b_elems(C, H) +
         bf16_pack_b_elems(W1, C);
}

namespace {

// Both packed B layouts of one f32 matrix S [R, W] (row r at row(r)), from one read of S:
//   tr = pack_b of Sᵀ [W, R] (K = W along S's rows: panels of 32 rows of S),
//   nt = pack_b of S  [R, W] (K = R: pairs of S's rows, panels of 32 columns).
// Per block of 32 rows: rounded into a bf16 block in L1, which is panel r0/32 of tr (transposed
// 16 × 16 pairs at a time) and pair steps r0/2 .. r0/2 + 15 of every panel of nt. Needs
// cpu_features().avx512. (Packing each layout from f32 on its own read the weights twice and
// went through a row buffer: 4.3 ms of an E = 64 bf16 step.) Where the panels are 64-byte
// aligned they are written with non-temporal stores: all experts' panels (24 MiB at E = 64) are
// read only after every expert was packed, so caching them evicted what the packing still read,
// and writing them cached first read each line from memory (64 experts packed: 3.0–3.4 → 1.9–2.1
// ms, 2 threads).
template <typename RowFn>
void pack_both_layouts(uint16_t* tr, uint16_t* nt, int R, int W, const RowFn& row) {
  const std::size_t panel_tr = std::size_t(pairs(W)) * 2 * kNR;
  const std::size_t panel_nt = std::size_t(pairs(R)) * 2 * kNR;
  thread_local bf16k::Scratch<uint16_t> buf;
  uint16_t* t = buf.get(std::size_t(kNR) * W);
  for (int r0 = 0; r0 < R; r0 += kNR) {
    const int w = std::min(kNR, R - r0);
    const uint16_t* rows[kNR];
    for (int i = 0; i < kNR; ++i) {
      rows[i] = i < w ? t + std::size_t(i) * W : nullptr;
      if (i < w) round_row(t + std::size_t(i) * W, row(r0 + i), W, nullptr);
    }
    bf16k::pack_cols_avx512(tr + std::size_t(r0 / kNR) * panel_tr, t, W, W, 0, w, kNR, true);
    bf16k::pack_row_pairs_avx512(nt, panel_nt, rows, W, kNR, r0 / 2, (r0 + w + 1) / 2, true);
  }
}

}  // namespace

Bf16ExpertWeights bf16_pack_expert_weights(uint16_t* dst, const float* wg, const float* wu,
                                           const float* wd, int C, int H, bool gated) {
  const int W1 = gated ? 2 * H : H;
  Bf16ExpertWeights w;
  uint16_t* at = dst;
  auto take = [&](std::size_t n) {
    uint16_t* p = at;
    at += n;
    return p;
  };
  uint16_t* first_t = take(bf16_pack_b_elems(C, W1));
  uint16_t* down_t = take(bf16_pack_b_elems(H, C));
  uint16_t* down = take(bf16_pack_b_elems(C, H));
  uint16_t* first_n = take(bf16_pack_b_elems(W1, C));
  w.first_t = first_t;
  w.down_t = down_t;
  w.down = down;
  w.first = first_n;
  // [W_gate; W_up] [W1, C]: the two are separate parameters.
  auto first_row = [&](int r) {
    return r < W1 - H ? wg + std::size_t(r) * C : wu + std::size_t(r - (W1 - H)) * C;
  };
  if (cpu_features().avx512) {
    pack_both_layouts(first_t, first_n, W1, C, first_row);
    pack_both_layouts(down_t, down, C, H, [&](int r) { return wd + std::size_t(r) * H; });
    bf16k::store_fence();
    return w;
  }
  // Without AVX-512: [W_gate; W_up] in one f32 copy, each layout packed on its own.
  thread_local bf16k::Scratch<float> stack;
  float* first = stack.get(std::size_t(W1) * C);
  for (int r = 0; r < W1; ++r) std::copy_n(first_row(r), C, first + std::size_t(r) * C);
  bf16_pack_b(first_t, C, W1, {first, C, true});
  bf16_pack_b(down_t, H, C, {wd, H, true});
  bf16_pack_b(down, C, H, {wd, H, false});
  bf16_pack_b(first_n, W1, C, {first, C, false});
  return w;
}

std::size_t bf16_expert_scratch_a(int max_rows, int C, int H, bool gated) {
  const int m = max_rows, W1 = gated ? 2 * H : H;
  return std::max({bf16_pack_a_elems(m, C), bf16_pack_a_elems(m, H), bf16_pack_a_elems(C, m),
                   bf16_pack_a_elems(H, m), bf16_pack_a_elems(m, W1)});
}

std::size_t bf16_expert_scratch_b(int max_rows, int C, int H) {
  return std::max(bf16_pack_b_elems(max_rows, H), bf16_pack_b_elems(max_rows, C));
}

void bf16_first_forward(float* gu, const float* X, const int32_t* rows, const Bf16ExpertWeights& w,
                        int m, int C, int H, bool gated, const Bf16ExpertScratch& s,
                        Bf16GemmPath path, const uint16_t* Xb) {
  const int W1 = gated ? 2 * H : H;
  const PanelKernel kernel = panel_kernel(path);
  if (rows_in_place(Xb, C, kernel)) {
    panel_product(m, W1, C, nullptr, w.first_t, gu, W1, false, {Xb, C, rows}, kernel);
    return;
  }
  bf16_pack_a(s.a, m, C, {X, C, false, rows, nullptr, Xb});
  bf16_panel_gemm(m, W1, C, s.a, w.first_t, gu, W1, false, path);
}

void bf16_down_forward(float* ye, const float* hid, const Bf16ExpertWeights& w, int m, int C, int H,
                       const Bf16ExpertScratch& s, Bf16GemmPath path, const uint16_t* hidb) {
  const PanelKernel kernel = panel_kernel(path);
  if (rows_in_place(hidb, H, kernel)) {
    panel_product(m, C, H, nullptr, w.down_t, ye, C, false, {hidb, H, nullptr}, kernel);
    return;
  }
  bf16_pack_a(s.a, m, H, {hid, H, false, nullptr, nullptr, hidb});
  bf16_panel_gemm(m, C, H, s.a, w.down_t, ye, C, false, path);
}

void bf16_down_backward(float* dwd, float* hid, const float* d, const int32_t* rows,
                        const float* gate, float* dgate, const Bf16ExpertWeights& w, int m, int C,
                        int H, const Bf16ExpertScratch& s, float* u, Bf16GemmPath path,
                        const uint16_t* dyb) {
  // dW_down [C, H] += d(ye)ᵀ·hid with d(ye) = gate·dy[rows] (fused: the gate goes on hid's rows,
  // where it multiplies the same terms) or d.
  bf16_pack_b(s.b, m, H, {hid, H, false, nullptr, rows ? gate : nullptr});
  bf16_pack_a(s.a, C, m, {d, C, true, rows, nullptr, dyb});
  bf16_panel_gemm(C, H, m, s.a, s.b, dwd, H, true, path);
  if (const PanelKernel kernel = panel_kernel(path); rows_in_place(dyb, C, kernel)) {
    panel_product(m, H, C, nullptr, w.down, rows ? u : hid, H, false, {dyb, C, rows}, kernel);
  } else {
    bf16_pack_a(s.a, m, C, {d, C, false, rows, nullptr, dyb});
    bf16_panel_gemm(m, H, C, s.a, w.down, rows ? u : hid, H, false, path);
  }
  if (!rows) return;
  gate_split_backward(hid, dgate, u, gate, m, H);
}

void bf16_first_backward(float* dX, float* dwg, float* dwu, const float* dgu, const float* X,
                         const int32_t* rows, const Bf16ExpertWeights& w, int m, int C, int H,
                         bool gated, bool accumulate, const Bf16ExpertScratch& s, Bf16GemmPath path,
                         const uint16_t* Xb, const uint16_t* dgub) {
  const int W1 = gated ? 2 * H : H;
  // dgu's columns from c0: f32, or its rounded bits.
  auto dgu_src = [&](int c0, bool trans) {
    return dgub ? Bf16Src{nullptr, W1, trans, nullptr, nullptr, dgub + c0}
                : Bf16Src{dgu + c0, W1, trans};
  };
  bf16_pack_b(s.b, m, C, {X, C, false, rows, nullptr, Xb});
  if (gated) {
    bf16_pack_a(s.a, H, m, dgu_src(0, true));
    bf16_panel_gemm(H, C, m, s.a, s.b, dwg, C, true, path);
  }
  bf16_pack_a(s.a, H, m, dgu_src(W1 - H, true));
  bf16_panel_gemm(H, C, m, s.a, s.b, dwu, C, true, path);
  if (const PanelKernel kernel = panel_kernel(path); rows_in_place(dgub, W1, kernel)) {
    panel_product(m, C, W1, nullptr, w.first, dX, C, accumulate, {dgub, W1, nullptr}, kernel);
    return;
  }
  bf16_pack_a(s.a, m, W1, dgu_src(0, false));
  bf16_panel_gemm(m, C, W1, s.a, w.first, dX, C, accumulate, path);
}

}  // namespace moe
