#include "moe/train/compare.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/data/corpus.h"
#include "moe/scaling/accounting.h"
#include "moe/train/sweep.h"
#include "moe/train/trainer.h"

namespace moe {

using json = nlohmann::json;

namespace {

// The val split's document groups, when its manifest records them (data prepared by a moe that
// writes document_groups) and there are at least two groups; nothing otherwise — a comparison
// still runs on older or single-group data, it just reports no specialisation.
std::optional<TokenGroups> val_groups(const std::string& data_dir, const data::TokenStream& val) {
  data::SplitDocuments docs;
  try {
    docs = data::read_split_documents(data_dir, data::Split::kVal);
  } catch (const Error&) {
    return std::nullopt;
  }
  if (docs.groups.size() < 2) return std::nullopt;
  TokenGroups g;
  g.names = docs.groups;
  g.of_token = data::token_groups(val, docs.bytes, docs.group_of);
  return g;
}

}  // namespace

std::string compare_results_path(const CompareOptions& o) { return o.out_dir + "/results.jsonl"; }

std::vector<json> run_compare(const CompareOptions& o, Communicator& comm) {
  MOE_CHECK(o.flops > 0, "compare: flops {}: expected a positive training-FLOP budget", o.flops);
  MOE_CHECK(!o.configs.empty(), "compare: configs: give at least one config file");
  make_dirs(o.out_dir);
  const std::string results = compare_results_path(o);
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
    o.run_started(name, steps, steps * tokens_per_step, o.flops);
    const auto t0 = std::chrono::steady_clock::now();
    // A run without a line in results.jsonl did not finish: it starts again from scratch.
    TrainOptions opts;
    opts.overwrite = true;
    Trainer t(cfg, comm, opts);
    TrainResult r = t.run();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The whole validation split, same windows for every model.
    // With the documents' groups in the data's manifest (Brown: genres), the experts chosen per
    // group too: expert specialisation (train/routing_groups.h).
    std::optional<TokenGroups> groups = val_groups(cfg.data.dir, t.val_stream());
    EvalResult ev = evaluate(t.model(), t.val_stream(), cfg.train.batch_size, cfg.train.seq_len, 0,
                             groups ? &*groups : nullptr);
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
    if (!ev.by_group.is_null()) j["routing_by_group"] = ev.by_group;
    append_line_atomic(results, j.dump());
    out.push_back(j);
  }
  return out;
}

}  // namespace moe
