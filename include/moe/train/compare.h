// moe compare: train several configs to the same training-FLOP budget (as `moe params` counts
// it: router and PEER retrieval included) on the same data and seed, then evaluate each on the
// whole validation split and print one table. Resumable: results are appended to
// <out_dir>/results.jsonl and a config whose name is already there is not retrained.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/dist/communicator.h"

namespace moe {

struct CompareOptions {
  double flops = 0;  // training-FLOP budget of each config
  std::vector<std::string> configs;
  std::vector<std::string> overrides;  // "field=value", applied to every config
  std::string out_dir = "runs/compare";
  // Before config `name` trains: its steps, the tokens they see and the budget (the caller
  // shows it; run_compare prints nothing).
  std::function<void(const std::string& name, int64_t steps, double tokens, double flops)>
      run_started = [](auto&&...) {};
};

// <out_dir>/results.jsonl, where run_compare appends each config's result.
std::string compare_results_path(const CompareOptions& opts);

// Trains over `comm` (all its ranks call run_compare with the same options). Returns one JSON
// object per config (in the order given): name, config, kind, total_params, active_params,
// flops_per_token_train, steps, tokens, flops, val_bpb, final_train_loss, wall_s, tokens_per_s,
// and routing (per MoE/PEER layer, over the validation split) when the model routes.
std::vector<nlohmann::json> run_compare(const CompareOptions& opts, Communicator& comm);

}  // namespace moe
