// qmatmul: the dispatcher (checks, activation preparation, work split over threads), the scalar
// reference and the scalar path. The SIMD tiles live in qmatmul_avx512.cpp.
#include "moe/kernels/qmatmul.h"

#include <fmt/ranges.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/kernels/gemm.h"
#include "qmatmul_internal.h"

namespace moe {

const char* wtype_name(WType t) {
  switch (t) {
    case WType::kF32:
      return "f32";
    case WType::kF16:
      return "f16";
    case WType::kBF16:
      return "bf16";
    case WType::kQ8_0:
      return "q8_0";
    case WType::kQ4_0:
      return "q4_0";
    case WType::kQ4_K:
      return "q4_k";
    case WType::kQ6_K:
      return "q6_k";
  }
  return "?";
}

std::size_t wtype_row_bytes(WType t, int64_t cols) {
  MOE_CHECK(cols >= 0, "wtype_row_bytes: cols {} is negative", cols);
  switch (t) {
    case WType::kF32:
      return std::size_t(checked_mul(cols, 4, "f32 row bytes"));
    case WType::kF16:
    case WType::kBF16:
      return std::size_t(checked_mul(cols, 2, "16-bit row bytes"));
    case WType::kQ8_0:
      MOE_CHECK(cols % 32 == 0, "wtype_row_bytes: q8_0 cols {} is not a multiple of 32", cols);
      return std::size_t(checked_mul(cols / 32, 34, "q8_0 row bytes"));
    case WType::kQ4_0:
      MOE_CHECK(cols % 32 == 0, "wtype_row_bytes: q4_0 cols {} is not a multiple of 32", cols);
      return std::size_t(checked_mul(cols / 32, 18, "q4_0 row bytes"));
    case WType::kQ4_K:
      MOE_CHECK(cols % 256 == 0, "wtype_row_bytes: q4_k cols {} is not a multiple of 256", cols);
      return std::size_t(checked_mul(cols / 256, 144, "q4_k row bytes"));
    case WType::kQ6_K:
      MOE_CHECK(cols % 256 == 0, "wtype_row_bytes: q6_k cols {} is not a multiple of 256", cols);
      return std::size_t(checked_mul(cols / 256, 210, "q6_k row bytes"));
  }
  MOE_FAIL("wtype_row_bytes: unknown weight type {}", int(t));
}

namespace qmm {

namespace {

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// The per-element sums, in the plain left-to-right order that defines qmatmul's numbers. Compiled
// with -ffp-contract=off: each product and each sum is rounded to f32 on its own.
float dot_f32(const float* x, const uint8_t* w, int64_t cols) {
  float acc = 0.0f;
  for (int64_t c = 0; c < cols; ++c) acc += x[c] * load_f32(w + 4 * c);
  return acc;
}

float dot_f16(const float* x, const uint8_t* w, int64_t cols) {
  float acc = 0.0f;
  for (int64_t c = 0; c < cols; ++c) acc += x[c] * f16_to_f32(load_u16(w + 2 * c));
  return acc;
}

// x is already rounded to bf16; the product of two bf16 values is exact in f32.
float dot_bf16(const uint16_t* x, const uint8_t* w, int64_t cols) {
  float acc = 0.0f;
  for (int64_t c = 0; c < cols; ++c) acc += bf16_to_f32(x[c]) * bf16_to_f32(load_u16(w + 2 * c));
  return acc;
}

// q: activation quants; dx[b · dx_stride]: the scale of activation block b. Per block the exact
// int32 dot product (|Σ| ≤ 32·127·128 < 2^24, so its conversion to f32 is exact too).
float dot_q8_0(const int8_t* q, const float* dx, int64_t dx_stride, const uint8_t* w,
               int64_t blocks) {
  float acc = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + 34 * b;
    const float dw = f16_to_f32(load_u16(wb));
    // Both operands through int8_t pointers: GCC 12 at -O3 -march=native vectorizes
    // int8 × int8_t(uint8) into vpdpbusd as if the cast operand were unsigned (wrong sums; seen
    // here, reproduced in a 5-line test), while a plain int8 × int8 loop is compiled correctly.
    const auto* wq = reinterpret_cast<const int8_t*>(wb + 2);
    int32_t isum = 0;
    for (int j = 0; j < 32; ++j) isum += int32_t(q[32 * b + j]) * int32_t(wq[j]);
    acc += float(isum) * (dw * dx[b * dx_stride]);
  }
  return acc;
}

// Q4_0 against Q8_0 activations (ggml_vec_dot_q4_0_q8_0): the same block loop as dot_q8_0 with
// weights nibble − 8 (element j < 16 the low nibble of byte j, j + 16 the high one).
float dot_q4_0(const int8_t* q, const float* dx, int64_t dx_stride, const uint8_t* w,
               int64_t blocks) {
  float acc = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + 18 * b;
    const float dw = f16_to_f32(load_u16(wb));
    const int8_t* qb = q + 32 * b;
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j)
      isum += (int32_t(wb[2 + j] & 0x0f) - 8) * int32_t(qb[j]) +
              (int32_t(wb[2 + j] >> 4) - 8) * int32_t(qb[j + 16]);
    acc += float(isum) * (dw * dx[b * dx_stride]);
  }
  return acc;
}

