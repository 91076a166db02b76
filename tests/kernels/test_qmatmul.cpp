// kernels/qmatmul: products with weights in their stored type (f32, f16, bf16, Q8_0, Q4_0, Q4_K,
// Q6_K).
//   1. qmatmul_reference against an independent definition: a double-precision dot product of
//      the weights dequantized by formats::dequantize (checked against gguf-py's dequantizers in
//      tests/python/test_gguf_quants.py) and X rounded as the type says (bf16 by core/half.h,
//      Q8_0 by formats::quantize, which is bit-exact with gguf-py; Q8_K by this file's q8_k,
//      written from ggml's quantize_row_q8_K_ref); and against the f32 product within the bound
//      of the activations' quantization. Q4_0/Q4_K/Q6_K weights are random valid blocks (our
//      formats code has no quantizer for them; the values the arithmetic sees are what counts).
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
//   - Q4_0/Q4_K/Q6_K: the reference's block terms are exact integer sums, each scaled with at most
//     4 roundings (isum → f32, d_w·d_x, the product, the add; Q4_K's min term likewise), then
//     summed over the blocks (cols/32 or cols/256 of them); and formats::dequantize's ŵ carries
//     one rounding of its own (d·sc·(q − 32) has 25 significant bits; d·sc·q − dmin·m is a
//     difference): |ref − Σ x̂·ŵ| ≤ γ_{blocks+5}·S. For Q4_K, S is Σ |x̂|·(|d·sc·q| + |dmin·m|),
//     the sizes of the two terms before they cancel.
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

constexpr WType kTypes[] = {WType::kF32,  WType::kF16,  WType::kBF16, WType::kQ8_0,
                            WType::kQ4_0, WType::kQ4_K, WType::kQ6_K};
bool is_k(WType t) { return t == WType::kQ4_K || t == WType::kQ6_K; }

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
    case WType::kQ4_0:
      return formats::GgmlType::kQ4_0;
    case WType::kQ4_K:
      return formats::GgmlType::kQ4_K;
    case WType::kQ6_K:
      return formats::GgmlType::kQ6_K;
  }
  return formats::GgmlType::kF32;
}

// Blocks of the new types from random bytes, with scales set to sizes real files hold (f16 d of
// 1e-4 … 1e-2, per row a different one): every nibble, 6-bit scale/min and int8 scale pattern is
// a valid block, so random bytes exercise all of them.
void random_blocks(WType t, uint8_t* row, int64_t cols, const Rng& g, uint64_t at) {
  const auto bytes = int64_t(wtype_row_bytes(t, cols));
  for (int64_t i = 0; i < bytes; ++i) row[i] = uint8_t(g.u32(at + uint64_t(i)));
  auto put_f16 = [&](uint8_t* p, float v) {
    const uint16_t h = f32_to_f16(v);
    std::memcpy(p, &h, 2);
  };
  const float scale = std::pow(10.0f, -4.0f + 2.0f * g.uniform(at + 1000003));
  if (t == WType::kQ4_0)
    for (int64_t b = 0; b < cols / 32; ++b) put_f16(row + 18 * b, scale * (1 + b % 3));
  if (t == WType::kQ4_K)
    for (int64_t b = 0; b < cols / 256; ++b) {
      put_f16(row + 144 * b, scale * 0.1f * (1 + b % 3));
      put_f16(row + 144 * b + 2, scale * 0.05f);
    }
  if (t == WType::kQ6_K)
    for (int64_t b = 0; b < cols / 256; ++b) put_f16(row + 210 * b + 208, scale * 0.01f);
}

// ggml's get_scale_min_k4, written again here from its definition (ggml-quants.c).
void q4_k_scale_min(const uint8_t* q, int s, int& sc, int& m) {
  if (s < 4) {
    sc = q[s] & 63;
    m = q[s + 4] & 63;
  } else {
    sc = (q[s + 4] & 0x0f) | ((q[s - 4] >> 6) << 4);
    m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
  }
}

