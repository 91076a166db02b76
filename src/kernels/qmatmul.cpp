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

// u: activation quants + 128; dx[b · dx_stride]: the scale of activation block b. Per block the
// exact int32 dot product (|Σ| ≤ 32·127·128 < 2^24, so its conversion to f32 is exact too).
float dot_q8_0(const uint8_t* u, const float* dx, int64_t dx_stride, const uint8_t* w,
               int64_t blocks) {
  float acc = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* wb = w + 34 * b;
    const float dw = f16_to_f32(load_u16(wb));
    int32_t isum = 0;
    for (int j = 0; j < 32; ++j)
      isum += (int32_t(u[32 * b + j]) - 128) * int32_t(int8_t(wb[2 + j]));
    acc += float(isum) * (dw * dx[b * dx_stride]);
  }
  return acc;
}

}  // namespace

float quantize_block_q8_0_u(const float* x, uint8_t* u) {
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
    u[j] = uint8_t(int8_t(uint8_t(uint32_t(q) & 0xffu)) + 128);
  }
  return f16_to_f32(f32_to_f16(d));
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
          y = dot_q8_0(px.q8 + n * px.ld_q8, px.q8_d + n * px.ld_d, 8, wr, W.cols / 32);
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

// Scratch bytes for one task's prepared activations (64-byte aligned pieces).
struct PrepLayout {
  int64_t ld_bf16 = 0, ld_q8 = 0, ld_d = 0;
  std::size_t bytes_bf16 = 0, bytes_q8 = 0, bytes_d = 0;
  std::size_t total() const { return bytes_bf16 + bytes_q8 + bytes_d; }
};

PrepLayout prep_layout(WType t, int64_t N, int64_t cols) {
  PrepLayout l;
  if (t == WType::kBF16) {
    l.ld_bf16 = round_up(cols, 32);
    l.bytes_bf16 = std::size_t(checked_mul(N, l.ld_bf16 * 2, "qmatmul bf16 activations"));
  } else if (t == WType::kQ8_0) {
    l.ld_q8 = round_up(cols, 64);
    l.ld_d = l.ld_q8 / 64 * 16;
    l.bytes_q8 = std::size_t(checked_mul(N, l.ld_q8, "qmatmul q8_0 activations"));
    l.bytes_d = std::size_t(checked_mul(N, l.ld_d * 4, "qmatmul q8_0 scales"));
  }
  return l;
}

// Row n of X into px's prepared form (bf16 or Q8_0); f32 and f16 read X in place.
void prepare_row(WType t, const float* x, int64_t cols, const PreparedX& px, int64_t n) {
  if (t == WType::kBF16) {
    uint16_t* dst = const_cast<uint16_t*>(px.bf16) + n * px.ld_bf16;
    for (int64_t c = 0; c < cols; ++c) dst[c] = f32_to_bf16(x[c]);
    std::fill(dst + cols, dst + px.ld_bf16, uint16_t(0));
  } else if (t == WType::kQ8_0) {
    uint8_t* u = const_cast<uint8_t*>(px.q8) + n * px.ld_q8;
    float* d = const_cast<float*>(px.q8_d) + n * px.ld_d;
    for (int64_t b = 0; b < cols / 32; ++b) {
      const float db = qmm::quantize_block_q8_0_u(x + 32 * b, u + 32 * b);
      std::fill(d + 8 * b, d + 8 * b + 8, db);
    }
    std::fill(u + cols, u + px.ld_q8, uint8_t(128));
    std::fill(d + 8 * (cols / 32), d + px.ld_d, 0.0f);
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
};

const std::vector<Isa>& isas() {
  static const std::vector<Isa> list = [] {
    std::vector<Isa> l;
    if (qmm::avx512_supported()) l.push_back({"avx512bf16+avx512vnni", qmm::tile_avx512});
    if (qmm::avx2_supported()) l.push_back({"avx2", qmm::tile_avx2});
    l.push_back({"scalar", qmm::tile_scalar});
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
    lay[i] = prep_layout(t.W.type, t.N, t.W.cols);
    offset[i + 1] = offset[i] + lay[i].total();
    const bool prep = t.W.type == WType::kBF16 || t.W.type == WType::kQ8_0;
    prep_rows[i + 1] = prep_rows[i] + (prep && t.W.rows > 0 ? t.N : 0);
    make_items(t, int32_t(i), items);
    work += double(t.N) * double(t.W.rows) * double(t.W.cols);
  }
  uint8_t* buf = scratch(offset.back());
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const QMatmulTask& t = tasks[i];
    uint8_t* p = buf + offset[i];
    px[i].x = t.X;
    px[i].ldx = t.ldx;
    px[i].bf16 = reinterpret_cast<const uint16_t*>(p);
    px[i].ld_bf16 = lay[i].ld_bf16;
    px[i].q8 = p + lay[i].bytes_bf16;
    px[i].ld_q8 = lay[i].ld_q8;
    px[i].q8_d = reinterpret_cast<const float*>(p + lay[i].bytes_bf16 + lay[i].bytes_q8);
    px[i].ld_d = lay[i].ld_d;
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
      prepare_row(t.W.type, t.X + n * t.ldx, t.W.cols, px[i], n);
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
  px.bf16 = reinterpret_cast<const uint16_t*>(buf.data());
  px.ld_bf16 = l.ld_bf16;
  px.q8 = buf.data() + l.bytes_bf16;
  px.ld_q8 = l.ld_q8;
  // The scales start 4-aligned: bytes_bf16 and bytes_q8 are multiples of 64.
  px.q8_d = reinterpret_cast<const float*>(buf.data() + l.bytes_bf16 + l.bytes_q8);
  px.ld_d = l.ld_d;
  for (int64_t n = 0; n < N; ++n) {
    px.x = X + n * ldx;
    prepare_row(W.type, px.x, W.cols, px, 0);
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
