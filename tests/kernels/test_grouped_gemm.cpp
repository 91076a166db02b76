// kernels/grouped_gemm: panel_gemm (the MoE experts' float GEMM with a packed B) against a
// double-precision loop, on shapes that hit every edge: partial micro-tiles (M not a multiple of
// 12), a partial last panel (N not a multiple of 32), k passes split at 256, both ways of reading
// A, overwrite and accumulate, and packed Bs stacked from two sources along K and along N (the
// layer's [W_gate; W_up]). Tolerance: a float sum of K products of O(1) values, rounded at each
// step, is within ~K·2⁻²⁴·Σ|a·b| of the exact one; we allow 4·K·2⁻²⁴·Σ|a·b| + 1e-6 per element.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "moe/core/arena.h"
#include "moe/core/rng.h"
#include "moe/kernels/grouped_gemm.h"

using namespace moe;

namespace {

std::vector<float> randf(std::size_t n, uint32_t stream) {
  const Rng r(11, stream);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = float(r.normal(i));
  return v;
}

// 64-byte aligned float storage (the packed B is read with aligned loads).
struct Aligned {
  explicit Aligned(std::size_t n) : arena(n * sizeof(float) + kAlign), p(arena.take<float>(n)) {}
  Arena arena;
  float* p;
};

struct Case {
  int M, N, K;
  bool a_trans, accumulate;
};

// A row permutation-with-repeats of [0, big): the rows an expert picks from the token matrix.
std::vector<int32_t> pick(int n, int big, uint32_t seed) {
  std::vector<int32_t> r(n);
  for (int i = 0; i < n; ++i) r[i] = int32_t((uint64_t(i) * 7919 + seed * 31) % uint64_t(big));
  return r;
}

void check(const Case& c, bool b_trans, bool split_k, bool split_n, bool indexed = false) {
  SCOPED_TRACE(::testing::Message()
               << "M=" << c.M << " N=" << c.N << " K=" << c.K << " a_trans=" << c.a_trans
               << " acc=" << c.accumulate << " b_trans=" << b_trans << " split_k=" << split_k
               << " split_n=" << split_n << " indexed=" << indexed);
  const int M = c.M, N = c.N, K = c.K;
  // A: [M, K] row-major, or [K, M] read as A(i, k) = A[k·M + i]; lda = the row length + 3 so
  // a wrong stride cannot pass. Indexed: the rows (of A, or of Aᵀ's source) are picked from a
  // matrix of 2·(rows) + 5 rows.
  const int lda = (c.a_trans ? M : K) + 3;
  const int a_src_rows = c.a_trans ? K : M, a_big = indexed ? 2 * a_src_rows + 5 : a_src_rows;
  const std::vector<float> A = randf(std::size_t(a_big) * lda, 1);
  std::vector<int32_t> a_rows = pick(a_src_rows, a_big, 4);
  if (!indexed)
    for (int i = 0; i < a_src_rows; ++i) a_rows[i] = i;
  auto a = [&](int i, int k) {
    return c.a_trans ? A[std::size_t(a_rows[k]) * lda + i] : A[std::size_t(a_rows[i]) * lda + k];
  };
  // B as (k, n) → value; its source is [K, N] (ldb = N + 5) or, transposed, [N, K] (ldb = K + 5).
  // Indexed (row-major only): row k is source row b_rows[k] of a larger matrix, times scale[k].
  const int ldb = (b_trans ? K : N) + 5;
  const bool b_idx = indexed && !b_trans;
  const int b_big = b_idx ? 2 * K + 5 : (b_trans ? N : K);
  const std::vector<float> Bs = randf(std::size_t(b_big) * ldb, 2);
  const std::vector<int32_t> b_rows = pick(K, b_big, 9);
  const std::vector<float> scale = randf(K, 5);
  auto b = [&](int k, int n) {
    if (b_idx) return scale[k] * Bs[std::size_t(b_rows[k]) * ldb + n];
    return b_trans ? Bs[std::size_t(n) * ldb + k] : Bs[std::size_t(k) * ldb + n];
  };
  Aligned Bp(panel_b_floats(K, N));
  std::fill(Bp.p, Bp.p + panel_b_floats(K, N), std::nanf(""));  // padding must be written
  auto pack = [&](int k0, int n0, int kn, int nn) {
    if (b_idx) {
      panel_pack_b(Bp.p, K, N, k0, n0, kn, nn, &Bs[n0], ldb, false, &b_rows[k0], &scale[k0]);
      return;
    }
    const float* src = b_trans ? &Bs[std::size_t(n0) * ldb + k0] : &Bs[std::size_t(k0) * ldb + n0];
    panel_pack_b(Bp.p, K, N, k0, n0, kn, nn, src, ldb, b_trans);
  };
  const int ks = split_k ? K / 3 : K, ns = split_n ? N / 2 + 1 : N;  // ns deliberately unaligned
  for (int k0 = 0; k0 < K; k0 += std::max(ks, 1)) {
    const int kn = std::min(std::max(ks, 1), K - k0);
    if (ns < N) {
      pack(k0, 0, kn, ns);
      pack(k0, ns, kn, N - ns);
    } else {
      pack(k0, 0, kn, N);
    }
  }
  const int ldc = N + 2;
  std::vector<float> C = randf(std::size_t(M) * ldc, 3), C0 = C;
  Aligned apack(panel_a_floats(M));
  panel_gemm(M, N, K, A.data(), lda, c.a_trans, Bp.p, C.data(), ldc, c.accumulate, apack.p,
             indexed ? a_rows.data() : nullptr);
  int bad = 0;
  for (int i = 0; i < M; ++i) {
    for (int n = 0; n < N; ++n) {
      double ref = c.accumulate ? C0[std::size_t(i) * ldc + n] : 0.0, mag = std::fabs(ref);
      for (int k = 0; k < K; ++k) {
        ref += double(a(i, k)) * b(k, n);
        mag += std::fabs(double(a(i, k)) * b(k, n));
      }
      const double tol = 4.0 * K * std::ldexp(1.0, -24) * mag + 1e-6;
      if (!(std::fabs(C[std::size_t(i) * ldc + n] - ref) <= tol) && ++bad <= 5)
        ADD_FAILURE() << "C(" << i << "," << n << ") = " << C[std::size_t(i) * ldc + n]
                      << ", expected " << ref;
    }
    // Columns past N (ldc padding) are never written.
    for (int n = N; n < ldc; ++n)
      ASSERT_EQ(C[std::size_t(i) * ldc + n], C0[std::size_t(i) * ldc + n]) << "row " << i;
  }
  EXPECT_EQ(bad, 0);
}

}  // namespace

