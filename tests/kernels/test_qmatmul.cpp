// kernels/qmatmul: products with weights in their stored type (f32, f16, bf16, Q8_0).
//   1. qmatmul_reference against an independent definition: a double-precision dot product of
//      the weights dequantized by formats::dequantize and X rounded as the type says (bf16 by
//      core/half.h, Q8_0 by formats::quantize, which is bit-exact with gguf-py).
//   2. Every instruction-set path this CPU runs (qmatmul_isas) against qmatmul_reference on odd
//      shapes: rows not a multiple of the tiles, N = 1, 3, 17, 64, 300, cols = 32, 96, 2048 (and
//      33, 100 for the non-blocked types), unaligned W and X, padded rows of W, Y, X.
//   3. Bit-identical results for 1 and 2 threads, and for a token alone and inside a batch.
//   4. qmatmul_many equals one qmatmul per task; dequantize_row equals formats::dequantize.
//
// Tolerances. With u = 2⁻²⁴ and γ_k = k·u/(1 − k·u), S = Σ_c |x̂_c·ŵ_c| (x̂, ŵ the rounded
// activations and dequantized weights: the values the arithmetic actually multiplies):
//   - the reference sums its terms left to right in f32. f32/f16: cols products each rounded once
//     and cols − 1 sums; bf16: exact products; Q8_0: exact int32 block sums, then d_w·d_x, its
//     product with the block sum, and the blocks' sum each rounded. In every case a term carries
//     at most cols + 2 roundings, so |ref − exact| ≤ γ_{cols+2}·S (Higham, Accuracy and
//     Stability §3.1).
//   - a fast path adds the same terms in another order (16 lanes, a reduction tree, FMA): it is
//     also within γ_{cols+4}·S of exact, so |fast − ref| ≤ 2·γ_{cols+4}·S.
//   - the scalar path is the reference's arithmetic and must match it bit for bit.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/formats/gguf.h"
#include "moe/kernels/qmatmul.h"

using namespace moe;

namespace {

constexpr WType kTypes[] = {WType::kF32, WType::kF16, WType::kBF16, WType::kQ8_0};

formats::GgmlType ggml_of(WType t) {
  switch (t) {
    case WType::kF32:
      return formats::GgmlType::kF32;
    case WType::kF16:
      return formats::GgmlType::kF16;
    case WType::kBF16:
      return formats::GgmlType::kBF16;
    case WType::kQ8_0:
      return formats::GgmlType::kQ8_0;
  }
  return formats::GgmlType::kF32;
}

double gamma(int64_t k) {
  const double u = std::ldexp(1.0, -24);
  return double(k) * u / (1.0 - double(k) * u);
}

// Values of varied size: each 32-block gets its own scale (0.01 … 10), so Q8_0 scales differ
// from block to block and bf16/f16 rounding sees several exponents.
std::vector<float> values(int64_t n, int64_t cols, uint32_t stream) {
  const Rng r(17, stream);
  std::vector<float> v(std::size_t(n) * cols);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const uint64_t k = uint64_t(i * cols + c);
      const float scale = std::pow(10.0f, float((i * 7 + c / 32) % 4) - 2.0f);
      v[std::size_t(k)] = r.normal(k) * scale;
    }
  return v;
}

// W [rows, cols] in type t, rows row_bytes apart, starting `misalign` bytes into its buffer; and
// the same weights dequantized by formats::dequantize (the independent definition).
struct Weights {
  std::vector<uint8_t> buf;
  WeightMatrix W;
  std::vector<float> deq;  // [rows, cols]
};

Weights make_weights(WType t, int64_t rows, int64_t cols, int64_t pad_bytes, int64_t misalign,
                     uint32_t stream) {
  Weights w;
  const std::vector<float> src = values(rows, cols, stream);
  const std::size_t packed = wtype_row_bytes(t, cols), rb = packed + std::size_t(pad_bytes);
  w.buf.assign(std::size_t(misalign) + std::size_t(rows) * rb, 0xAB);  // padding: junk bytes
  w.deq.resize(src.size());
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w.buf.data() + misalign + r * rb;
    formats::quantize(ggml_of(t), src.data() + r * cols, row, cols);
    formats::dequantize(ggml_of(t), row, w.deq.data() + r * cols, cols);
  }
  w.W = {t, w.buf.data() + misalign, rows, cols, rb};
  return w;
}

