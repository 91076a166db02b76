// moe bench sgemm: OpenBLAS sgemm throughput, the compute ceiling the other benchmarks' FLOP
// rates are divided by (bench/run_bench.sh measures it in the same run).
#include <fmt/format.h>
#include <omp.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench.h"
#include "moe/core/rng.h"
#include "moe/kernels/gemm.h"

namespace moe::cli {

namespace {

struct SgemmArgs {
  int size = 2048, repeats = 5;
  bool json = false;
};

// C = A·B with A, B, C [n, n] drawn U(±0.5): one warm-up product, then the median of the
// timed repeats, in GFLOP/s (2n³ FLOPs per product).
double measure_sgemm_gflops(int n, int repeats) {
  std::vector<float> A(std::size_t(n) * n), B(A.size()), C(A.size());
  Rng r(1, 1);
  for (std::size_t i = 0; i < A.size(); ++i) {
    A[i] = r.uniform(2 * i) - 0.5f;
    B[i] = r.uniform(2 * i + 1) - 0.5f;
  }
  gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);  // warm
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = BenchClock::now();
    gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);
    t.push_back(seconds_since(t0));
  }
  return 2.0 * n * n * n / median(t) / 1e9;
}

void print_sgemm(const SgemmArgs& s, double gf) {
  const int n = s.size;
  if (s.json)
    fmt::print("{}\n", nlohmann::json({{"size", n},
                                       {"gflops", gf},
                                       {"threads", omp_get_max_threads()},
                                       {"blas", blas_info()}})
                           .dump());
  else
    fmt::print("sgemm {}³: {:.1f} GFLOP/s ({} threads; {})\n", n, gf, omp_get_max_threads(),
               blas_info());
}

}  // namespace

void register_bench_sgemm(CLI::App& bench) {
  auto s = std::make_shared<SgemmArgs>();
  CLI::App* sg = bench.add_subcommand("sgemm", "OpenBLAS sgemm throughput: the compute ceiling");
  sg->add_option("--size", s->size, "M = N = K")->check(CLI::PositiveNumber);
  sg->add_option("--repeats", s->repeats, "timed repeats (median)")->check(CLI::PositiveNumber);
  sg->add_flag("--json", s->json, "print one JSON object");
  sg->callback([s] {
    check_blas_is_openmp();
    print_sgemm(*s, measure_sgemm_gflops(s->size, s->repeats));
  });
}

}  // namespace moe::cli