// Q8_K of one row (ggml's quantize_row_q8_K_ref): per 256-block the element of largest |x| (the
// first one) gives iscale = −127/max, q = nearest-even(iscale·x) capped at 127, d = 1/iscale.
// Returns the values d·q exactly (in double).
std::vector<double> q8_k(const float* x, int64_t cols) {
  std::vector<double> r(std::size_t(cols), 0.0);
  for (int64_t b = 0; b < cols / 256; ++b) {
    float amax = 0, max = 0;
    for (int j = 0; j < 256; ++j)
      if (std::fabs(x[256 * b + j]) > amax) {
        amax = std::fabs(x[256 * b + j]);
        max = x[256 * b + j];
      }
    if (amax == 0) continue;
    const float iscale = -127.0f / max;
    const float d = 1.0f / iscale;
    for (int j = 0; j < 256; ++j) {
      const double q = std::min(127.0, double(std::nearbyint(iscale * x[256 * b + j])));
      r[std::size_t(256 * b + j)] = double(d) * q;
    }
  }
  return r;
}

// Per block of the activation quantization, its scale |d| (what bounds |x − x̂|).
std::vector<double> x_scales(WType t, const float* x, int64_t cols) {
  std::vector<double> r(std::size_t(cols), 0.0);
  const int64_t bs = is_k(t) ? 256 : 32;
  for (int64_t b = 0; b < cols / bs; ++b) {
    float amax = 0;
    for (int64_t j = 0; j < bs; ++j) amax = std::max(amax, std::fabs(x[bs * b + j]));
    for (int64_t j = 0; j < bs; ++j) r[std::size_t(bs * b + j)] = amax / 127.0;
  }
  return r;
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
  std::vector<float> deq;   // [rows, cols]
  std::vector<double> mag;  // [rows, cols]: |ŵ|, for Q4_K |d·sc·q| + |dmin·m| (tolerances)
};

Weights make_weights(WType t, int64_t rows, int64_t cols, int64_t pad_bytes, int64_t misalign,
                     uint32_t stream) {
  Weights w;
  const std::vector<float> src = values(rows, cols, stream);
  const std::size_t packed = wtype_row_bytes(t, cols), rb = packed + std::size_t(pad_bytes);
  w.buf.assign(std::size_t(misalign) + std::size_t(rows) * rb, 0xAB);  // padding: junk bytes
  w.deq.resize(src.size());
  w.mag.resize(src.size());
  const Rng g(23, stream);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w.buf.data() + misalign + r * rb;
    if (formats::can_quantize(ggml_of(t)))
      formats::quantize(ggml_of(t), src.data() + r * cols, row, cols);
    else
      random_blocks(t, row, cols, g, uint64_t(r) << 20);
    formats::dequantize(ggml_of(t), row, w.deq.data() + r * cols, cols);
    for (int64_t c = 0; c < cols; ++c)
      w.mag[std::size_t(r * cols + c)] = std::fabs(double(w.deq[std::size_t(r * cols + c)]));
    if (t == WType::kQ4_K)
      for (int64_t c = 0; c < cols; ++c) {
        const uint8_t* b = row + 144 * (c / 256);
        int sc, m;
        q4_k_scale_min(b + 4, int(c % 256 / 32), sc, m);
        const int s = int(c % 256 / 32), l = int(c % 32);
        const int q = (b[16 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0f;
        uint16_t d, dmin;
        std::memcpy(&d, b, 2);
        std::memcpy(&dmin, b + 2, 2);
        w.mag[std::size_t(r * cols + c)] =
            std::fabs(double(f16_to_f32(d)) * sc * q) + std::fabs(double(f16_to_f32(dmin)) * m);
      }
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
  } else if (is_k(t)) {
    r = q8_k(x, cols);
  } else if (t == WType::kQ8_0 || t == WType::kQ4_0) {
    std::vector<uint8_t> q(wtype_row_bytes(WType::kQ8_0, cols));
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
        s += std::fabs(xr[std::size_t(c)]) * p.w.mag[std::size_t(r * cols + c)];
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

// The error bound of the reference against the exact Σ x̂·ŵ (header comment).
double ref_gamma(WType t, int64_t cols) {
  if (t == WType::kQ4_0) return gamma(cols / 32 + 5);
  if (is_k(t)) return gamma(cols / 256 + 5);
  return gamma(cols + 2);
}

std::vector<int64_t> widths(WType t) {
  if (is_k(t)) return {256, 768, 2048};
  return {32, 96, 2048};
}

TEST(Qmatmul, ReferenceMatchesDoublePrecisionDefinition) {
  for (WType t : kTypes)
    for (int64_t cols : widths(t))
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
            const double tol = ref_gamma(t, cols) * p.S[std::size_t(n * p.rows + r)] + 1e-30;
            ASSERT_NEAR(Y[std::size_t(n * p.ldy + r)], exact, tol) << "n=" << n << " r=" << r;
          }
        }
      }
}

