// gemm_bf16: the run-time choice of path, the widen fallback (f32 copies + OpenBLAS sgemm), the
// scalar reference and the f32 ↔ bf16 array conversions. The AVX512-BF16 path lives in
// gemm_bf16_avx512.cpp.
#include "moe/kernels/gemm_bf16.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "gemm_bf16_internal.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/core/threading.h"
#include "moe/kernels/cpu_features.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/grouped_gemm_bf16.h"

namespace moe {

namespace {

// Conversions of more than this many values split over the OpenMP threads (outside a parallel
// region); below it a fork/join costs more than it saves.
constexpr std::size_t kParallelConvert = std::size_t(1) << 16;

// X [rows, ld ≥ cols] bf16 → dst [rows, cols] f32 (exact).
void widen_matrix(float* dst, const uint16_t* X, int rows, int cols, int ld) {
#pragma omp parallel for schedule(static) if (std::size_t(rows) * cols >= kParallelConvert)
  for (int r = 0; r < rows; ++r)
    widen_bf16(dst + std::size_t(r) * cols, X + std::size_t(r) * ld, std::size_t(cols));
}

// The stored shape of op(X) = [r, c]: X is [r, ·] untransposed, [c, ·] transposed.
void gemm_widen(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
                int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc) {
  thread_local bf16k::Scratch<float> a_scratch, b_scratch;  // the f32 copies
  const int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
  const int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
  float* a = a_scratch.get(std::size_t(a_rows) * a_cols);
  float* b = b_scratch.get(std::size_t(b_rows) * b_cols);
  widen_matrix(a, A, a_rows, a_cols, lda);
  widen_matrix(b, B, b_rows, b_cols, ldb);
  gemm<float>(trans_a, trans_b, M, N, K, alpha, a, a_cols, b, b_cols, beta, C, ldc);
}

// C = beta·C (beta = 0 writes zeros without reading C): the whole product when alpha = 0 or K = 0.
void scale_c(int M, int N, float beta, float* C, int ldc) {
  for (int i = 0; i < M; ++i) {
    float* c = C + std::size_t(i) * ldc;
    for (int j = 0; j < N; ++j) c[j] = beta == 0.f ? 0.f : beta * c[j];
  }
}

}  // namespace

const char* bf16_gemm_path_name(Bf16GemmPath p) {
  switch (p) {
    case Bf16GemmPath::kAuto:
      return "auto";
    case Bf16GemmPath::kAvx512Bf16:
      return "avx512bf16";
    case Bf16GemmPath::kWiden:
      return "widen";
    case Bf16GemmPath::kAmx:
      return "amx";
    case Bf16GemmPath::kAmxModel:
      return "amx-model";
  }
  return "?";
}

bool bf16_gemm_path_available(Bf16GemmPath p) {
  switch (p) {
    case Bf16GemmPath::kAvx512Bf16:
      return cpu_features().avx512_bf16;
    case Bf16GemmPath::kAmx:
      return cpu_features().amx_usable;
    case Bf16GemmPath::kAmxModel:
      return cpu_features().avx512;  // its packers and epilogue
    default:
      return true;
  }
}

namespace {
std::atomic<Bf16GemmPath> g_scoped_path{Bf16GemmPath::kAuto};  // kAuto: none
}  // namespace

ScopedBf16GemmPath::ScopedBf16GemmPath(Bf16GemmPath path) {
  MOE_CHECK(bf16_gemm_path_available(path), "ScopedBf16GemmPath: path {} is not available ({})",
            bf16_gemm_path_name(path), cpu_features_string());
  saved_ = g_scoped_path.exchange(path);
}

ScopedBf16GemmPath::~ScopedBf16GemmPath() { g_scoped_path.store(saved_); }

bool bf16_path_self_check(Bf16GemmPath path) {
  MOE_CHECK(path != Bf16GemmPath::kAuto && bf16_gemm_path_available(path),
            "bf16_path_self_check: path {} is not available ({})", bf16_gemm_path_name(path),
            cpu_features_string());
  // M, N past a 32 × 32 block and a 12-row panel, K odd and past a 16-pair chunk; values in
  // [−3, 3]: |partial sums| ≤ 9·K, integers, exact in f32 in any order.
  const int M = 45, N = 50, K = 71, Ke = 70;  // Ke: the even K of A's rows read in place
  auto value = [](int i, int salt) { return float((i * 7 + salt * 3 + (i / 5) % 4) % 7 - 3); };
  std::vector<float> af(std::size_t(M) * K), bf(std::size_t(K) * N);
  for (std::size_t i = 0; i < af.size(); ++i) af[i] = value(int(i), 1);
  for (std::size_t i = 0; i < bf.size(); ++i) bf[i] = value(int(i), 2);
  std::vector<uint16_t> a(af.size()), b(bf.size());
  for (std::size_t i = 0; i < af.size(); ++i) a[i] = f32_to_bf16(af[i]);
  for (std::size_t i = 0; i < bf.size(); ++i) b[i] = f32_to_bf16(bf[i]);
  std::vector<float> want(std::size_t(M) * N), got(want.size());
  auto same = [&] { return want == got; };  // integers: equal values are equal bits (or ±0)
  // gemm_bf16: a and b read as [M, K]·[K, N] or, transposed, as [K, M] and [N, K] (the same
  // values in another order: what matters is that both sides read them alike).
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    const int lda = ta ? M : K, ldb = tb ? K : N;
    for (std::size_t i = 0; i < got.size(); ++i) want[i] = got[i] = value(int(i), 3);
    gemm_bf16_reference(ta, tb, M, N, K, 1.f, a.data(), lda, b.data(), ldb, 1.f, want.data(), N);
    gemm_bf16(ta, tb, M, N, K, 1.f, a.data(), lda, b.data(), ldb, 1.f, got.data(), N, path);
    if (!same()) return false;
  }
  // The expert panels: packed A and B, written then accumulated.
  std::vector<uint16_t> ap(bf16_pack_a_elems(M, K)), bp(bf16_pack_b_elems(K, N));
  bf16_pack_a(ap.data(), M, K, {af.data(), K});
  bf16_pack_b(bp.data(), K, N, {bf.data(), N});
  for (const bool acc : {false, true}) {
    gemm_bf16_reference(false, false, M, N, K, 1.f, a.data(), K, b.data(), N, acc ? 1.f : 0.f,
                        want.data(), N);
    bf16_panel_gemm(M, N, K, ap.data(), bp.data(), got.data(), N, acc, path);
    if (!same()) return false;
  }
  // A's rows in place (the products of rounded rows: bf16_down_forward with hidb), [M, Ke].
  std::vector<uint16_t> be(bf16_pack_b_elems(Ke, N));
  bf16_pack_b(be.data(), Ke, N, {bf.data(), N});
  std::vector<uint16_t> scratch_a(bf16_expert_scratch_a(M, N, Ke, false)),
      scratch_b(bf16_expert_scratch_b(M, N, Ke));
  Bf16ExpertWeights w;
  w.down_t = be.data();
  gemm_bf16_reference(false, false, M, N, Ke, 1.f, a.data(), K, b.data(), N, 0.f, want.data(), N);
  std::vector<uint16_t> rows(std::size_t(M) * Ke);
  for (int i = 0; i < M; ++i)
    std::copy_n(a.data() + std::size_t(i) * K, Ke, rows.data() + std::size_t(i) * Ke);
  std::vector<float> rows_f(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) rows_f[i] = bf16_to_f32(rows[i]);
  bf16_down_forward(got.data(), rows_f.data(), w, M, N, Ke, {scratch_a.data(), scratch_b.data()},
                    path, rows.data());
  return same();
}

