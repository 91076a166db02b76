#include "moe/train/model_identity.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

namespace moe {
namespace {

// Fields a checkpoint may be continued or fine-tuned with another value of: they steer training
// (losses, regularisers, capacity, the expert GEMM) or initialisation, not what the weights mean.
void strip_training_knobs(nlohmann::json& j) {
  if (!j.is_object()) return;
  for (const char* k :
       {"init_std", "aux_loss_coef", "z_loss_coef", "capacity_factor", "eval_capacity_factor",
        "expert_dropout", "expert_gemm", "jitter", "bias_rate", "relu_l1_init", "relu_l1_rate"})
    j.erase(k);
  for (auto& [k, v] : j.items()) strip_training_knobs(v);
}

}  // namespace

nlohmann::json model_identity(const ModelConfig& c) {
  ModelConfig r = c;
  r.resolve();  // derived fields (head_dim from n_heads, …) count too
  nlohmann::json j = model_config_fields().to_json(r);
  strip_training_knobs(j);
  return j;  // nlohmann::json keeps object keys sorted: the dump is canonical
}

std::string model_identity_hash(const ModelConfig& c) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char ch : model_identity(c).dump()) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

std::vector<std::string> model_identity_diff(const ModelConfig& stored, const ModelConfig& wanted) {
  const nlohmann::json a = model_identity(stored), b = model_identity(wanted);
  const nlohmann::json patch = nlohmann::json::diff(a, b);
  std::vector<std::string> out;
  for (const nlohmann::json& op : patch) {
    const nlohmann::json::json_pointer p(op.value("path", ""));
    auto at = [&](const nlohmann::json& j) { return j.contains(p) ? j.at(p).dump() : "absent"; };
    std::string field = p.to_string();
    std::replace(field.begin(), field.end(), '/', '.');
    out.push_back(fmt::format("model{} = {} (config says {})", field, at(a), at(b)));
  }
  return out;
}

}  // namespace moe
