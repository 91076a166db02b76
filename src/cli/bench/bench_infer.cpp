// moe bench infer: prompt processing (pp) and text generation (tg) speed of the inference engine
// (infer/engine.h) on a model file, measured as llama-bench measures llama.cpp, so that
// bench/run_bench.sh `infer` can put the two side by side on the same GGUF file
// (tools/llama_ref/llama_ref_bench.cpp is the other side, measuring the same way):
//
//   pp: one feed() of PP tokens from an empty cache (max_batch = PP: one prefill pass);
//   tg: TG feed() calls of one token each, from an empty cache;
//   one warm-up of each first (pp: a whole PP run; tg: one token), then one timed run of each.
// KV cache f32, context PP + TG, the weights read in place from the file's map. Token ids: the
// benchmark's fixed sequence (splitmix64 from seed 1234, id = value mod vocabulary; pp feeds the
// first PP ids, tg the next TG), the same as llama_ref bench's.
//
// Also reported: peak resident memory (getrusage ru_maxrss; the mapped file's pages count once
// touched, as on llama.cpp's side), the bytes of weights one decode step reads
// (Engine::active_weight_bytes_per_token) and, from it, tg's memory traffic in GB/s beside a
// streaming-triad bandwidth measured right after.
#include <fmt/format.h>
#include <omp.h>
#include <sys/resource.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench.h"
#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/formats/model_file.h"
#include "moe/infer/engine.h"
#include "moe/kernels/membw.h"

namespace moe::cli {

namespace {

struct InferArgs {
  std::string checkpoint;
  int pp = 512, tg = 128, threads = 0;
  bool json = false;
};

struct InferResult {
  double load_s = 0, pp_s = 0, tg_s = 0, triad_gbps = 0;
  uint64_t peak_rss = 0, active_bytes = 0, weight_bytes = 0, owned_bytes = 0, kv_bytes = 0;
  int context = 0;
};

// The benchmark's token ids (the same rule as llama_ref bench): splitmix64 from seed 1234.
std::vector<int32_t> bench_token_ids(int n, int vocab) {
  uint64_t state = 1234;
  std::vector<int32_t> ids(n);
  for (auto& id : ids) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    id = static_cast<int32_t>(z % static_cast<uint64_t>(vocab));
  }
  return ids;
}

// Seconds for one pp run: PP tokens in one feed from an empty cache.
double run_pp(infer::Engine& e, const std::vector<int32_t>& ids, int pp) {
  e.reset();
  const auto t0 = BenchClock::now();
  e.feed(std::span<const int32_t>(ids.data(), pp));
  return seconds_since(t0);
}

// Seconds for one tg run: n single-token feeds from an empty cache.
double run_tg(infer::Engine& e, const std::vector<int32_t>& ids, int pp, int n) {
  e.reset();
  const auto t0 = BenchClock::now();
  for (int i = 0; i < n; ++i) e.feed(std::span<const int32_t>(&ids[pp + i], 1));
  return seconds_since(t0);
}

InferResult measure_infer(const InferArgs& a) {
  InferResult r;
  const auto t_load = BenchClock::now();
  const auto reader = formats::open_model(a.checkpoint);
  infer::EngineOptions opt;
  opt.context = a.pp + a.tg;
  opt.max_batch = a.pp;
  MOE_CHECK(opt.context <= reader->config().max_seq_len,
            "{}: --pp {} + --tg {} = {} positions, over the model's context of {}", a.checkpoint,
            a.pp, a.tg, opt.context, reader->config().max_seq_len);
  const auto engine = infer::Engine::open(*reader, opt);
  r.load_s = seconds_since(t_load);

  const auto ids = bench_token_ids(a.pp + a.tg, engine->config().vocab_size);
  run_pp(*engine, ids, a.pp);     // warm-up, as llama-bench: a whole pp run
  run_tg(*engine, ids, a.pp, 1);  // and one generated token
  r.pp_s = run_pp(*engine, ids, a.pp);
  r.tg_s = run_tg(*engine, ids, a.pp, a.tg);

  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);  // before the triad's arrays, which are not the engine's
  r.peak_rss = uint64_t(ru.ru_maxrss) * 1024;
  r.active_bytes = engine->active_weight_bytes_per_token();
  r.weight_bytes = engine->weight_bytes();
  r.owned_bytes = engine->owned_bytes();
  r.kv_bytes = engine->kv_bytes();
  r.context = engine->context();
  r.triad_gbps = moe::measure_triad_gbps();
  return r;
}

void print_infer(const InferArgs& a, const InferResult& r) {
  const double pp_tps = a.pp / r.pp_s, tg_tps = a.tg / r.tg_s;
  const double tg_gbps = double(r.active_bytes) * tg_tps / 1e9;
  if (a.json) {
    fmt::print("{}\n", nlohmann::json({{"pp_tokens_per_s", pp_tps},
                                       {"tg_tokens_per_s", tg_tps},
                                       {"pp_s", r.pp_s},
                                       {"tg_s", r.tg_s},
                                       {"load_s", r.load_s},
                                       {"peak_rss_bytes", r.peak_rss},
                                       {"active_weight_bytes_per_token", r.active_bytes},
                                       {"weight_bytes", r.weight_bytes},
                                       {"owned_bytes", r.owned_bytes},
                                       {"kv_bytes", r.kv_bytes},
                                       {"tg_bandwidth_gbps", tg_gbps},
                                       {"triad_gbps", r.triad_gbps},
                                       {"pp", a.pp},
                                       {"tg", a.tg},
                                       {"context", r.context},
                                       {"threads", omp_get_max_threads()}})
                           .dump());
    return;
  }
  fmt::print(
      "{}: pp{} {:.2f} tokens/s, tg{} {:.2f} tokens/s ({} threads; load {:.2f} s)\n"
      "  peak RSS {:.1f} MiB (mapped weights count once touched); weights {:.1f} MiB as stored, "
      "{:.1f} MiB f32 copies, KV cache {:.1f} MiB\n"
      "  tg reads {:.1f} MiB of weights per token: {:.2f} GB/s = {:.1f}% of a {:.2f} GB/s triad\n",
      a.checkpoint, a.pp, pp_tps, a.tg, tg_tps, omp_get_max_threads(), r.load_s,
      r.peak_rss / 1048576.0, r.weight_bytes / 1048576.0, r.owned_bytes / 1048576.0,
      r.kv_bytes / 1048576.0, r.active_bytes / 1048576.0, tg_gbps, 100 * tg_gbps / r.triad_gbps,
      r.triad_gbps);
}

}  // namespace

void register_bench_infer(CLI::App& bench) {
  auto a = std::make_shared<InferArgs>();
  CLI::App* ib = bench.add_subcommand(
      "infer",
      "Inference speed on a model file, as llama-bench measures it: pp = one prefill of --pp "
      "tokens, tg = --tg single-token decodes, each from an empty f32 KV cache after a warm-up");
  ib->add_option("--checkpoint", a->checkpoint, "model file (.gguf, HF directory, moe checkpoint)")
      ->required();
  ib->add_option("--pp", a->pp, "prompt tokens, fed in one pass")->check(CLI::PositiveNumber);
  ib->add_option("--tg", a->tg, "generated tokens, fed one at a time")->check(CLI::PositiveNumber);
  ib->add_option("--threads", a->threads, "OpenMP threads (0 = default)")
      ->check(CLI::NonNegativeNumber);
  ib->add_flag("--json", a->json, "print one JSON object");
  ib->callback([a] {
    set_threads(a->threads, "--threads");
    print_infer(*a, measure_infer(*a));
  });
}

}  // namespace moe::cli