namespace {

// kAuto's AMX: usable (CPUID, XCR0, the kernel's grant) and its products checked, once.
bool amx_checked() {
  static const bool ok = cpu_features().amx_usable && bf16_path_self_check(Bf16GemmPath::kAmx);
  return ok;
}

}  // namespace

bool amx_refused() { return cpu_features().amx_usable && !amx_checked(); }

Bf16GemmPath gemm_bf16_path() {
  if (const Bf16GemmPath p = g_scoped_path.load(std::memory_order_relaxed);
      p != Bf16GemmPath::kAuto)
    return p;
  const CpuFeatures& f = cpu_features();
  return amx_checked()   ? Bf16GemmPath::kAmx
         : f.avx512_bf16 ? Bf16GemmPath::kAvx512Bf16
                         : Bf16GemmPath::kWiden;
}

Bf16GemmPath bf16_microkernel_path(Bf16GemmPath p) {
  if (p == Bf16GemmPath::kAuto) p = gemm_bf16_path();
  // amx_usable implies AVX512-BF16; the model path may run where it is absent.
  if (p == Bf16GemmPath::kAmx) return Bf16GemmPath::kAvx512Bf16;
  if (p == Bf16GemmPath::kAmxModel)
    return cpu_features().avx512_bf16 ? Bf16GemmPath::kAvx512Bf16 : Bf16GemmPath::kWiden;
  return p;
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A,
               int lda, const uint16_t* B, int ldb, float beta, float* C, int ldc,
               Bf16GemmPath path) {
  MOE_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm_bf16: negative size M={} N={} K={}", M, N, K);
  MOE_CHECK(lda >= std::max(1, trans_a ? M : K) && ldb >= std::max(1, trans_b ? K : N) &&
                ldc >= std::max(1, N),
            "gemm_bf16: leading dimension too small (lda={} ldb={} ldc={} for M={} N={} K={})", lda,
            ldb, ldc, M, N, K);
  MOE_CHECK(bf16_gemm_path_available(path), "gemm_bf16: path {} is not available on this CPU ({})",
            bf16_gemm_path_name(path), cpu_features_string());
  if (M == 0 || N == 0) return;
  if (alpha == 0.f || K == 0) return scale_c(M, N, beta, C, ldc);
  if (path == Bf16GemmPath::kAuto) path = gemm_bf16_path();
  if (path == Bf16GemmPath::kAvx512Bf16)
    bf16k::gemm_avx512(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else if (path == Bf16GemmPath::kAmx || path == Bf16GemmPath::kAmxModel)
    bf16k::gemm_amx(path == Bf16GemmPath::kAmx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb,
                    beta, C, ldc);
  else
    gemm_widen(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_bf16_reference(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                         const uint16_t* A, int lda, const uint16_t* B, int ldb, float beta,
                         float* C, int ldc) {
  // op(A)[i,k] · op(B)[k,j], each product exact; summed in double (exact to 2⁻⁵³ relative).
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) {
        const uint16_t a = trans_a ? A[std::size_t(k) * lda + i] : A[std::size_t(i) * lda + k];
        const uint16_t b = trans_b ? B[std::size_t(j) * ldb + k] : B[std::size_t(k) * ldb + j];
        s += double(bf16_to_f32(a)) * double(bf16_to_f32(b));
      }
      float& c = C[std::size_t(i) * ldc + j];
      const double old = beta == 0.f ? 0.0 : double(beta) * double(c);
      c = float((alpha == 0.f ? 0.0 : double(alpha) * s) + old);
    }
}

void round_to_bf16(uint16_t* dst, const float* src, std::size_t n) {
  if (!cpu_features().avx512) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
    return;
  }
  // Small or inside a parallel region: no pragma at all (even `if (false)` costs libgomp a team
  // of one per call, a malloc and futex traffic, which dominated attention's per-row rounding).
  if (n < kParallelConvert || in_parallel()) return bf16k::round_avx512(dst, src, n);
  constexpr std::size_t kBlock = std::size_t(1) << 14;
  const std::ptrdiff_t blocks = std::ptrdiff_t((n + kBlock - 1) / kBlock);
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t b = 0; b < blocks; ++b) {
    const std::size_t i0 = std::size_t(b) * kBlock;
    bf16k::round_avx512(dst + i0, src + i0, std::min(kBlock, n - i0));
  }
}

void widen_bf16(float* dst, const uint16_t* src, std::size_t n) {
  if (!cpu_features().avx512) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
    return;
  }
  bf16k::widen_avx512(dst, src, n);
}

}  // namespace moe