TEST(GroupedGemm, MatchesDoubleLoopOnEdgeShapes) {
  const Case cases[] = {
      {1, 1, 1, false, false},    {12, 32, 256, false, false}, {13, 33, 257, false, true},
      {11, 31, 255, true, false}, {25, 64, 600, true, true},   {50, 100, 40, false, false},
      {37, 96, 513, true, false}, {24, 16, 7, false, true},    {7, 130, 300, true, true},
  };
  for (const Case& c : cases)
    for (bool b_trans : {false, true})
      for (bool split : {false, true}) check(c, b_trans, split && c.K >= 3, split && c.N >= 4);
}

TEST(GroupedGemm, RowsPickedByIndexAndScaled) {
  // The MoE layer's fused path: A's rows (or, transposed, its k rows) taken from the token matrix
  // by index, B's rows by index and scaled by the gates.
  const Case cases[] = {
      {13, 33, 257, false, false}, {11, 31, 255, true, true}, {37, 96, 513, true, false},
      {50, 100, 40, false, true},  {1, 1, 1, false, false},
  };
  for (const Case& c : cases)
    for (bool b_trans : {false, true})
      for (bool split : {false, true})
        check(c, b_trans, split && c.K >= 3, split && c.N >= 4, /*indexed=*/true);
}

