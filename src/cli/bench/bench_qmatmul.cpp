// moe bench qmatmul: the inference path's products with weights in their stored type (f32, f16,
// bf16, q8_0, q4_0, q4_k, q6_k), as GFLOP/s and GB/s of weight traffic, next to the machine's triad
// bandwidth (the bound of the decode GEMV, N = 1) and OpenBLAS sgemm on the same shape (the f32
// ceiling of prefill, N ≥ 8).
#include <fmt/format.h>
#include <omp.h>

#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/membw.h"
#include "moe/kernels/qmatmul.h"

namespace moe::cli {

namespace {

struct QmatmulArgs {
  int64_t rows = 1024, cols = 2048, n = 1;
  std::string type = "all", isa;
  int repeats = 5;
  int batch =
      1;  // matrices per qmatmul_many call, all reading the same X (a decode step's experts)
  double min_mib = 256;  // weights cycled through per pass: far beyond the 32 MiB L3
  bool json = false;
};

struct QmatmulResult {
  std::string type;
  int matrices = 0;
  double seconds = 0;  // best time of one product
  double gflops = 0, weight_gbps = 0;
};

// `count` matrices [rows, cols] of type t: random weights of unit size, rows packed.
std::vector<uint8_t> random_weights(WType t, int64_t rows, int64_t cols, int count) {
  const std::size_t rb = wtype_row_bytes(t, cols), bytes = rb * std::size_t(rows) * count;
  std::vector<uint8_t> buf(bytes);
  const int64_t total_rows = rows * count;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < total_rows; ++r) {
    const Rng g(5, uint64_t(r));
    uint8_t* row = buf.data() + std::size_t(r) * rb;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = g.uniform(uint64_t(c)) - 0.5f;
      if (t == WType::kF32) std::memcpy(row + 4 * c, &v, 4);
      if (t == WType::kF16 || t == WType::kBF16) {
        const uint16_t h = t == WType::kF16 ? f32_to_f16(v) : f32_to_bf16(v);
        std::memcpy(row + 2 * c, &h, 2);
      }
    }
    if (t == WType::kQ8_0)
      for (int64_t b = 0; b < cols / 32; ++b) {
        const uint16_t d = f32_to_f16(0.5f / 127.0f);
        std::memcpy(row + 34 * b, &d, 2);
        for (int j = 0; j < 32; ++j)
          row[34 * b + 2 + j] = uint8_t(g.u32(uint64_t(cols + 32 * b + j)));
      }
    // The 4- and 6-bit types: random bytes (every pattern is a valid block), then the f16 scales
    // set to sizes that give weights of about unit size.
    if (t == WType::kQ4_0 || t == WType::kQ4_K || t == WType::kQ6_K) {
      for (std::size_t i = 0; i < rb; ++i) row[i] = uint8_t(g.u32(uint64_t(cols) + i));
      const uint16_t d4 = f32_to_f16(0.5f / 8), dk = f32_to_f16(0.5f / 8 / 32),
                     d6 = f32_to_f16(0.5f / 32 / 64);
      for (int64_t b = 0; t == WType::kQ4_0 && b < cols / 32; ++b)
        std::memcpy(row + 18 * b, &d4, 2);
      for (int64_t b = 0; t == WType::kQ4_K && b < cols / 256; ++b) {
        std::memcpy(row + 144 * b, &dk, 2);
        std::memcpy(row + 144 * b + 2, &dk, 2);
      }
      for (int64_t b = 0; t == WType::kQ6_K && b < cols / 256; ++b)
        std::memcpy(row + 210 * b + 208, &d6, 2);
    }
  }
  return buf;
}

// One type's matrices (≥ min_mib of them, so each product finds its matrix in memory, not in
// cache), timed one pass through all of them at a time.
struct QmatmulCase {
  WType type;
  int matrices = 0;
  std::size_t mat_bytes = 0;
  std::vector<uint8_t> w;
  std::vector<float> X, Y;
  std::vector<QMatmulTask> tasks;
  double best = 1e30;  // seconds per product, best pass

