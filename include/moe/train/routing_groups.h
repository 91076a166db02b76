// Expert specialisation by group (e.g. Brown's 15 genres, docs/DATA.md): during an evaluation,
// count per MoE layer how often each group's tokens chose each expert, and summarise the table by
// the mutual information between the expert choice and the group (issue 20, study comparison 5).
//
// Counts: every (token, selected expert) pair of a token-choice layer adds 1 to
// counts[group][expert] (selections before capacity, so k per token). With p(g, e) the table
// normalised to sum 1,
//   I(expert; group) = Σ_{g,e} p(g,e)·log2(p(g,e) / (p(g)·p(e)))   bits
// 0 when every group spreads over the experts alike; at most min(H(group), H(expert)). The plug-in
// estimate's positive bias is about (G−1)(E−1) / (2·n·ln 2) bits for n pairs (Miller 1955):
// 5e-5 bits for Brown's val split with G = 15, E = 8, k = 2 (reported, not subtracted).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe {

class Transformer;

// The group of every token of an evaluated stream.
struct TokenGroups {
  std::vector<int32_t> of_token;  // [n] indices into names
  std::vector<std::string> names;
};

// I(X; Y) in bits of the joint counts [rows, cols] (row-major); 0 for an empty table.
double mutual_information_bits(const std::vector<int64_t>& counts, int rows, int cols);
// H in bits of a distribution given by counts.
double entropy_bits(const std::vector<int64_t>& counts);

class GroupRoutingCounter {
 public:
  explicit GroupRoutingCounter(const TokenGroups& groups) : groups_(groups) {}
  // After model.forward on b windows of len tokens: starts[i] is the stream position of window
  // i's first input token (the token routed at position t of window i is stream[starts[i] + t]).
  void add(const Transformer& model, const std::vector<int64_t>& starts, int b, int len);
  // Per counted layer: {"layer", "pairs", "per_token", "mi_bits", "h_group_bits",
  // "h_expert_bits", "bias_bits", "groups", "counts" [G][E]}; null when no layer was counted.
  nlohmann::json result() const;

 private:
  const TokenGroups& groups_;
  struct Layer {
    int per_token = 0, experts = 0;
    std::vector<int64_t> counts;  // [G, experts], grown as expert ids appear
  };
  std::vector<Layer> layers_;  // by block index; per_token = 0: not a token-choice MoE layer
};

}  // namespace moe