inline float meta_d(const uint8_t* meta) { return load_f32(meta + kQ8KScaleAt); }
inline int32_t meta_i16(const uint8_t* meta, int i) { return int16_t(load_u16(meta + 2 * i)); }

// Q4_K against Q8_K activations (ggml_vec_dot_q4_K_q8_K): per super-block the exact int32 sums
// isum = Σ_s sc_s·Σ_{j∈s} w_j·q_j (|isum| ≤ 8·63·32·15·127 < 2^31) and msum = Σ_s m_s·Σ_{j∈s} q_j
// (from the bsums), then y += (d·d_x)·isum − (dmin·d_x)·msum in f32.
float dot_q4_k(const int8_t* q, const uint8_t* meta, const uint8_t* w, int64_t sblocks) {
  float acc = 0.0f;
  for (int64_t i = 0; i < sblocks; ++i) {
    const uint8_t* wb = w + 144 * i;
    const uint8_t* mb = meta + kQ8KMetaBytes * i;
    const int8_t* qb = q + 256 * i;
    const float d = f16_to_f32(load_u16(wb)), dmin = f16_to_f32(load_u16(wb + 2));
    uint8_t sc[8], m[8];
    q4_k_scales(wb + 4, sc, m);
    int32_t isum = 0, msum = 0;
    for (int s = 0; s < 8; ++s) {
      // Sub-blocks 2k and 2k+1 are the low and high nibbles of bytes 32k … 32k+31.
      const uint8_t* qs = wb + 16 + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      int32_t sub = 0;
      for (int l = 0; l < 32; ++l)
        sub += int32_t((qs[l] >> shift) & 0x0f) * int32_t(qb[32 * s + l]);
      isum += int32_t(sc[s]) * sub;
      msum += int32_t(m[s]) * meta_i16(mb + kQ8KPairsAt, s);
    }
    const float dx = meta_d(mb);
    acc = acc + float(isum) * (d * dx);
    acc = acc - float(msum) * (dmin * dx);
  }
  return acc;
}

// Q6_K against Q8_K activations (ggml_vec_dot_q6_K_q8_K): per super-block the exact int32
// isum = Σ_s sc_s·Σ_{j∈s} (w_j − 32)·q_j over 16 sub-blocks of 16 (|isum| ≤ 256·128·32·127 <
// 2^31), then y += (d·d_x)·isum in f32. Element l + 32k of half h (k < 4, l < 32) is nibble k/2 of
// ql[64h + l + 32(k%2)] with bits 2k, 2k+1 of qh[32h + l] above it.
float dot_q6_k(const int8_t* q, const uint8_t* meta, const uint8_t* w, int64_t sblocks) {
  float acc = 0.0f;
  for (int64_t i = 0; i < sblocks; ++i) {
    const uint8_t* wb = w + 210 * i;
    const int8_t* qb = q + 256 * i;
    const auto* sc = reinterpret_cast<const int8_t*>(wb + 192);
    int32_t isum = 0;
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 4; ++k)
        for (int half16 = 0; half16 < 2; ++half16) {  // the two sub-blocks of 16 in l < 32
          int32_t sub = 0;
          for (int l = 16 * half16; l < 16 * half16 + 16; ++l) {
            const int32_t low = (wb[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0x0f;
            const int32_t high = (wb[128 + 32 * h + l] >> (2 * k)) & 3;
            sub += ((low | (high << 4)) - 32) * int32_t(qb[128 * h + 32 * k + l]);
          }
          isum += int32_t(sc[8 * h + 2 * k + half16]) * sub;
        }
    acc += float(isum) * (f16_to_f32(load_u16(wb + 208)) * meta_d(meta + kQ8KMetaBytes * i));
  }
  return acc;
}

}  // namespace

