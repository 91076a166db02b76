// libxsmm_gemm_bf16: libxsmm's bf16 GEMM kernels on one product shape of bf16 training, measured
// by the rule of `moe bench gemm-bf16` (one warm-up call, then the median of --repeats calls), so
// docs/KERNELS.md can put the library beside our kernel (include/moe/kernels/gemm_bf16.h) and
// oneDNN (tools/onednn_ref/onednn_gemm_bf16.cpp). moe never links libxsmm; this tool is built by
// `cmake --build build --target libxsmm_gemm_bf16` (needs libxsmm-dev).
//
//   C[M, N] (f32) = op(A)[M, K] · op(B)[K, N],  A, B bf16 row-major; op = transpose with --ta/--tb
//
// libxsmm 1.17 has no general bf16 GEMM: libxsmm_bsgemm, its BLAS-style entry, JITs small shapes
// only and wants A in VNNI form; above its size threshold it falls back to a reference loop
// (0.4 GFLOP/s on the dense model's shapes here, and wrong values with plain row-major operands).
// What its own deep-learning layers are built on is the JIT batch-reduce microkernel
// (libxsmm_bsmmdispatch_reducebatch_strd), so that is what this tool times, under a driver as a
// library user would write one: in libxsmm's column-major terms Cᵀ [N, M] = op(B)ᵀ · op(A)ᵀ, where
// op(B)ᵀ must be in VNNI form — pairs along K, i.e. exactly our B panels [⌈K/2⌉][32][2] (packed
// by our packers, bf16k::pack_cols_avx512 / pack_pairs_of_rows, so both sides pay the same
// packing) — and op(A)ᵀ is op(A)'s rows, read in place when A is untransposed and K is a multiple
// of the K chunk, otherwise transposed by libxsmm_otrans or copied into a zero-padded buffer.
// OpenMP over 32-column × kBn-row tiles of C; per tile one batch-reduce call over all K chunks.
// The result is checked against gemm_bf16_reference (relative max error printed; a wrong result
// makes the tool fail). Values: N(0,1) for A, N(0, 0.02²) for B, rounded to bf16.
// Usage: libxsmm_gemm_bf16 --m M --n N --k K [--ta 0|1] [--tb 0|1] [--repeats 5]
// Prints one JSON line: {"m", "n", "k", "ta", "tb", "arch", "threads", "gflops", "ms",
// "max_error"}.
#include <libxsmm.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../../src/kernels/gemm_bf16_internal.h"
#include "../common/gemm_ref_cli.h"
#include "moe/core/half.h"
#include "moe/kernels/gemm_bf16.h"

namespace {

using gemm_ref::Args;

// Tile sizes: kBm is our panels' width (the VNNI operand); kBn and kKc were chosen on this
// machine (2026-12-07, 2 threads, six of the shapes): kBn 16 / 32 / 64 / 96 / 128 / 192 and kKc
// 32 / 64 / 256, of which kBn 96–192 with kKc 64 were best and within the noise of each other.
constexpr int kBm = 32;   // libxsmm's m: columns of C per tile = our B panel width
constexpr int kBn = 128;  // libxsmm's n: rows of C per tile
constexpr int kKc = 64;   // K values per batch-reduce step

// The brgemm driver (see the header comment).
struct Brgemm {
  const Args& a;
  int Kp, P, nb;
  std::vector<uint16_t> bp, arows;  // B panels [nb][Kp/2][32][2]; op(A) rows [M][Kp] if copied
  std::map<std::pair<int, int>, libxsmm_bsmmfunction_reducebatch_strd> kernels;

