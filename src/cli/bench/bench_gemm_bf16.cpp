// moe bench gemm-bf16: our bf16 GEMM (kernels/gemm_bf16.h) against OpenBLAS sgemm on the
// products training runs: the dense benchmark model's projections (configs/bench-dense.json:
// C = 256, SwiGLU d_ff = 704, batch 16 × 256 = 4096 tokens) and the expert panels of the two MoE
// shapes of `moe bench moe` (C = 512, 4096 tokens: E=8/k=2/H=1024 → 1024 rows per expert,
// E=64/k=8/H=128 → 512), forward and backward. GFLOP/s = 2·M·N·K / median time, side by side.
// oneDNN's bf16 matmul on the same shapes, by the same rule: tools/onednn_ref/onednn_gemm_bf16
// (moe never links oneDNN), one shape per run, the shapes as this command's --json lists them.
// Where the CPU runs the amx path, the avx512bf16 path is timed beside it (column "avx512").
#include <fmt/format.h>
#include <omp.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench.h"
#include "moe/core/half.h"
#include "moe/core/rng.h"
#include "moe/kernels/cpu_features.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/gemm_bf16.h"

namespace moe::cli {

namespace {

struct GemmBf16Args {
  int repeats = 5;
  bool json = false;
};

// One product of a training step: C[M,N] = op(A)·op(B), `count` of them per layer.
struct Shape {
  const char* group;
  const char* name;
  bool ta, tb;
  int M, N, K;
  int count;
};

// Forward y = x·Wᵀ (NT), backward dx = dy·W (NN) and dW = dyᵀ·x (TN), as nn/linear.h and the
// MoE experts call them.
std::vector<Shape> training_shapes() {
  const int T = 4096, C = 256, H = 704;  // dense bench model
  std::vector<Shape> s = {
      {"dense", "attn q|k|v|o fwd", false, true, T, C, C, 4},
      {"dense", "attn dx", false, false, T, C, C, 4},
      {"dense", "attn dW", true, false, C, C, T, 4},
      {"dense", "ffn gate+up fwd", false, true, T, 2 * H, C, 1},
      {"dense", "ffn down fwd", false, true, T, C, H, 1},
      {"dense", "ffn down dW", true, false, C, H, T, 1},
      {"dense", "ffn dhidden", false, false, T, H, C, 1},
      {"dense", "ffn gate+up dx", false, false, T, C, 2 * H, 1},
      {"dense", "ffn gate+up dW", true, false, 2 * H, C, T, 1},
  };
  struct Moe {
    const char* group;
    int n, H;  // rows per expert, expert width
  };
  const int Cm = 512;
  for (Moe m :
       {Moe{"moe E8k2H1024", 4096 * 2 / 8, 1024}, Moe{"moe E64k8H128", 4096 * 8 / 64, 128}}) {
    s.push_back({m.group, "gate|up fwd", false, true, m.n, m.H, Cm, 2});
    s.push_back({m.group, "down fwd", false, true, m.n, Cm, m.H, 1});
    s.push_back({m.group, "dh (down)", false, false, m.n, m.H, Cm, 1});
    s.push_back({m.group, "dW down", true, false, Cm, m.H, m.n, 1});
    s.push_back({m.group, "dx (gate|up)", false, false, m.n, Cm, m.H, 2});
    s.push_back({m.group, "dW gate|up", true, false, m.H, Cm, m.n, 2});
  }
  return s;
}

struct Timing {
  double ours = 0, sgemm = 0, widen = 0;  // median seconds
  double avx512 = 0;                      // the avx512bf16 path where ours is amx, else 0
};

// Whether the avx512bf16 path gets its own column: when it is not the one `ours` runs.
bool second_path() { return gemm_bf16_path() == Bf16GemmPath::kAmx; }

template <typename F>
double median_seconds(int repeats, F&& run) {
  run();  // warm: caches, pages, packing buffers
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = BenchClock::now();
    run();
    t.push_back(seconds_since(t0));
  }
  return median(t);
}

Timing time_shape(const Shape& s, int repeats) {
  const std::size_t a_n = std::size_t(s.M) * s.K, b_n = std::size_t(s.K) * s.N;
  std::vector<float> a(a_n), b(b_n), c(std::size_t(s.M) * s.N);
  const Rng r(1, 2);
  for (std::size_t i = 0; i < a_n; ++i) a[i] = r.normal(i);
  for (std::size_t i = 0; i < b_n; ++i) b[i] = 0.02f * r.normal(a_n + i);
  std::vector<uint16_t> ah(a_n), bh(b_n);
  round_to_bf16(ah.data(), a.data(), a_n);
  round_to_bf16(bh.data(), b.data(), b_n);
  const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
  Timing t;
  t.ours = median_seconds(repeats, [&] {
    gemm_bf16(s.ta, s.tb, s.M, s.N, s.K, 1.f, ah.data(), lda, bh.data(), ldb, 0.f, c.data(), s.N);
  });
  if (second_path())
    t.avx512 = median_seconds(repeats, [&] {
      gemm_bf16(s.ta, s.tb, s.M, s.N, s.K, 1.f, ah.data(), lda, bh.data(), ldb, 0.f, c.data(), s.N,
                Bf16GemmPath::kAvx512Bf16);
    });
  t.widen = median_seconds(repeats, [&] {
    gemm_bf16(s.ta, s.tb, s.M, s.N, s.K, 1.f, ah.data(), lda, bh.data(), ldb, 0.f, c.data(), s.N,
              Bf16GemmPath::kWiden);
  });
  t.sgemm = median_seconds(repeats, [&] {
    gemm<float>(s.ta, s.tb, s.M, s.N, s.K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), s.N);
  });
  return t;
}