// X rounded as the type's products see it (formats::quantize's Q8_0 is ggml's reference
// quantizer, the definition qmatmul's activations follow).
std::vector<double> rounded_x(WType t, const float* x, int64_t cols) {
  std::vector<double> r(std::size_t(cols), 0.0);
  if (t == WType::kBF16) {
    for (int64_t c = 0; c < cols; ++c) r[std::size_t(c)] = bf16_to_f32(f32_to_bf16(x[c]));
  } else if (t == WType::kQ8_0) {
    std::vector<uint8_t> q(wtype_row_bytes(t, cols));
    std::vector<float> back(static_cast<std::size_t>(cols));
    formats::quantize(formats::GgmlType::kQ8_0, x, q.data(), cols);
    formats::dequantize(formats::GgmlType::kQ8_0, q.data(), back.data(), cols);
    for (int64_t c = 0; c < cols; ++c) r[std::size_t(c)] = back[std::size_t(c)];
  } else {
    for (int64_t c = 0; c < cols; ++c) r[std::size_t(c)] = x[c];
  }
  return r;
}

struct Problem {
  WType type;
  int64_t rows, cols, N;
  Weights w;
  std::vector<float> xbuf;  // X starts one float in: 4-byte but not 16-byte aligned
  const float* X;
  int64_t ldx, ldy;
  std::vector<double> S;  // [N, rows]: Σ|x̂·ŵ|, the scale of the tolerances
};

// S is computed only where a tolerance needs it (with_scale): it is a double loop over N·rows·cols.
Problem make_problem(WType t, int64_t rows, int64_t cols, int64_t N, bool with_scale = true) {
  Problem p{
      t,  rows,    cols,     N,        make_weights(t, rows, cols, 6, 3, uint32_t(rows + cols)),
      {}, nullptr, cols + 5, rows + 2, {}};
  const std::vector<float> x = values(N, cols, 99);
  p.xbuf.assign(std::size_t(1 + N * p.ldx), std::numeric_limits<float>::quiet_NaN());
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(p.xbuf.data() + 1 + n * p.ldx, x.data() + n * cols, std::size_t(cols) * 4);
  p.X = p.xbuf.data() + 1;
  if (!with_scale) return p;
  p.S.resize(std::size_t(N * rows));
  for (int64_t n = 0; n < N; ++n) {
    const std::vector<double> xr = rounded_x(t, p.X + n * p.ldx, cols);
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c)
        s += std::fabs(xr[std::size_t(c)] * double(p.w.deq[std::size_t(r * cols + c)]));
      p.S[std::size_t(n * rows + r)] = s;
    }
  }
  return p;
}

// Y [N, ldy] filled with NaN, so a product that leaves an element unwritten (or writes the
// padding) shows.
std::vector<float> nan_y(const Problem& p) {
  return std::vector<float>(std::size_t(p.N * p.ldy), std::numeric_limits<float>::quiet_NaN());
}

std::string trace(const Problem& p) {
  return std::string(wtype_name(p.type)) + " rows=" + std::to_string(p.rows) +
         " cols=" + std::to_string(p.cols) + " N=" + std::to_string(p.N);
}

void expect_padding_untouched(const Problem& p, const std::vector<float>& Y) {
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t r = p.rows; r < p.ldy; ++r) ASSERT_TRUE(std::isnan(Y[std::size_t(n * p.ldy + r)]));
}

}  // namespace

TEST(Qmatmul, ReferenceMatchesDoublePrecisionDefinition) {
  for (WType t : kTypes)
    for (int64_t cols : {32, 96, 2048})
      for (int64_t N : {1, 17, 300}) {
        Problem p = make_problem(t, 13, cols, N);
        SCOPED_TRACE(trace(p));
        std::vector<float> Y = nan_y(p);
        qmatmul_reference(Y.data(), p.ldy, p.X, p.ldx, N, p.w.W);
        expect_padding_untouched(p, Y);
        for (int64_t n = 0; n < N; ++n) {
          const std::vector<double> xr = rounded_x(t, p.X + n * p.ldx, cols);
          for (int64_t r = 0; r < p.rows; ++r) {
            double exact = 0;
            for (int64_t c = 0; c < cols; ++c)
              exact += xr[std::size_t(c)] * double(p.w.deq[std::size_t(r * cols + c)]);
            const double tol = gamma(cols + 2) * p.S[std::size_t(n * p.rows + r)] + 1e-30;
            ASSERT_NEAR(Y[std::size_t(n * p.ldy + r)], exact, tol) << "n=" << n << " r=" << r;
          }
        }
      }
}