void q4_k_scales(const uint8_t* p, uint8_t sc[8], uint8_t m[8]) {
  for (int s = 0; s < 4; ++s) {
    sc[s] = p[s] & 63;
    m[s] = p[s + 4] & 63;
    // The last four: a nibble of bytes 8–11 below the top 2 bits of bytes 0–3 (scales) / 4–7.
    sc[s + 4] = uint8_t((p[s + 8] & 0x0f) | ((p[s] >> 6) << 4));
    m[s + 4] = uint8_t((p[s + 8] >> 4) | ((p[s + 4] >> 6) << 4));
  }
}

void quantize_block_q8_k(const float* x, int8_t* q, uint8_t* meta) {
  std::memset(meta, 0, kQ8KMetaBytes);
  float amax = 0.0f, max = 0.0f;
  bool finite = true;
  for (int j = 0; j < 256; ++j) {
    const float a = std::fabs(x[j]);
    finite = finite && std::isfinite(x[j]);
    if (a > amax) {  // the first element of largest |x| (its sign gives d's)
      amax = a;
      max = x[j];
    }
  }
  float d = 0.0f;
  if (!finite) {
    d = std::numeric_limits<float>::quiet_NaN();
    std::memset(q, 0, 256);
  } else if (amax == 0.0f) {
    std::memset(q, 0, 256);
  } else {
    const float iscale = -127.0f / max;
    for (int j = 0; j < 256; ++j) {
      // ggml's nearest_int: adding 1.5·2^23 rounds |v| ≤ 127 to the nearest integer (ties to
      // even) in the low mantissa bits.
      const float v = iscale * x[j] + 12582912.0f;
      int32_t bits;
      std::memcpy(&bits, &v, 4);
      q[j] = int8_t(std::min<int32_t>(127, (bits & 0x007fffff) - 0x00400000));
    }
    d = 1.0f / iscale;
  }
  for (int g = 0; g < 16; ++g) {
    int32_t sum = 0;
    for (int j = 0; j < 16; ++j) sum += q[16 * g + j];
    const auto s16 = int16_t(sum);
    std::memcpy(meta + 2 * g, &s16, 2);
  }
  for (int s = 0; s < 8; ++s) {
    const auto s16 = int16_t(meta_i16(meta, 2 * s) + meta_i16(meta, 2 * s + 1));
    std::memcpy(meta + kQ8KPairsAt + 2 * s, &s16, 2);
  }
  std::memcpy(meta + kQ8KScaleAt, &d, 4);
}

float quantize_block_q8_0(const float* x, int8_t* qs) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) {
    const float a = std::fabs(x[j]);
    if (a > amax || a != a) amax = a;  // a NaN makes the block's scale NaN (numpy's max)
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) {
    const float r = std::round(x[j] * id);  // half away from zero, as ggml's reference
    // |x·id| ≤ 127 up to rounding; a NaN or Inf block gives quants 0 (formats::quantize's rule).
    const int32_t q = (r > -2147483648.0f && r < 2147483648.0f) ? int32_t(r) : 0;
    qs[j] = int8_t(uint8_t(uint32_t(q) & 0xffu));
  }
  return f16_to_f32(f32_to_f16(d));
}

