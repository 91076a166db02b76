// moe compare: train several configs to the same training-FLOP budget (as `moe params` counts
// it: router and PEER retrieval included) on the same data and seed, then evaluate each on the
// whole validation split and print one table. Resumable: results are appended to
// <out_dir>/results.jsonl and a config whose name is already there is not retrained.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

struct CompareOptions {
  double flops = 0;
  std::vector<std::string> configs;
  std::vector<std::string> overrides;  // --set, applied to every config
  std::string out_dir = "runs/compare";
  bool quiet = false;
};

// Returns one JSON object per config (in the order given).
std::vector<nlohmann::json> run_compare(const CompareOptions& opts);

}  // namespace moe