TEST(Qmatmul, EveryPathMatchesReference) {
  for (const std::string& isa : qmatmul_isas()) {
    qmatmul_force_isa(isa);
    ASSERT_EQ(qmatmul_isa(), isa);
    for (WType t : kTypes) {
      std::vector<int64_t> col_set = {32, 96, 2048};
      if (t != WType::kQ8_0) col_set.insert(col_set.end(), {33, 100});
      for (int64_t cols : col_set)
        for (int64_t rows : {1, 5, 37})
          for (int64_t N : {1, 3, 17, 64, 300}) {
            if (cols == 2048 && rows != 37) continue;  // the big width once, with every tail
            Problem p = make_problem(t, rows, cols, N);
            SCOPED_TRACE(isa + " " + trace(p));
            std::vector<float> Y = nan_y(p), R = nan_y(p);
            qmatmul(Y.data(), p.ldy, p.X, p.ldx, N, p.w.W);
            qmatmul_reference(R.data(), p.ldy, p.X, p.ldx, N, p.w.W);
            expect_padding_untouched(p, Y);
            for (int64_t n = 0; n < N; ++n)
              for (int64_t r = 0; r < rows; ++r) {
                const std::size_t i = std::size_t(n * p.ldy + r);
                if (isa == "scalar") {
                  ASSERT_EQ(std::memcmp(&Y[i], &R[i], 4), 0) << "n=" << n << " r=" << r;
                } else {
                  const double tol = 2 * gamma(cols + 4) * p.S[std::size_t(n * rows + r)] + 1e-30;
                  ASSERT_NEAR(Y[i], R[i], tol) << "n=" << n << " r=" << r;
                }
              }
          }
    }
  }
  qmatmul_force_isa("");
}

// The reduction order of each element depends only on cols and the type: the same bits for 1 and
// 2 threads, and for a token computed alone (the decode GEMV) or inside a batch (prefill tiles).
TEST(Qmatmul, SameBitsForAnyThreadCountAndBatch) {
  const int threads = omp_get_max_threads();
  for (const std::string& isa : qmatmul_isas()) {
    qmatmul_force_isa(isa);
    for (WType t : kTypes)
      for (int64_t N : {1, 17, 300}) {
        Problem p = make_problem(t, 203, 2048, N, false);
        SCOPED_TRACE(isa + " " + trace(p));
        std::vector<float> Y1 = nan_y(p), Y2 = nan_y(p);
        omp_set_num_threads(1);
        qmatmul(Y1.data(), p.ldy, p.X, p.ldx, N, p.w.W);
        omp_set_num_threads(2);
        qmatmul(Y2.data(), p.ldy, p.X, p.ldx, N, p.w.W);
        EXPECT_EQ(std::memcmp(Y1.data(), Y2.data(), Y1.size() * 4), 0);
        // f32 batches from kQmatmulSgemmMinN tokens on run on OpenBLAS (header): its order
        // differs from the GEMV's, so there the token alone only agrees within the tolerance.
        const bool sgemm = t == WType::kF32 && N >= kQmatmulSgemmMinN && isa != "scalar";
        for (int64_t n : {int64_t(0), N / 2, N - 1}) {
          std::vector<float> y(std::size_t(p.rows));
          qmatmul(y.data(), p.rows, p.X + n * p.ldx, p.ldx, 1, p.w.W);
          if (!sgemm) {
            EXPECT_EQ(std::memcmp(y.data(), Y1.data() + n * p.ldy, y.size() * 4), 0) << "n=" << n;
            continue;
          }
          for (int64_t r = 0; r < p.rows; ++r) {
            double s = 0;
            for (int64_t c = 0; c < p.cols; ++c)
              s += std::fabs(double(p.X[n * p.ldx + c]) * p.w.deq[std::size_t(r * p.cols + c)]);
            ASSERT_NEAR(y[std::size_t(r)], Y1[std::size_t(n * p.ldy + r)],
                        2 * gamma(p.cols + 4) * s)
                << "n=" << n << " r=" << r;
          }
        }
      }
  }
  omp_set_num_threads(threads);
  qmatmul_force_isa("");
}