void prep_q8_scalar(const float* x, int64_t cols, int8_t* q, int64_t ld_q8, float* d, int32_t* corr,
                    int64_t ld_d) {
  for (int64_t b = 0; b < cols / 32; ++b) {
    const float db = quantize_block_q8_0(x + 32 * b, q + 32 * b);
    std::fill(d + 8 * b, d + 8 * b + 8, db);
  }
  std::fill(q + cols, q + ld_q8, int8_t(0));
  std::fill(d + 8 * (cols / 32), d + ld_d, 0.0f);
  (void)corr;  // only the AVX512 tiles read the sums
}

void tile_scalar(const PreparedX& px, const WeightMatrix& W, int64_t r0, int64_t r1, int64_t n0,
                 int64_t n1, float* Y, int64_t ldy) {
  const auto* w = static_cast<const uint8_t*>(W.data);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = w + r * W.row_bytes;
      float y = 0.0f;
      switch (W.type) {
        case WType::kF32:
          y = dot_f32(px.x + n * px.ldx, wr, W.cols);
          break;
        case WType::kF16:
          y = dot_f16(px.x + n * px.ldx, wr, W.cols);
          break;
        case WType::kBF16:
          y = dot_bf16(px.bf16 + n * px.ld_bf16, wr, W.cols);
          break;
        case WType::kQ8_0:
          // The expanded scale layout puts block b's scale at 8·b (PreparedX).
          y = dot_q8_0(reinterpret_cast<const int8_t*>(px.q8) + n * px.ld_q8, px.q8_d + n * px.ld_d,
                       8, wr, W.cols / 32);
          break;
        case WType::kQ4_0:
          y = dot_q4_0(reinterpret_cast<const int8_t*>(px.q8) + n * px.ld_q8, px.q8_d + n * px.ld_d,
                       8, wr, W.cols / 32);
          break;
        case WType::kQ4_K:
          y = dot_q4_k(px.qk + n * px.ld_qk, px.qk_meta + n * px.ld_meta, wr, W.cols / 256);
          break;
        case WType::kQ6_K:
          y = dot_q6_k(px.qk + n * px.ld_qk, px.qk_meta + n * px.ld_meta, wr, W.cols / 256);
          break;
      }
      Y[n * ldy + r] = y;
    }
}

}  // namespace qmm