double gflops(const Shape& s, double seconds) {
  return seconds > 0 ? 2.0 * s.M * s.N * s.K / seconds / 1e9 : 0;
}

void run_gemm_bf16(const GemmBf16Args& g) {
  const std::vector<Shape> shapes = training_shapes();
  nlohmann::json rows = nlohmann::json::array();
  struct Sum {
    double flops = 0, ours = 0, sgemm = 0, widen = 0, avx512 = 0;
  };
  const bool two = second_path();
  const std::string extra_head = two ? fmt::format(" {:>8}", "avx512") : "";
  auto extra = [&](double rate) { return two ? fmt::format(" {:>8.1f}", rate) : std::string(); };
  std::vector<std::pair<std::string, Sum>> groups;
  if (!g.json)
    fmt::print("bf16 GEMM, GFLOP/s ({} threads; path {}; {}; CPU: {})\n", omp_get_max_threads(),
               bf16_gemm_path_name(gemm_bf16_path()), blas_info(), cpu_features_string());
  if (!g.json)
    fmt::print("{:<14} {:<18} {:>2} {:>5} {:>5} {:>5} {:>8}{} {:>8} {:>8} {:>6}\n", "group",
               "product", "op", "M", "N", "K", "bf16", extra_head, "widen", "sgemm", "×sgemm");
  for (const Shape& s : shapes) {
    const Timing t = time_shape(s, g.repeats);
    if (groups.empty() || groups.back().first != s.group) groups.push_back({s.group, {}});
    Sum& sum = groups.back().second;
    const double f = 2.0 * s.M * s.N * s.K * s.count;
    sum.flops += f;
    sum.ours += t.ours * s.count;
    sum.sgemm += t.sgemm * s.count;
    sum.widen += t.widen * s.count;
    sum.avx512 += t.avx512 * s.count;
    const std::string op = std::string(s.ta ? "T" : "N") + (s.tb ? "T" : "N");
    rows.push_back({{"group", s.group},
                    {"product", s.name},
                    {"op", op},
                    {"M", s.M},
                    {"N", s.N},
                    {"K", s.K},
                    {"count", s.count},
                    {"bf16_gflops", gflops(s, t.ours)},
                    {"widen_gflops", gflops(s, t.widen)},
                    {"sgemm_gflops", gflops(s, t.sgemm)}});
    if (two) rows.back()["avx512bf16_gflops"] = gflops(s, t.avx512);
    if (!g.json)
      fmt::print("{:<14} {:<18} {:>2} {:>5} {:>5} {:>5} {:>8.1f}{} {:>8.1f} {:>8.1f} {:>6.2f}\n",
                 s.group, s.name, op, s.M, s.N, s.K, gflops(s, t.ours), extra(gflops(s, t.avx512)),
                 gflops(s, t.widen), gflops(s, t.sgemm), t.sgemm / t.ours);
  }
  nlohmann::json totals = nlohmann::json::object();
  for (const auto& [name, s] : groups) {
    auto rate = [&](double sec) { return sec > 0 ? s.flops / sec / 1e9 : 0.0; };
    totals[name] = {{"bf16_gflops", rate(s.ours)},
                    {"widen_gflops", rate(s.widen)},
                    {"sgemm_gflops", rate(s.sgemm)},
                    {"bf16_over_sgemm", s.sgemm / s.ours}};
    if (two) totals[name]["avx512bf16_gflops"] = rate(s.avx512);
    if (!g.json)
      fmt::print("{:<14} {:<18} {:>2} {:>5} {:>5} {:>5} {:>8.1f}{} {:>8.1f} {:>8.1f} {:>6.2f}\n",
                 name, "all (× count)", "", "", "", "", rate(s.ours), extra(rate(s.avx512)),
                 rate(s.widen), rate(s.sgemm), s.sgemm / s.ours);
  }
  if (g.json)
    fmt::print("{}\n", nlohmann::json({{"threads", omp_get_max_threads()},
                                       {"path", bf16_gemm_path_name(gemm_bf16_path())},
                                       {"cpu", cpu_features_string()},
                                       {"blas", blas_info()},
                                       {"shapes", rows},
                                       {"totals", totals}})
                           .dump());
}

}  // namespace

void register_bench_gemm_bf16(CLI::App& bench) {
  auto g = std::make_shared<GemmBf16Args>();
  CLI::App* gb =
      bench.add_subcommand("gemm-bf16", "bf16 GEMM vs OpenBLAS sgemm on training's shapes");
  gb->add_option("--repeats", g->repeats, "timed repeats (median)")->check(CLI::PositiveNumber);
  gb->add_flag("--json", g->json, "print one JSON object");
  gb->callback([g] {
    check_blas_is_openmp();
    run_gemm_bf16(*g);
  });
}

}  // namespace moe::cli