TEST(Qmatmul, ManyEqualsOneCallPerTask) {
  std::vector<Problem> ps;
  ps.push_back(make_problem(WType::kBF16, 64, 2048, 1));
  ps.push_back(make_problem(WType::kQ8_0, 40, 1024, 1));
  ps.push_back(make_problem(WType::kF16, 7, 96, 5));
  ps.push_back(make_problem(WType::kF32, 33, 100, 64));
  std::vector<std::vector<float>> many, one;
  std::vector<QMatmulTask> tasks;
  for (Problem& p : ps) {
    many.push_back(nan_y(p));
    one.push_back(nan_y(p));
  }
  for (std::size_t i = 0; i < ps.size(); ++i)
    tasks.push_back({many[i].data(), ps[i].ldy, ps[i].X, ps[i].ldx, ps[i].N, ps[i].w.W});
  qmatmul_many(tasks);
  for (std::size_t i = 0; i < ps.size(); ++i) {
    qmatmul(one[i].data(), ps[i].ldy, ps[i].X, ps[i].ldx, ps[i].N, ps[i].w.W);
    EXPECT_EQ(std::memcmp(many[i].data(), one[i].data(), one[i].size() * 4), 0) << i;
  }
}

TEST(Qmatmul, DequantizeRowMatchesFormats) {
  for (WType t : kTypes) {
    const Weights w = make_weights(t, 5, 96, 6, 1, 5);
    std::vector<float> row(96);
    for (int64_t r = 0; r < 5; ++r) {
      dequantize_row(row.data(), w.W, r);
      EXPECT_EQ(std::memcmp(row.data(), w.deq.data() + r * 96, 96 * 4), 0) << wtype_name(t);
    }
  }
}

TEST(Qmatmul, RejectsBadShapes) {
  const Weights w = make_weights(WType::kQ8_0, 2, 64, 0, 0, 1);
  std::vector<float> x(64), y(2);
  WeightMatrix bad = w.W;
  bad.row_bytes = 10;
  EXPECT_THROW(qmatmul(y.data(), 2, x.data(), 64, 1, bad), std::exception);
  EXPECT_THROW(wtype_row_bytes(WType::kQ8_0, 33), std::exception);
  EXPECT_THROW(qmatmul(y.data(), 1, x.data(), 64, 1, w.W), std::exception);  // ldy < rows
  EXPECT_THROW(qmatmul_force_isa("no-such-isa"), std::exception);
}

// Q8_0 weight quants of −128 (no ggml quantizer writes them, but a file may hold them): every
// path must still give the exact int8 products (the AVX2 path's |w| · sign(q, w) and the AVX512
// path's unsigned-offset trick are both exact there).
TEST(Qmatmul, Q8_0WeightsOfMinus128) {
  Problem p = make_problem(WType::kQ8_0, 9, 96, 5);
  auto* base = const_cast<uint8_t*>(static_cast<const uint8_t*>(p.w.W.data));
  for (int64_t r = 0; r < p.rows; r += 2)
    for (int64_t b = 0; b < 3; ++b)
      for (int j = 0; j < 32; j += 1 + int(r % 3))
        base[r * p.w.W.row_bytes + 34 * b + 2 + j] = 0x80;
  std::vector<float> R = nan_y(p);
  qmatmul_reference(R.data(), p.ldy, p.X, p.ldx, p.N, p.w.W);
  for (const std::string& isa : qmatmul_isas()) {
    qmatmul_force_isa(isa);
    std::vector<float> Y = nan_y(p);
    qmatmul(Y.data(), p.ldy, p.X, p.ldx, p.N, p.w.W);
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t r = 0; r < p.rows; ++r) {
        // S from the modified weights: |w| ≤ 128 per quant, so bound Σ|x̂·ŵ| by 128·Σ|x̂|·|d_w|.
        double s = 0;
        const std::vector<double> xr = rounded_x(WType::kQ8_0, p.X + n * p.ldx, p.cols);
        for (int64_t c = 0; c < p.cols; ++c) {
          uint16_t dh;
          std::memcpy(&dh, base + r * p.w.W.row_bytes + 34 * (c / 32), 2);
          s += 128 * std::fabs(xr[std::size_t(c)] * f16_to_f32(dh));
        }
        const std::size_t i = std::size_t(n * p.ldy + r);
        ASSERT_NEAR(Y[i], R[i], 2 * gamma(p.cols + 4) * s + 1e-30)
            << isa << " n=" << n << " r=" << r;
      }
  }
  qmatmul_force_isa("");
}
