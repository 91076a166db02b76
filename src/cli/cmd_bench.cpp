// moe bench sgemm | train: measurements that bench/run_bench.sh puts side by side with PyTorch.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "commands.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/kernels/gemm.h"
#include "moe/model/transformer.h"
#include "moe/train/optimizer.h"

namespace moe::cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

void register_bench(CLI::App& app) {
  CLI::App* b = app.add_subcommand("bench", "Benchmarks (see bench/ for the side-by-side runs)");
  b->require_subcommand(1);

  struct SgemmArgs {
    int size = 2048, repeats = 5;
    bool json = false;
  };
  auto s = std::make_shared<SgemmArgs>();
  CLI::App* sg = b->add_subcommand("sgemm", "OpenBLAS sgemm throughput: the compute ceiling");
  sg->add_option("--size", s->size, "M = N = K")->check(CLI::PositiveNumber);
  sg->add_option("--repeats", s->repeats, "timed repeats (median)")->check(CLI::PositiveNumber);
  sg->add_flag("--json", s->json, "print one JSON object");
  sg->callback([s] {
    check_blas_is_openmp();
    const int n = s->size;
    std::vector<float> A(std::size_t(n) * n), B(A.size()), C(A.size());
    Rng r(1, 1);
    for (std::size_t i = 0; i < A.size(); ++i) {
      A[i] = r.uniform(2 * i) - 0.5f;
      B[i] = r.uniform(2 * i + 1) - 0.5f;
    }
    gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);  // warm
    std::vector<double> t;
    for (int i = 0; i < s->repeats; ++i) {
      auto t0 = Clock::now();
      gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);
      t.push_back(seconds_since(t0));
    }
    const double gf = 2.0 * n * n * n / median(t) / 1e9;
    if (s->json)
      fmt::print("{}\n", nlohmann::json({{"size", n}, {"gflops", gf},
                                         {"threads", omp_get_max_threads()},
                                         {"blas", blas_info()}}).dump());
    else
      fmt::print("sgemm {}³: {:.1f} GFLOP/s ({} threads; {})\n", n, gf, omp_get_max_threads(),
                 blas_info());
  });

  struct TrainArgs {
    std::string config;
    std::vector<std::string> sets;
    int steps = 10, warmup = 2;
    bool json = false;
  };
  auto t = std::make_shared<TrainArgs>();
  CLI::App* tr = b->add_subcommand(
      "train", "Training throughput of a config on random tokens (forward, backward, AdamW)");
  tr->add_option("--config", t->config, "config file")->required();
  tr->add_option("--set", t->sets, "override a config field (repeatable)");
  tr->add_option("--steps", t->steps, "timed steps (median)")->check(CLI::PositiveNumber);
  tr->add_option("--warmup", t->warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  tr->add_flag("--json", t->json, "print one JSON object");
  tr->callback([t] {
    check_blas_is_openmp();
    Config cfg = load_config(t->config, t->sets);
    if (cfg.train.threads > 0) omp_set_num_threads(cfg.train.threads);
    const int B = cfg.train.batch_size, T = cfg.train.seq_len, V = cfg.model.vocab_size;
    Transformer model(cfg.model, B, T);
    model.params().initialize(cfg.train.seed);
    AdamWOptimizer opt(model.params(), cfg.train);
    std::vector<int32_t> x(std::size_t(B) * T), y(x.size());
    Rng r(cfg.train.seed, stream_id(kPurposeData, 7));
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = int32_t(r.u32(2 * i) % V);
      y[i] = int32_t(r.u32(2 * i + 1) % V);
    }
    std::vector<double> times;
    double loss = 0;
    for (int i = 0; i < t->warmup + t->steps; ++i) {
      auto t0 = Clock::now();
      model.params().zero_grad();
      StepInfo info;
      info.step = i;
      loss = model.forward(x.data(), y.data(), B, T, info, 1.f);
      model.backward();
      opt.step(i);
      if (i >= t->warmup) times.push_back(seconds_since(t0));
    }
    const double ms = median(times) * 1e3;
    const double tps = double(B) * T / (ms / 1e3);
    if (t->json)
      fmt::print("{}\n", nlohmann::json({{"ms_per_step", ms}, {"tokens_per_s", tps},
                                         {"batch", B}, {"seq_len", T},
                                         {"threads", omp_get_max_threads()}, {"loss", loss}})
                             .dump());
    else
      fmt::print("train step: {:.1f} ms/step, {:.0f} tokens/s (batch {} × {}, {} threads)\n", ms,
                 tps, B, T, omp_get_max_threads());
  });
}

}  // namespace moe::cli