TEST(GroupedGemm, StreamedStoresGiveTheSameBits) {
  // stream_c only changes how C's lines are written (streaming stores where a whole aligned
  // 32-column row piece is written once): the same bits as plain stores, for aligned and
  // unaligned C, partial panels, several k passes and accumulation (where it must not apply).
  for (const int N : {96, 100})
    for (const int K : {200, 300})
      for (const int ldc : {128, 131})
        for (const bool acc : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << "N=" << N << " K=" << K << " ldc=" << ldc << " acc=" << acc);
          const int M = 37;
          const std::vector<float> A = randf(std::size_t(M) * K, 7),
                                   Bs = randf(std::size_t(K) * N, 8);
          Aligned Bp(panel_b_floats(K, N));
          panel_pack_b(Bp.p, K, N, 0, 0, K, N, Bs.data(), N, false);
          const std::vector<float> C0 = randf(std::size_t(M) * ldc, 9);
          Aligned plain(C0.size()), streamed(C0.size());
          std::copy(C0.begin(), C0.end(), plain.p);
          std::copy(C0.begin(), C0.end(), streamed.p);
          panel_gemm(M, N, K, A.data(), K, false, Bp.p, plain.p, ldc, acc);
          panel_gemm(M, N, K, A.data(), K, false, Bp.p, streamed.p, ldc, acc, nullptr, nullptr,
                     true);
          for (std::size_t i = 0; i < C0.size(); ++i) ASSERT_EQ(streamed.p[i], plain.p[i]) << i;
        }
}

TEST(GroupedGemm, ZeroKOverwritesOrKeeps) {
  // K = 0: C = 0 (overwrite) or C unchanged (accumulate), as a GEMM with an empty sum.
  std::vector<float> C(6, 2.f);
  Aligned Bp(panel_b_floats(0, 3) + 16);
  panel_gemm(2, 3, 0, nullptr, 1, false, Bp.p, C.data(), 3, true);
  EXPECT_EQ(C, std::vector<float>(6, 2.f));
  panel_gemm(2, 3, 0, nullptr, 1, false, Bp.p, C.data(), 3, false);
  EXPECT_EQ(C, std::vector<float>(6, 0.f));
}

TEST(GroupedGemm, SameBitsForAnyThreadCount) {
  // Called outside a parallel region, the product is shared out among the threads; the bits must
  // not depend on how many (each element is summed over k in order by one thread).
  const int M = 301, N = 130, K = 600;    // big enough to go parallel, with partial tiles/panels
  for (int mode = 0; mode < 3; ++mode) {  // in place; a_trans; rows picked by index
    const bool a_trans = mode == 1, indexed = mode == 2;
    const int a_rows_n = a_trans ? K : M, lda = (a_trans ? M : K) + 1;
    const std::vector<float> A = randf(std::size_t(2 * a_rows_n) * lda, 21);
    const std::vector<int32_t> rows = pick(a_rows_n, 2 * a_rows_n, 3);
    const std::vector<float> B = randf(std::size_t(K) * N, 22);
    Aligned Bp(panel_b_floats(K, N)), apack(panel_a_floats(M));
    panel_pack_b(Bp.p, K, N, 0, 0, K, N, B.data(), N, false);
    std::vector<std::vector<float>> out;
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      std::vector<float> C = randf(std::size_t(M) * N, 23);
      panel_gemm(M, N, K, A.data(), lda, a_trans, Bp.p, C.data(), N, /*accumulate=*/true, apack.p,
                 indexed || a_trans ? rows.data() : nullptr);
      out.push_back(std::move(C));
    }
    omp_set_num_threads(saved);
    EXPECT_EQ(out[0], out[1]) << "mode " << mode;
    EXPECT_EQ(out[0], out[2]) << "mode " << mode;
  }
}
