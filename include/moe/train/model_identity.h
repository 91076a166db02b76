// What makes two models the same model: the fields that give the weights their meaning (sizes,
// heads, RoPE, norms, the FFN kinds, routing, top-k, experts …) — every model field except the
// training knobs (initialisation scale, balancing and z-loss coefficients, capacity, expert
// dropout, jitter, the bias-balancing rate, the expert GEMM). Resume and --init-from compare
// checkpoints with configs through it: a stable hash to compare at a glance (`moe inspect` prints
// a checkpoint's), and a readable diff of the fields that differ.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/model/config.h"

namespace moe {

// The resolved model config without its training knobs, as JSON (keys sorted: canonical).
nlohmann::json model_identity(const ModelConfig& c);

// FNV-1a (64-bit) of model_identity(c).dump(), as 16 hex digits. Stable across builds and
// machines (std::hash is not); it changes when a new model field is added to the config.
std::string model_identity_hash(const ModelConfig& c);

// Every field whose value differs, as "model.ffn.top_k = 2 (config says 1)": `stored` is the
// checkpoint's model, `wanted` the config's. Empty when the two are the same model.
std::vector<std::string> model_identity_diff(const ModelConfig& stored, const ModelConfig& wanted);

}  // namespace moe