  QmatmulCase(WType t, const QmatmulArgs& a) : type(t) {
    mat_bytes = wtype_row_bytes(t, a.cols) * std::size_t(a.rows);
    matrices = int(std::max<double>(1.0, std::ceil(a.min_mib * 1048576.0 / double(mat_bytes))));
    w = random_weights(t, a.rows, a.cols, matrices);
    X.resize(std::size_t(a.n * a.cols));
    const Rng g(6, 0);
    for (std::size_t i = 0; i < X.size(); ++i) X[i] = g.normal(i);
    Y.resize(std::size_t(a.n * a.rows) * std::size_t(a.batch));
    tasks.resize(std::size_t(a.batch));
    product(0, a);  // warm-up: thread pool, scratch
  }
  void product(int m, const QmatmulArgs& a) {  // matrices m … m + batch − 1 (cyclically)
    for (int k = 0; k < a.batch; ++k) {
      const WeightMatrix W{type, w.data() + std::size_t((m + k) % matrices) * mat_bytes, a.rows,
                           a.cols, wtype_row_bytes(type, a.cols)};
      tasks[std::size_t(k)] = {
          Y.data() + std::size_t(k) * a.n * a.rows, a.rows, X.data(), a.cols, a.n, W};
    }
    qmatmul_many(tasks);
  }
  void pass(const QmatmulArgs& a) {
    const auto t0 = BenchClock::now();
    for (int m = 0; m < matrices; m += a.batch) product(m, a);
    const int products = (matrices + a.batch - 1) / a.batch * a.batch;
    best = std::min(best, seconds_since(t0) / products);
  }
  QmatmulResult result(const QmatmulArgs& a) const {
    QmatmulResult r;
    r.type = wtype_name(type);
    r.matrices = matrices;
    r.seconds = best;
    r.gflops = 2.0 * double(a.n) * double(a.rows) * double(a.cols) / best / 1e9;
    r.weight_gbps = double(mat_bytes) / best / 1e9;
    return r;
  }
};

// OpenBLAS sgemm on the same shape, W [rows, cols] f32 read in place (transposed B): Y = X·Wᵀ.
double measure_sgemm_same_shape(const QmatmulArgs& a) {
  const int count = int(std::max<double>(
      1.0, std::ceil(a.min_mib * 1048576.0 / (4.0 * double(a.rows) * double(a.cols)))));
  const std::vector<uint8_t> w = random_weights(WType::kF32, a.rows, a.cols, count);
  std::vector<float> X(std::size_t(a.n * a.cols), 0.25f), Y(std::size_t(a.n * a.rows));
  const auto* wf = reinterpret_cast<const float*>(w.data());
  auto product = [&](int m) {
    gemm<float>(false, true, int(a.n), int(a.rows), int(a.cols), 1.f, X.data(), int(a.cols),
                wf + std::size_t(m) * a.rows * a.cols, int(a.cols), 0.f, Y.data(), int(a.rows));
  };
  product(0);
  double best = 1e30;
  for (int rep = 0; rep < a.repeats; ++rep) {
    const auto t0 = BenchClock::now();
    for (int m = 0; m < count; ++m) product(m);
    best = std::min(best, seconds_since(t0) / count);
  }
  return 2.0 * double(a.n) * double(a.rows) * double(a.cols) / best / 1e9;
}