// Against the f32 product Σ x·ŵ (X not quantized): the activations' quantization moves each x by
// at most 0.6·|d| of its block (half a quant step, plus the f16 rounding of Q8_0's d: 127·2⁻¹¹·|d|
// < 0.07·|d|; Q8_K keeps d in f32), so |ref − Σ x·ŵ| ≤ Σ 0.6·|d|·|ŵ| + the reference's own bound.
TEST(Qmatmul, QuantizedActivationsStayWithinTheirBoundOfTheF32Product) {
  for (WType t : {WType::kQ8_0, WType::kQ4_0, WType::kQ4_K, WType::kQ6_K})
    for (int64_t cols : {256, 2048}) {
      Problem p = make_problem(t, 21, cols, 9);
      SCOPED_TRACE(trace(p));
      std::vector<float> Y = nan_y(p);
      qmatmul_reference(Y.data(), p.ldy, p.X, p.ldx, p.N, p.w.W);
      for (int64_t n = 0; n < p.N; ++n) {
        const float* x = p.X + n * p.ldx;
        const std::vector<double> dx = x_scales(t, x, cols);
        for (int64_t r = 0; r < p.rows; ++r) {
          double f32 = 0, bound = 0;
          for (int64_t c = 0; c < cols; ++c) {
            const double w = p.w.deq[std::size_t(r * cols + c)];
            f32 += double(x[c]) * w;
            bound += 0.6 * dx[std::size_t(c)] * std::fabs(w);
          }
          bound += ref_gamma(t, cols) * p.S[std::size_t(n * p.rows + r)];
          ASSERT_NEAR(Y[std::size_t(n * p.ldy + r)], f32, bound) << "n=" << n << " r=" << r;
        }
      }
    }
}

