#include "moe/train/compare.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/scaling/accounting.h"
#include "moe/train/sweep.h"
#include "moe/train/trainer.h"

namespace moe {

using json = nlohmann::json;

std::vector<json> run_compare(const CompareOptions& o) {
  MOE_CHECK(o.flops > 0, "--flops {}: expected a positive training-FLOP budget", o.flops);
  MOE_CHECK(!o.configs.empty(), "--configs: give at least one config file");
  make_dirs(o.out_dir);
  const std::string results = o.out_dir + "/results.jsonl";
  auto done = read_finished_runs(results);
  std::vector<json> out;
  for (const std::string& path : o.configs) {
    const std::string name = std::filesystem::path(path).stem().string();
    if (done.count(name)) {
      out.push_back(done[name]);
      continue;
    }
    Config cfg = load_config(path, o.overrides);
    const ModelCount mc = count_model(cfg.model, cfg.train.seq_len);
    const double tokens_per_step =
        double(cfg.train.batch_size) * cfg.train.seq_len * cfg.train.grad_accum;
    const int64_t steps = int64_t(o.flops / (mc.flops_train * tokens_per_step));
    MOE_CHECK(steps >= 1, "{}: the budget {:.3g} FLOPs is less than one step ({:.3g} FLOPs)", path,
              o.flops, mc.flops_train * tokens_per_step);
    cfg.train.steps = int(steps);
    cfg.train.warmup_steps =
        int(std::min<int64_t>(cfg.train.warmup_steps, std::max<int64_t>(1, steps / 10)));
    cfg.train.out_dir = o.out_dir + "/" + name;
    // About ten evaluations on eval_batches of the val split (the curve tools/plot.py draws);
    // the final number is the whole split, below.
    cfg.train.eval_every = int(std::max<int64_t>(1, steps / 10));
    cfg.train.checkpoint_every = 0;
    cfg.train.time_limit_s = 0;
    if (!o.quiet) {
      fmt::print("compare: {} — {} steps ({:.3g} tokens) for {:.3g} FLOPs\n", name, steps,
                 steps * tokens_per_step, o.flops);
      std::fflush(stdout);
    }
    const auto t0 = std::chrono::steady_clock::now();
    Trainer t(cfg, {.quiet = true});
    TrainResult r = t.run();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The whole validation split, same windows for every model.
    EvalResult ev = evaluate(t.model(), t.val_stream(), cfg.train.batch_size, cfg.train.seq_len);
    // The FFN kinds of the blocks, e.g. "dense+peer".
    std::string kinds;
    for (const char* k : {"dense", "moe", "peer"})
      for (int l = 0; l < cfg.model.n_layers; ++l)
        if (enum_name(cfg.model.ffn_for(l).kind) == k) {
          // Two appends, not "+" + std::string(k): GCC 12 warns (-Wrestrict, a known false
          // positive) on operator+(const char*, std::string&&).
          if (!kinds.empty()) kinds += '+';
          kinds += k;
          break;
        }
    json j = {{"name", name},
              {"config", path},
              {"kind", kinds},
              {"total_params", mc.total},
              {"active_params", mc.active},
              {"flops_per_token_train", mc.flops_train},
              {"steps", steps},
              {"tokens", steps * tokens_per_step},
              {"flops", mc.flops_train * steps * tokens_per_step},
              {"val_bpb", ev.bpb},
              {"final_train_loss", r.final_loss},
              {"wall_s", wall},
              {"tokens_per_s", steps * tokens_per_step / wall}};
    if (!ev.moe.is_null()) j["routing"] = ev.moe;
    append_line_atomic(results, j.dump());
    out.push_back(j);
  }
  if (!o.quiet) {
    fmt::print("\n{:<24} {:>10} {:>12} {:>12} {:>10} {:>8} {:>8} {:>9}  routing\n", "config",
               "kind", "total", "active", "tokens", "val bpb", "wall s", "tok/s");
    for (const json& j : out) {
      std::string routing;
      if (j.contains("routing"))
        for (auto& m : j["routing"]) {
          if (m.value("kind", "") == "peer")
            routing += fmt::format(" L{} usage {:.1f}% KL {:.2f};", m["layer"].get<int>(),
                                   100 * m["usage"].get<double>(), m["kl"].get<double>());
          else
            routing +=
                fmt::format(" L{} max/mean {:.2f} drop {:.1f}%;", m["layer"].get<int>(),
                            m["max_over_mean_load"].get<double>(), m["dropped_pct"].get<double>());
        }
      fmt::print("{:<24} {:>10} {:>12} {:>12} {:>10.3g} {:>8.4f} {:>8.0f} {:>9.0f} {}\n",
                 j["name"].get<std::string>(), j["kind"].get<std::string>(),
                 j["total_params"].get<int64_t>(), j["active_params"].get<int64_t>(),
                 j["tokens"].get<double>(), j["val_bpb"].get<double>(), j["wall_s"].get<double>(),
                 j["tokens_per_s"].get<double>(), routing);
    }
    fmt::print(
        "(results: {}; FLOPs counted as `moe params` does: router and PEER retrieval "
        "included)\n",
        results);
  }
  return out;
}

}  // namespace moe