namespace {

using qmm::PreparedX;

void check_product(float* Y, int64_t ldy, const float* X, int64_t ldx, int64_t N,
                   const WeightMatrix& W, const char* what) {
  MOE_CHECK(W.rows >= 0 && W.cols >= 0 && N >= 0, "{}: negative shape rows {} cols {} N {}", what,
            W.rows, W.cols, N);
  MOE_CHECK(W.row_bytes >= wtype_row_bytes(W.type, W.cols),
            "{}: row_bytes {} is less than a {} row of {} columns ({} bytes)", what, W.row_bytes,
            wtype_name(W.type), W.cols, wtype_row_bytes(W.type, W.cols));
  MOE_CHECK(ldx >= W.cols && ldy >= W.rows, "{}: ldx {} < cols {} or ldy {} < rows {}", what, ldx,
            W.cols, ldy, W.rows);
  if (N > 0 && W.rows > 0) MOE_CHECK(Y != nullptr, "{}: Y is null", what);
  if (N > 0 && W.cols > 0) MOE_CHECK(X != nullptr, "{}: X is null", what);
  if (W.rows > 0 && W.cols > 0) MOE_CHECK(W.data != nullptr, "{}: W.data is null", what);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

bool uses_q8_0(WType t) { return t == WType::kQ8_0 || t == WType::kQ4_0; }
bool uses_q8_k(WType t) { return t == WType::kQ4_K || t == WType::kQ6_K; }

// Scratch bytes for one task's prepared activations (64-byte aligned pieces).
struct PrepLayout {
  int64_t ld_bf16 = 0, ld_q8 = 0, ld_d = 0, ld_qk = 0, ld_meta = 0;
  std::size_t bytes_bf16 = 0, bytes_q8 = 0, bytes_d = 0;  // bytes_d: the scales, and again the sums
  std::size_t bytes_qk = 0, bytes_meta = 0;
  std::size_t total() const { return bytes_bf16 + bytes_q8 + 2 * bytes_d + bytes_qk + bytes_meta; }
  void place(uint8_t* p, PreparedX& px) const {
    px.bf16 = reinterpret_cast<const uint16_t*>(p);
    px.ld_bf16 = ld_bf16;
    px.q8 = p + bytes_bf16;
    px.ld_q8 = ld_q8;
    px.q8_d = reinterpret_cast<const float*>(p + bytes_bf16 + bytes_q8);
    px.q8_c = reinterpret_cast<const int32_t*>(p + bytes_bf16 + bytes_q8 + bytes_d);
    px.ld_d = ld_d;
    px.qk = reinterpret_cast<const int8_t*>(p + bytes_bf16 + bytes_q8 + 2 * bytes_d);
    px.ld_qk = ld_qk;
    px.qk_meta = p + bytes_bf16 + bytes_q8 + 2 * bytes_d + bytes_qk;
    px.ld_meta = ld_meta;
  }
};

PrepLayout prep_layout(WType t, int64_t N, int64_t cols) {
  PrepLayout l;
  if (t == WType::kBF16) {
    l.ld_bf16 = round_up(cols, 32);
    l.bytes_bf16 = std::size_t(checked_mul(N, l.ld_bf16 * 2, "qmatmul bf16 activations"));
  } else if (uses_q8_0(t)) {
    l.ld_q8 = round_up(cols, 64);
    l.ld_d = l.ld_q8 / 64 * 16;
    l.bytes_q8 = std::size_t(checked_mul(N, l.ld_q8, "qmatmul q8_0 activations"));
    l.bytes_d = std::size_t(checked_mul(N, l.ld_d * 4, "qmatmul q8_0 scales"));
  } else if (uses_q8_k(t)) {  // cols is a multiple of 256: every piece is too
    l.ld_qk = cols;
    l.ld_meta = cols / 256 * qmm::kQ8KMetaBytes;
    l.bytes_qk = std::size_t(checked_mul(N, l.ld_qk, "qmatmul q8_k activations"));
    l.bytes_meta = std::size_t(checked_mul(N, l.ld_meta, "qmatmul q8_k scales"));
  }
  return l;
}

// Row n of X into px's prepared form (bf16, Q8_0 or Q8_K); f32 and f16 read X in place.
void prepare_row(WType t, const float* x, int64_t cols, const PreparedX& px, int64_t n,
                 qmm::PrepQ8Fn prep_q8) {
  if (t == WType::kBF16) {
    uint16_t* dst = const_cast<uint16_t*>(px.bf16) + n * px.ld_bf16;
    for (int64_t c = 0; c < cols; ++c) dst[c] = f32_to_bf16(x[c]);
    std::fill(dst + cols, dst + px.ld_bf16, uint16_t(0));
  } else if (uses_q8_k(t)) {
    int8_t* q = const_cast<int8_t*>(px.qk) + n * px.ld_qk;
    uint8_t* meta = const_cast<uint8_t*>(px.qk_meta) + n * px.ld_meta;
    for (int64_t b = 0; b < cols / 256; ++b)
      qmm::quantize_block_q8_k(x + 256 * b, q + 256 * b, meta + qmm::kQ8KMetaBytes * b);
  } else if (uses_q8_0(t)) {
    prep_q8(x, cols, reinterpret_cast<int8_t*>(const_cast<uint8_t*>(px.q8)) + n * px.ld_q8,
            px.ld_q8, const_cast<float*>(px.q8_d) + n * px.ld_d,
            const_cast<int32_t*>(px.q8_c) + n * px.ld_d, px.ld_d);
  }
}

// 64-byte aligned scratch of the calling thread, grown as needed and kept (decode calls the
// product hundreds of times a token).
uint8_t* scratch(std::size_t bytes) {
  struct Free {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  thread_local std::unique_ptr<uint8_t[], Free> buf;
  thread_local std::size_t cap = 0;
  if (bytes > cap) {
    buf.reset(static_cast<uint8_t*>(::operator new[](bytes, std::align_val_t(64))));
    cap = bytes;
  }
  return buf.get();
}

struct Isa {
  const char* name;
  qmm::TileFn tile;
  qmm::PrepQ8Fn prep_q8;
};

const std::vector<Isa>& isas() {
  static const std::vector<Isa> list = [] {
    std::vector<Isa> l;
    if (qmm::avx512_supported())
      l.push_back({"avx512bf16+avx512vnni", qmm::tile_avx512, qmm::prep_q8_avx512});
    if (qmm::avx2_supported()) l.push_back({"avx2", qmm::tile_avx2, qmm::prep_q8_scalar});
    l.push_back({"scalar", qmm::tile_scalar, qmm::prep_q8_scalar});
    return l;
  }();
  return list;
}

std::atomic<int> g_forced_isa{-1};

const Isa& current_isa() {
  const int f = g_forced_isa.load(std::memory_order_relaxed);
  return isas()[f >= 0 ? std::size_t(f) : 0];
}

// Work items: a block of rows × a block of tokens of one task. Row blocks are multiples of 8 (the
// tiles' row counts); token blocks keep a block of prepared X (≤ 64 rows) in L2 while the W rows
// of the item stream past it. Neither choice changes any Y element's arithmetic.
struct Item {
  int32_t task;
  int64_t r0, r1, n0, n1;
};

void make_items(const QMatmulTask& t, int32_t index, std::vector<Item>& items) {
  const int64_t rows = t.W.rows, N = t.N;
  if (rows == 0 || N == 0) return;
  const int64_t rb = N <= 8 ? 32 : 64;
  const int64_t nblocks = (N + 63) / 64, tb = (N + nblocks - 1) / nblocks;
  for (int64_t n0 = 0; n0 < N; n0 += tb)
    for (int64_t r0 = 0; r0 < rows; r0 += rb)
      items.push_back({index, r0, std::min(rows, r0 + rb), n0, std::min(N, n0 + tb)});
}

// f32 weights with N ≥ kQmatmulSgemmMinN tokens go to OpenBLAS sgemm (W read in place as a
// transposed B): on Zen 4 it ran 1.3–1.4× our f32 tiles at N = 16…512 (docs/INFERENCE.md).
// OpenBLAS splits M and N over threads, never K, so its sums are thread-count independent too.
// The scalar path never uses it (it must equal qmatmul_reference).
bool use_sgemm(const QMatmulTask& t, bool scalar) {
  return !scalar && t.W.type == WType::kF32 && t.N >= kQmatmulSgemmMinN && t.W.rows > 0 &&
         t.W.cols > 0 && t.W.row_bytes % 4 == 0 &&
         reinterpret_cast<uintptr_t>(t.W.data) % alignof(float) == 0 && t.N <= INT32_MAX &&
         t.W.rows <= INT32_MAX && t.W.cols <= INT32_MAX && t.ldx <= INT32_MAX &&
         t.ldy <= INT32_MAX && int64_t(t.W.row_bytes / 4) <= INT32_MAX;
}

}  // namespace

void qmatmul_many(std::span<const QMatmulTask> tasks) {
  const Isa& isa = current_isa();
  const qmm::TileFn tile = isa.tile;
  const bool scalar = isa.tile == qmm::tile_scalar;
  std::vector<std::size_t> sgemm_tasks;
  std::vector<PreparedX> px(tasks.size());
  std::vector<PrepLayout> lay(tasks.size());
  std::vector<std::size_t> offset(tasks.size() + 1, 0);
  std::vector<int64_t> prep_rows(tasks.size() + 1, 0);  // prefix sums of rows to prepare
  std::vector<int64_t> same_x(tasks.size(), -1);        // the task whose prepared X a task reads
  std::vector<Item> items;
  double work = 0;
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const QMatmulTask& t = tasks[i];
    check_product(t.Y, t.ldy, t.X, t.ldx, t.N, t.W, "qmatmul");
    if (use_sgemm(t, scalar)) {
      sgemm_tasks.push_back(i);
      offset[i + 1] = offset[i];
      prep_rows[i + 1] = prep_rows[i];
      continue;
    }
    make_items(t, int32_t(i), items);
    work += double(t.N) * double(t.W.rows) * double(t.W.cols);
    // Tasks that read the same X in the same type (the gate and up products of every expert in a
    // decode step) share one prepared copy: X is rounded or quantized once.
    same_x[i] = int64_t(i);
    for (std::size_t j = 0; j < i; ++j)
      if (same_x[j] == int64_t(j) && tasks[j].X == t.X && tasks[j].ldx == t.ldx &&
          tasks[j].N == t.N && tasks[j].W.cols == t.W.cols && tasks[j].W.type == t.W.type &&
          !use_sgemm(tasks[j], scalar)) {
        same_x[i] = int64_t(j);
        break;
      }
    if (same_x[i] != int64_t(i)) {
      offset[i + 1] = offset[i];
      prep_rows[i + 1] = prep_rows[i];
      continue;
    }
    lay[i] = prep_layout(t.W.type, t.N, t.W.cols);
    offset[i + 1] = offset[i] + lay[i].total();
    const bool prep = t.W.type == WType::kBF16 || uses_q8_0(t.W.type) || uses_q8_k(t.W.type);
    prep_rows[i + 1] = prep_rows[i] + (prep ? t.N : 0);
  }
  uint8_t* buf = scratch(offset.back());
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const QMatmulTask& t = tasks[i];
    if (same_x[i] >= 0 && same_x[i] != int64_t(i)) {
      px[i] = px[std::size_t(same_x[i])];
      continue;
    }
    px[i].x = t.X;
    px[i].ldx = t.ldx;
    lay[i].place(buf + offset[i], px[i]);
  }
  const int64_t n_prep = prep_rows.back(), n_items = int64_t(items.size());
  // Below ~64k multiply-adds a fork/join costs more than it saves.
#pragma omp parallel if (work > 65536.0)
  {
#pragma omp for schedule(static)
    for (int64_t j = 0; j < n_prep; ++j) {
      const std::size_t i = std::size_t(std::upper_bound(prep_rows.begin(), prep_rows.end(), j) -
                                        prep_rows.begin() - 1);
      const QMatmulTask& t = tasks[i];
      const int64_t n = j - prep_rows[i];
      prepare_row(t.W.type, t.X + n * t.ldx, t.W.cols, px[i], n, isa.prep_q8);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n_items; ++k) {
      const Item& it = items[std::size_t(k)];
      const QMatmulTask& t = tasks[std::size_t(it.task)];
      tile(px[std::size_t(it.task)], t.W, it.r0, it.r1, it.n0, it.n1, t.Y, t.ldy);
    }
  }
  for (std::size_t i : sgemm_tasks) {  // Y [N, rows] = X [N, cols] · Wᵀ, on OpenBLAS's threads
    const QMatmulTask& t = tasks[i];
    gemm<float>(false, true, int(t.N), int(t.W.rows), int(t.W.cols), 1.0f, t.X, int(t.ldx),
                static_cast<const float*>(t.W.data), int(t.W.row_bytes / 4), 0.0f, t.Y, int(t.ldy));
  }
}

