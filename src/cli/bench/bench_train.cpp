// moe bench train: a whole model's training step (zero grads, forward, backward, AdamW) on random
// tokens, for a config: bench/run_bench.sh's dense benchmark against bench/pytorch_dense.py.
#include <fmt/format.h>
#include <omp.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench.h"
#include "moe/core/rng.h"
#include "moe/core/threading.h"
#include "moe/kernels/gemm.h"
#include "moe/model/transformer.h"
#include "moe/train/config.h"
#include "moe/train/optimizer.h"

namespace moe::cli {

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  int steps = 10, warmup = 2;
  bool json = false;
};

struct TrainResult {
  double ms_per_step = 0;  // median of the timed steps
  double loss = 0;         // of the last step
  int batch = 0, seq_len = 0;
  std::string precision = "fp32";
};

TrainResult measure_train_step(const Config& cfg, int warmup, int steps) {
  const int B = cfg.train.batch_size, T = cfg.train.seq_len, V = cfg.model.vocab_size;
  Transformer model(cfg.model, B, T);
  model.params().initialize(cfg.train.seed);
  model.set_precision(cfg.train.precision);
  AdamWOptimizer opt(model.params(), cfg.train);
  std::vector<int32_t> x(std::size_t(B) * T), y(x.size());
  Rng r(cfg.train.seed, stream_id(kPurposeData, 7));
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = int32_t(r.u32(2 * i) % V);
    y[i] = int32_t(r.u32(2 * i + 1) % V);
  }
  std::vector<double> times;
  double loss = 0;
  for (int i = 0; i < warmup + steps; ++i) {
    auto t0 = BenchClock::now();
    model.params().zero_grad();
    model.refresh_low_precision();  // bf16: once per step, as the trainer does (timed with it)
    StepInfo info;
    info.step = i;
    loss = model.forward(x.data(), y.data(), B, T, info, 1.f);
    model.backward();
    opt.step(i);
    if (i >= warmup) times.push_back(seconds_since(t0));
  }
  return {median(times) * 1e3, loss, B, T, enum_name(cfg.train.precision)};
}

void print_train(const TrainArgs& t, const TrainResult& r) {
  const double ms = r.ms_per_step;
  const double tps = double(r.batch) * r.seq_len / (ms / 1e3);
  if (t.json)
    fmt::print("{}\n", nlohmann::json({{"ms_per_step", ms},
                                       {"tokens_per_s", tps},
                                       {"batch", r.batch},
                                       {"seq_len", r.seq_len},
                                       {"threads", omp_get_max_threads()},
                                       {"precision", r.precision},
                                       {"loss", r.loss}})
                           .dump());
  else
    fmt::print("train step: {:.1f} ms/step, {:.0f} tokens/s (batch {} × {}, {} threads, {})\n", ms,
               tps, r.batch, r.seq_len, omp_get_max_threads(), r.precision);
}

}  // namespace

void register_bench_train(CLI::App& bench) {
  auto t = std::make_shared<TrainArgs>();
  CLI::App* tr = bench.add_subcommand(
      "train", "Training throughput of a config on random tokens (forward, backward, AdamW)");
  tr->add_option("--config", t->config, "config file")->required();
  tr->add_option("--set", t->sets, "override a config field (repeatable)");
  tr->add_option("--steps", t->steps, "timed steps (median)")->check(CLI::PositiveNumber);
  tr->add_option("--warmup", t->warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  tr->add_flag("--json", t->json, "print one JSON object");
  tr->callback([t] {
    check_blas_is_openmp();
    Config cfg = load_config(t->config, t->sets);
    set_threads(cfg.train.threads, "config: field train.threads");
    print_train(*t, measure_train_step(cfg, t->warmup, t->steps));
  });
}

}  // namespace moe::cli
