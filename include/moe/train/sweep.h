// moe sweep: a grid of small trainings (model width, tokens, granularity) run one after
// another, each appending {name, N, D, G, E, flops, loss, val_bpb} to <out_dir>/runs.jsonl —
// the input of `moe scaling fit`. Resumable: a run whose name is already in runs.jsonl is
// skipped. Models follow the paper's shape: d_model = 64·n_blocks, heads of 64, a non-gated
// (GELU) FFN of width 4·d_model split into E·G experts of width 4·d_model/G (docs/SCALING.md).
//
// Grid file (JSON): {"base": "configs/x.json" (optional), "out_dir": "runs/sweep",
//   "d_model": [64, 128], "tokens": [1e6, 2e6], "granularity": [1, 2, 4], "expansion": 4,
//   "router": "topk" | "expert_choice" (default topk), "set": ["train.lr=2e-3", ...]}
#pragma once
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/dist/communicator.h"

namespace moe {

struct SweepSummary {
  int ran = 0, skipped = 0;
  std::string runs_file;
};

// What a sweep reports while it runs (the caller shows it; the sweep prints nothing).
struct SweepProgress {
  // Before run `name` trains, for `steps` optimizer steps.
  std::function<void(const std::string& name, int steps)> run_started = [](auto&&...) {};
  // After it: the line just appended to runs.jsonl (name, N, D, G, E, d_model, flops, loss,
  // val_bpb).
  std::function<void(const nlohmann::json& run)> run_finished = [](auto&&...) {};
};

// Every run trains over `comm` (all its ranks call run_sweep with the same grid).
SweepSummary run_sweep(const std::string& grid_path, Communicator& comm,
                       const SweepProgress& progress = {});

// The finished runs recorded in a JSON-lines file (runs.jsonl, results.jsonl), by "name"; an
// absent file is no runs, and unreadable lines (none are written half) are skipped. Shared by
// the resumable `moe sweep` and `moe compare`.
std::map<std::string, nlohmann::json> read_finished_runs(const std::string& path);

}  // namespace moe