void qmatmul(float* Y, int64_t ldy, const float* X, int64_t ldx, int64_t N, const WeightMatrix& W) {
  const QMatmulTask t{Y, ldy, X, ldx, N, W};
  qmatmul_many(std::span<const QMatmulTask>(&t, 1));
}

void qmatmul_reference(float* Y, int64_t ldy, const float* X, int64_t ldx, int64_t N,
                       const WeightMatrix& W) {
  check_product(Y, ldy, X, ldx, N, W, "qmatmul_reference");
  const PrepLayout l = prep_layout(W.type, 1, W.cols);
  std::vector<uint8_t> buf(l.total() + 64);
  PreparedX px;
  // The scales start 4-aligned: bytes_bf16, bytes_q8 and bytes_qk are multiples of 64.
  l.place(buf.data(), px);
  for (int64_t n = 0; n < N; ++n) {
    px.x = X + n * ldx;
    prepare_row(W.type, px.x, W.cols, px, 0, qmm::prep_q8_scalar);
    qmm::tile_scalar(px, W, 0, W.rows, 0, 1, Y + n * ldy, ldy);
  }
}

void dequantize_row(float* dst, const WeightMatrix& W, int64_t r) {
  MOE_CHECK(r >= 0 && r < W.rows, "dequantize_row: row {} outside [0, {})", r, W.rows);
  const auto* w = static_cast<const uint8_t*>(W.data) + r * W.row_bytes;
  switch (W.type) {
    case WType::kF32:
      std::memcpy(dst, w, std::size_t(W.cols) * 4);
      return;
    case WType::kF16:
      for (int64_t c = 0; c < W.cols; ++c) dst[c] = f16_to_f32(qmm::load_u16(w + 2 * c));
      return;
    case WType::kBF16:
      for (int64_t c = 0; c < W.cols; ++c) dst[c] = bf16_to_f32(qmm::load_u16(w + 2 * c));
      return;
    case WType::kQ8_0:
      for (int64_t b = 0; b < W.cols / 32; ++b) {
        const float d = f16_to_f32(qmm::load_u16(w + 34 * b));
        for (int j = 0; j < 32; ++j) dst[32 * b + j] = float(int8_t(w[34 * b + 2 + j])) * d;
      }
      return;
    // The next three: formats/ggml_quants.cpp's formulas in its operation order (the same bits).
    case WType::kQ4_0:
      for (int64_t b = 0; b < W.cols / 32; ++b) {
        const uint8_t* wb = w + 18 * b;
        const float d = f16_to_f32(qmm::load_u16(wb));
        for (int j = 0; j < 16; ++j) {
          dst[32 * b + j] = float(int(wb[2 + j] & 0x0f) - 8) * d;
          dst[32 * b + j + 16] = float(int(wb[2 + j] >> 4) - 8) * d;
        }
      }
      return;
    case WType::kQ4_K:
      for (int64_t i = 0; i < W.cols / 256; ++i) {
        const uint8_t* wb = w + 144 * i;
        const float d = f16_to_f32(qmm::load_u16(wb)), dmin = f16_to_f32(qmm::load_u16(wb + 2));
        uint8_t sc[8], m[8];
        qmm::q4_k_scales(wb + 4, sc, m);
        for (int s = 0; s < 8; ++s) {
          const float d1 = d * float(sc[s]), m1 = dmin * float(m[s]);
          const uint8_t* qs = wb + 16 + 32 * (s / 2);
          for (int l = 0; l < 32; ++l)
            dst[256 * i + 32 * s + l] = d1 * float((qs[l] >> (4 * (s % 2))) & 0x0f) - m1;
        }
      }
      return;
    case WType::kQ6_K:
      for (int64_t i = 0; i < W.cols / 256; ++i) {
        const uint8_t* wb = w + 210 * i;
        const auto* sc = reinterpret_cast<const int8_t*>(wb + 192);
        const float d = f16_to_f32(qmm::load_u16(wb + 208));
        for (int h = 0; h < 2; ++h)
          for (int k = 0; k < 4; ++k)
            for (int l = 0; l < 32; ++l) {
              const int low = (wb[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0x0f;
              const int high = (wb[128 + 32 * h + l] >> (2 * k)) & 3;
              dst[256 * i + 128 * h + 32 * k + l] =
                  d * float(sc[8 * h + l / 16 + 2 * k]) * float((low | (high << 4)) - 32);
            }
      }
      return;
  }
}

std::string qmatmul_isa() { return current_isa().name; }

std::vector<std::string> qmatmul_isas() {
  std::vector<std::string> names;
  for (const Isa& i : isas()) names.push_back(i.name);
  return names;
}

void qmatmul_force_isa(const std::string& isa) {
  if (isa.empty()) {
    g_forced_isa = -1;
    return;
  }
  for (std::size_t i = 0; i < isas().size(); ++i)
    if (isa == isas()[i].name) {
      g_forced_isa = int(i);
      return;
    }
  MOE_FAIL("qmatmul_force_isa: '{}' is not a path this CPU runs (have: {})", isa,
           fmt::join(qmatmul_isas(), ", "));
}

}  // namespace moe