void run_qmatmul_bench(const QmatmulArgs& a) {
  std::vector<WType> types;
  for (WType t : {WType::kF32, WType::kF16, WType::kBF16, WType::kQ8_0, WType::kQ4_0, WType::kQ4_K,
                  WType::kQ6_K})
    if (a.type == "all" || a.type == wtype_name(t)) types.push_back(t);
  MOE_CHECK(!types.empty(),
            "bench qmatmul: --type {} is not f32, f16, bf16, q8_0, q4_0, q4_k, q6_k or all",
            a.type);
  // A block type runs only where cols is whole blocks (with --type all the others are skipped).
  auto fits = [&](WType t) {
    const int64_t block = t == WType::kQ8_0 || t == WType::kQ4_0   ? 32
                          : t == WType::kQ4_K || t == WType::kQ6_K ? 256
                                                                   : 1;
    return a.cols % block == 0;
  };
  MOE_CHECK(a.type == "all" || fits(types[0]), "bench qmatmul: {} needs whole blocks, cols {}",
            a.type, a.cols);
  if (!a.isa.empty()) qmatmul_force_isa(a.isa);
  // Other processes share the cores: each repeat measures the triad and then every type once,
  // and each keeps its best, so the ratios compare passes from the same minutes.
  std::vector<std::unique_ptr<QmatmulCase>> cases;
  for (WType t : types)
    if (fits(t)) cases.push_back(std::make_unique<QmatmulCase>(t, a));
  double triad = 0;
  for (int rep = 0; rep < a.repeats; ++rep) {
    triad = std::max(triad, measure_triad_gbps(1));
    for (auto& c : cases) c->pass(a);
  }
  std::vector<QmatmulResult> rs;
  for (const auto& c : cases) rs.push_back(c->result(a));
  const double sgemm = measure_sgemm_same_shape(a);
  const int threads = omp_get_max_threads();
  if (a.json) {
    nlohmann::json j = {{"rows", a.rows},
                        {"cols", a.cols},
                        {"n", a.n},
                        {"threads", threads},
                        {"isa", qmatmul_isa()},
                        {"triad_gbps", triad},
                        {"sgemm_gflops", sgemm},
                        {"results", nlohmann::json::array()}};
    for (const QmatmulResult& r : rs)
      j["results"].push_back({{"type", r.type},
                              {"gflops", r.gflops},
                              {"weight_gbps", r.weight_gbps},
                              {"fraction_of_triad", r.weight_gbps / triad},
                              {"us_per_product", r.seconds * 1e6},
                              {"matrices", r.matrices}});
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print(
      "qmatmul Y[{}, {}] = X[{}, {}]·Wᵀ, {} per qmatmul_many call, {} threads, isa {}; triad "
      "{:.1f} "
      "GB/s\n",
      a.n, a.rows, a.n, a.cols, a.batch, threads, qmatmul_isa(), triad);
  for (const QmatmulResult& r : rs)
    fmt::print("  {:5} {:9.1f} us  {:8.1f} GFLOP/s  {:6.1f} GB/s of weights ({:.0f}% of triad)\n",
               r.type, r.seconds * 1e6, r.gflops, r.weight_gbps, 100 * r.weight_gbps / triad);
  fmt::print("  OpenBLAS sgemm (f32 W, same shape): {:.1f} GFLOP/s\n", sgemm);
}

}  // namespace

void register_bench_qmatmul(CLI::App& bench) {
  auto a = std::make_shared<QmatmulArgs>();
  CLI::App* q = bench.add_subcommand(
      "qmatmul",
      "Products with weights in their stored type (f32/f16/bf16/q8_0/q4_0/q4_k/q6_k) vs triad "
      "and sgemm");
  q->add_option("--rows", a->rows, "rows of W (outputs)")->check(CLI::PositiveNumber);
  q->add_option("--cols", a->cols, "cols of W (inputs)")->check(CLI::PositiveNumber);
  q->add_option("--n", a->n, "rows of X (tokens)")->check(CLI::PositiveNumber);
  q->add_option("--type", a->type, "f32 | f16 | bf16 | q8_0 | q4_0 | q4_k | q6_k | all");
  q->add_option("--batch", a->batch, "matrices per qmatmul_many call, sharing X")
      ->check(CLI::PositiveNumber);
  q->add_option("--isa", a->isa, "force a path (see qmatmul_isas), default the fastest");
  q->add_option("--repeats", a->repeats, "timed passes, each with a triad pass (best of each)")
      ->check(CLI::PositiveNumber);
  q->add_option("--min-mib", a->min_mib, "MiB of weights cycled per pass")
      ->check(CLI::PositiveNumber);
  q->add_flag("--json", a->json, "print one JSON object");
  q->callback([a] {
    check_blas_is_openmp();
    run_qmatmul_bench(*a);
  });
}

}  // namespace moe::cli