TEST(Qmatmul, EveryPathMatchesReference) {
  for (const std::string& isa : qmatmul_isas()) {
    qmatmul_force_isa(isa);
    ASSERT_EQ(qmatmul_isa(), isa);
    for (WType t : kTypes) {
      std::vector<int64_t> col_set = widths(t);
      if (t == WType::kF32 || t == WType::kF16 || t == WType::kBF16)
        col_set.insert(col_set.end(), {33, 100});
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
  ps.push_back(make_problem(WType::kQ4_0, 19, 512, 1));
  ps.push_back(make_problem(WType::kQ4_K, 40, 1024, 1));
  ps.push_back(make_problem(WType::kQ6_K, 24, 768, 3));
  std::vector<std::vector<float>> many, one;
  std::vector<QMatmulTask> tasks;
  for (Problem& p : ps) {
    many.push_back(nan_y(p));
    one.push_back(nan_y(p));
  }
  for (std::size_t i = 0; i < ps.size(); ++i)
    tasks.push_back({many[i].data(), ps[i].ldy, ps[i].X, ps[i].ldx, ps[i].N, ps[i].w.W});
  // Two more tasks read the X of tasks 0 and 1 (as an expert's gate and up products share X):
  // qmatmul_many prepares such an X once.
  const Problem shared_bf16 = make_problem(WType::kBF16, 50, 2048, 1, false);
  const Problem shared_q8 = make_problem(WType::kQ8_0, 30, 1024, 1, false);
  const Problem shared_q4k = make_problem(WType::kQ4_K, 30, 1024, 1, false);
  std::vector<float> y_bf16(50), y_q8(30), one_bf16(50), one_q8(30), y_q4k(30), one_q4k(30);
  tasks.push_back({y_bf16.data(), 50, ps[0].X, ps[0].ldx, 1, shared_bf16.w.W});
  tasks.push_back({y_q8.data(), 30, ps[1].X, ps[1].ldx, 1, shared_q8.w.W});
  tasks.push_back({y_q4k.data(), 30, ps[5].X, ps[5].ldx, 1, shared_q4k.w.W});
  qmatmul_many(tasks);
  for (std::size_t i = 0; i < ps.size(); ++i) {
    qmatmul(one[i].data(), ps[i].ldy, ps[i].X, ps[i].ldx, ps[i].N, ps[i].w.W);
    EXPECT_EQ(std::memcmp(many[i].data(), one[i].data(), one[i].size() * 4), 0) << i;
  }
  qmatmul(one_bf16.data(), 50, ps[0].X, ps[0].ldx, 1, shared_bf16.w.W);
  qmatmul(one_q8.data(), 30, ps[1].X, ps[1].ldx, 1, shared_q8.w.W);
  EXPECT_EQ(std::memcmp(y_bf16.data(), one_bf16.data(), 50 * 4), 0);
  EXPECT_EQ(std::memcmp(y_q8.data(), one_q8.data(), 30 * 4), 0);
  qmatmul(one_q4k.data(), 30, ps[5].X, ps[5].ldx, 1, shared_q4k.w.W);
  EXPECT_EQ(std::memcmp(y_q4k.data(), one_q4k.data(), 30 * 4), 0);
}

TEST(Qmatmul, DequantizeRowMatchesFormats) {
  for (WType t : kTypes) {
    const Weights w = make_weights(t, 5, 512, 6, 1, 5);
    std::vector<float> row(512);
    for (int64_t r = 0; r < 5; ++r) {
      dequantize_row(row.data(), w.W, r);
      EXPECT_EQ(std::memcmp(row.data(), w.deq.data() + r * 512, 512 * 4), 0) << wtype_name(t);
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
  EXPECT_THROW(wtype_row_bytes(WType::kQ4_0, 48), std::exception);
  EXPECT_THROW(wtype_row_bytes(WType::kQ4_K, 128), std::exception);
  EXPECT_THROW(wtype_row_bytes(WType::kQ6_K, 512 + 32), std::exception);
  EXPECT_EQ(wtype_row_bytes(WType::kQ4_0, 64), 36u);
  EXPECT_EQ(wtype_row_bytes(WType::kQ4_K, 512), 288u);
  EXPECT_EQ(wtype_row_bytes(WType::kQ6_K, 512), 420u);
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

// The activation quantization of every path is formats::quantize's, bit for bit, ties included:
// W row r is the one-hot row e_r (quant 1, scale 1), so Y[n, r] = q_x[n, r]·d_x is a single exact
// term whatever the summation order, and every path must give the reference's bits. Blocks of
// X with amax = 127 have d = 1, so x = k + 0.5 lands exactly on a tie.
TEST(Qmatmul, Q8_0ActivationQuantizationIsExact) {
  constexpr int64_t kCols = 96, kN = 4;
  std::vector<uint8_t> w(std::size_t(kCols) * 34 * (kCols / 32), 0);
  const std::size_t rb = wtype_row_bytes(WType::kQ8_0, kCols);
  const uint16_t one = f32_to_f16(1.0f);
  for (int64_t r = 0; r < kCols; ++r) {
    for (int64_t b = 0; b < kCols / 32; ++b) std::memcpy(&w[r * rb + 34 * b], &one, 2);
    w[r * rb + 34 * (r / 32) + 2 + r % 32] = 1;
  }
  const WeightMatrix W{WType::kQ8_0, w.data(), kCols, kCols, rb};
  std::vector<float> X(std::size_t(kN * kCols));
  const Rng g(3, 3);
  for (int64_t c = 0; c < kCols; ++c) {
    X[std::size_t(c)] = c % 32 == 0 ? 127.0f : float(c % 32) - 15.5f;  // ties at d = 1
    X[std::size_t(kCols + c)] = g.normal(uint64_t(c)) * 3.0f;
    X[std::size_t(2 * kCols + c)] = c < 32 ? 0.0f : -float(c) / 7.0f;  // an all-zero block
    X[std::size_t(3 * kCols + c)] = g.normal(uint64_t(100 + c));
  }
  X[std::size_t(3 * kCols + 40)] = std::numeric_limits<float>::infinity();  // block 1 of row 3
  std::vector<float> R(std::size_t(kN * kCols));
  qmatmul_reference(R.data(), kCols, X.data(), kCols, kN, W);
  EXPECT_EQ(R[1], -15.0f);  // −14.5 rounds half away from zero
  for (const std::string& isa : qmatmul_isas()) {
    qmatmul_force_isa(isa);
    std::vector<float> Y(R.size());
    qmatmul(Y.data(), kCols, X.data(), kCols, kN, W);
    for (std::size_t i = 0; i < R.size(); ++i) {
      if (std::isnan(R[i])) {
        EXPECT_TRUE(std::isnan(Y[i])) << isa << " i=" << i;
      } else {
        EXPECT_EQ(std::memcmp(&Y[i], &R[i], 4), 0)
            << isa << " i=" << i << " " << Y[i] << " vs " << R[i];
      }
    }
  }
  qmatmul_force_isa("");
}

// The Q8_K activation quantization of every path is ggml's (this file's q8_k), bit for bit, ties
// and signs included: W row r is the Q4_K one-hot row e_r (d = 1, dmin = 0, every scale 1, every
// min 0, nibble 1 at column r), so Y[n, r] = q_x[n, r]·d_x is a single exact term on every path.
// Block 0 of X has max = −127 (d = 1: x = k + 0.5 lands on a tie, which goes to even, unlike
// Q8_0's half away from zero), block 1 a positive max (d < 0, the quants negated); X row 1 holds
// an all-zero block; X row 2 an Inf (its block's d is NaN, so every output of the row is NaN).
TEST(Qmatmul, Q8_KActivationQuantizationIsExact) {
  constexpr int64_t kCols = 512, kN = 3;
  const std::size_t rb = wtype_row_bytes(WType::kQ4_K, kCols);
  std::vector<uint8_t> w(kCols * rb, 0);
  const uint16_t one = f32_to_f16(1.0f);
  for (int64_t r = 0; r < kCols; ++r)
    for (int64_t b = 0; b < kCols / 256; ++b) {
      uint8_t* blk = &w[r * rb + 144 * b];
      std::memcpy(blk, &one, 2);                       // d = 1, dmin = 0
      for (int s = 0; s < 4; ++s) blk[4 + s] = 1;      // scales 0–3 = 1, mins 0
      for (int s = 0; s < 4; ++s) blk[4 + 8 + s] = 1;  // scales 4–7 = 1, mins 0
      if (r / 256 == b) {
        const int s = int(r % 256 / 32), l = int(r % 32);
        blk[16 + 32 * (s / 2) + l] = uint8_t(1 << (4 * (s % 2)));  // nibble 1 at column r
      }
    }
  const WeightMatrix W{WType::kQ4_K, w.data(), kCols, kCols, rb};
  std::vector<float> X(std::size_t(kN * kCols));
  const Rng g(4, 4);
  for (int64_t c = 0; c < kCols; ++c) {
    X[std::size_t(c)] = c == 7 ? -127.0f : c < 256 ? float(c % 64) - 31.5f : g.normal(c) * 2;
    X[std::size_t(kCols + c)] = c < 256 ? 0.0f : g.normal(uint64_t(c));
    X[std::size_t(2 * kCols + c)] = g.normal(uint64_t(1000 + c)) * 0.01f;
  }
  X[std::size_t(2 * kCols + 300)] = std::numeric_limits<float>::infinity();
  std::vector<float> R(std::size_t(kN * kCols));
  qmatmul_reference(R.data(), kCols, X.data(), kCols, kN, W);
  EXPECT_EQ(R[0], -32.0f);  // −31.5 · 1 rounds to the even −32
  EXPECT_EQ(R[2], -30.0f);  // −29.5 → −30
  EXPECT_EQ(R[3], -28.0f);  // −28.5 → −28
  for (int64_t n = 0; n < kN; ++n) {
    const std::vector<double> want = q8_k(X.data() + n * kCols, kCols);
    for (int64_t c = 0; c < kCols; ++c) {
      const float r = R[std::size_t(n * kCols + c)];
      if (n == 2) {
        EXPECT_TRUE(std::isnan(r)) << c;
      } else {  // q·d rounded once to f32, as the product does
        EXPECT_EQ(r, float(want[std::size_t(c)])) << "n=" << n << " c=" << c;
      }
    }
  }
  for (const std::string& isa : qmatmul_isas()) {
    qmatmul_force_isa(isa);
    std::vector<float> Y(R.size());
    qmatmul(Y.data(), kCols, X.data(), kCols, kN, W);
    for (std::size_t i = 0; i < R.size(); ++i) {
      if (std::isnan(R[i])) {
        EXPECT_TRUE(std::isnan(Y[i])) << isa << " i=" << i;
      } else {
        EXPECT_EQ(std::memcmp(&Y[i], &R[i], 4), 0)
            << isa << " i=" << i << " " << Y[i] << " vs " << R[i];
      }
    }
  }
  qmatmul_force_isa("");
}