  explicit Brgemm(const Args& args) : a(args) {
    Kp = (a.k + kKc - 1) / kKc * kKc;
    P = Kp / 2;
    nb = (a.n + kBm - 1) / kBm;
    bp.assign(std::size_t(nb) * P * kBm * 2, 0);
    if (a.ta || a.k % kKc) arows.assign(std::size_t(a.m) * Kp, 0);
    // All tile shapes (full and edge), dispatched before timing (JIT is cached by libxsmm too).
    for (int w : {kBm, int(a.n % kBm)})
      for (int h : {kBn, int(a.m % kBn)})
        if (w > 0 && h > 0) kernel(w, h);
  }
  libxsmm_bsmmfunction_reducebatch_strd kernel(int w, int h) {
    auto it = kernels.find({w, h});
    if (it != kernels.end()) return it->second;
    const libxsmm_blasint lda = kBm, ldb = arows.empty() ? a.k : Kp, ldc = a.n;
    const float alpha = 1.f, beta = 0.f;
    const int flags = LIBXSMM_GEMM_FLAG_VNNI_A;
    // Strides between consecutive K chunks, in bytes: a chunk of the panel is kKc/2 steps of
    // 32 pairs; of a row, kKc values.
    auto k = libxsmm_bsmmdispatch_reducebatch_strd(
        w, h, kKc, libxsmm_blasint(kKc / 2 * kBm * 2 * 2), libxsmm_blasint(kKc * 2), &lda, &ldb,
        &ldc, &alpha, &beta, &flags, nullptr);
    if (!k) {
      std::fprintf(stderr, "libxsmm_gemm_bf16: no batch-reduce kernel for m=%d n=%d k=%d\n", w, h,
                   kKc);
      std::exit(1);
    }
    kernels[{w, h}] = k;
    return k;
  }
  void run(const uint16_t* A, int lda, const uint16_t* B, int ldb, float* C) {
    const int M = a.m, N = a.n, K = a.k, Pk = (K + 1) / 2;
    const std::size_t panel = std::size_t(P) * kBm * 2;
#pragma omp parallel
    {
      // B panels (our packers), zero past K (the padded steps stay zero from construction).
#pragma omp for schedule(static)
      for (int j = 0; j < nb; ++j) {
        const int j0 = j * kBm, w = std::min(kBm, N - j0);
        if (a.tb) {
          moe::bf16k::pack_cols_avx512(bp.data() + j * panel, B, ldb, K, j0, w, kBm);
        } else {
          for (int p0 = 0; p0 < Pk; p0 += 32)
            moe::bf16k::pack_pairs_of_rows(bp.data() + j * panel, 0, B + j0, ldb, K, w, kBm, p0,
                                           std::min(Pk, p0 + 32));
        }
      }
      // op(A)'s rows: libxsmm's transpose for a transposed A, a row copy when K needs padding.
      if (!arows.empty()) {
        if (a.ta) {
#pragma omp for schedule(static)
          for (int i0 = 0; i0 < M; i0 += 64) {
            const int h = std::min(64, M - i0);
            // A [K, lda] rows i0.. → arows [h rows][Kp]: out(i, k) = A(k, i0 + i).
            libxsmm_otrans(arows.data() + std::size_t(i0) * Kp, A + i0, 2, h, K, lda, Kp);
          }
        } else {
#pragma omp for schedule(static)
          for (int i = 0; i < M; ++i)
            std::memcpy(arows.data() + std::size_t(i) * Kp, A + std::size_t(i) * lda,
                        std::size_t(K) * 2);
        }
      }
      const uint16_t* rows = arows.empty() ? A : arows.data();
      const std::size_t rs = arows.empty() ? std::size_t(lda) : std::size_t(Kp);
      const int mb = (M + kBn - 1) / kBn;
      const unsigned long long count = Kp / kKc;
#pragma omp for schedule(dynamic)
      for (int t = 0; t < mb * nb; ++t) {
        const int i0 = (t / nb) * kBn, j0 = (t % nb) * kBm;
        const int h = std::min(kBn, M - i0), w = std::min(kBm, N - j0);
        const auto k = kernels.at({w, h});
        k(reinterpret_cast<const libxsmm_bfloat16*>(bp.data() + (j0 / kBm) * panel),
          reinterpret_cast<const libxsmm_bfloat16*>(rows + std::size_t(i0) * rs),
          C + std::size_t(i0) * N + j0, &count);
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  const Args a = gemm_ref::parse("libxsmm_gemm_bf16", argc, argv);
  libxsmm_init();
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<uint16_t> A(std::size_t(a.m) * a.k), B(std::size_t(a.k) * a.n);
  for (auto& x : A) x = moe::f32_to_bf16(g(rng));
  for (auto& x : B) x = moe::f32_to_bf16(0.02f * g(rng));
  const int lda = a.ta ? a.m : a.k, ldb = a.tb ? a.k : a.n;
  std::vector<float> ref(std::size_t(a.m) * a.n), C(ref.size());
  moe::gemm_bf16_reference(a.ta, a.tb, a.m, a.n, a.k, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                           ref.data(), a.n);
  double scale = 0;
  for (float r : ref) scale = std::max(scale, double(std::fabs(r)));
  auto max_err = [&] {
    double e = 0;
    for (std::size_t i = 0; i < C.size(); ++i) e = std::max(e, std::fabs(double(C[i]) - ref[i]));
    return e / std::max(scale, 1e-30);
  };

  Brgemm br(a);
  std::fill(C.begin(), C.end(), 0.f);
  auto brgemm = [&] { br.run(A.data(), lda, B.data(), ldb, C.data()); };
  const double t_br = gemm_ref::median_seconds(a.repeats, brgemm);
  const double err_br = max_err();

  const double flop = 2.0 * a.m * a.n * double(a.k);
  std::printf(
      "{\"m\": %d, \"n\": %d, \"k\": %d, \"ta\": %d, \"tb\": %d, \"arch\": \"%s\", "
      "\"threads\": %d, \"gflops\": %.3f, \"ms\": %.4f, \"max_error\": %.3g}\n",
      int(a.m), int(a.n), int(a.k), int(a.ta), int(a.tb), libxsmm_get_target_arch(),
      omp_get_max_threads(), flop / t_br / 1e9, t_br * 1e3, err_br);
  libxsmm_finalize();
  // A wrong product is not a measurement: bf16 products are exact, so f32 sums of K of them are
  // within K·2⁻²⁴ of the scale; 1e-3 leaves room for any summation order.
  if (!(err_br < 1e-3)) {
    std::fprintf(stderr, "libxsmm_gemm_bf16: brgemm result wrong (max error %.3g of scale)\n",
                 err_br);
    return 1;
  }
  return 0;
}
