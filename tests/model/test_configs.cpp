// Every config shipped under configs/ parses, and a scaled-down copy of it (same FFN kinds,
// routers and options; small widths) trains for a few steps with a falling loss. So a preset
// cannot rot unnoticed when the config schema or a layer changes.
#include <gtest/gtest.h>

#include <filesystem>

#include "moe/core/file_io.h"
#include "moe/model/transformer.h"
#include "moe/train/config.h"
#include "moe/train/optimizer.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> shipped_configs() {
  std::vector<std::string> out;
  for (auto& e : fs::recursive_directory_iterator(std::string(MOE_SOURCE_DIR) + "/configs"))
    // Sweep grids (configs/sweeps/*.json other than base configs) are not model configs.
    if (e.path().extension() == ".json" &&
        (e.path().parent_path().filename() != "sweeps" || e.path().filename() == "base.json"))
      out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Shrinks the widths of a config's JSON, keeping every structural choice.
void shrink(nlohmann::json& j) {
  auto& m = j["model"];
  m["d_model"] = 32;
  // Keep enough blocks for every per-block override.
  int need = 2;
  if (m.contains("ffn_overrides"))
    for (auto& [k, v] : m["ffn_overrides"].items()) need = std::max(need, std::stoi(k) + 1);
  m["n_layers"] = std::min(std::max(2, need), m.value("n_layers", 4));
  m["n_heads"] = 4;
  if (m.contains("n_kv_heads")) m["n_kv_heads"] = 2;
  m.erase("head_dim");
  m["max_seq_len"] = 16;
  auto shrink_ffn = [](nlohmann::json& f) {
    if (f.value("kind", "") == "peer") {  // 16² experts, small keys: same structure, small tables
      f["num_experts"] = 256;
      f["d_key"] = 8;
      f["heads"] = 2;
      f["top_k"] = 4;
    }
    if (f.contains("d_ff") && f["d_ff"].get<int>() > 0) f["d_ff"] = 64;
    if (f.contains("d_expert")) f["d_expert"] = 16;
    if (f.value("granularity", 0) > 0 && !f.contains("d_ff")) f["d_ff"] = 64;
  };
  if (m.contains("ffn")) shrink_ffn(m["ffn"]);
  if (m.contains("ffn_overrides"))
    for (auto& [k, v] : m["ffn_overrides"].items()) shrink_ffn(v);
  j["train"]["seq_len"] = 16;
  j["train"]["batch_size"] = 4;
  j["train"]["lr"] = 1e-2;
  j["train"]["warmup_steps"] = 0;
  j["train"]["steps"] = 8;
}

TEST(Configs, EveryShippedConfigRoundTripsThroughToJson) {
  // parse(to_json(c)) == c, compared field by field through to_json: what a checkpoint stores
  // is the config it was trained with. Every config file under configs/ (sweep grids are not
  // configs; their base config is).
  const auto files = shipped_configs();
  ASSERT_GE(files.size(), 7u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    const Config c = load_config(path);
    const nlohmann::json j = c.to_json();
    const Config again = config_from_json(j, path + " (to_json)");
    EXPECT_EQ(again.to_json(), j);
    EXPECT_EQ(again.model.ffn_overrides.size(), c.model.ffn_overrides.size());
  }
}

TEST(Configs, EveryShippedConfigParsesAndAScaledDownCopyTrains) {
  const auto files = shipped_configs();
  ASSERT_GE(files.size(), 7u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    ASSERT_NO_THROW(load_config(path));
    nlohmann::json j = nlohmann::json::parse(read_file(path));
    shrink(j);
    Config c = config_from_json(j, path + " (scaled down)");
    Transformer model(c.model, 4, 16);
    model.params().initialize(1);
    AdamWOptimizer opt(model.params(), c.train);
    std::vector<int32_t> x(64), y(64);
    for (int i = 0; i < 64; ++i) {
      x[i] = (i * 5 + i / 16) % 97;
      y[i] = (i * 5 + 5 + i / 16) % 97;
    }
    double first = 0, last = 0;
    for (int s = 0; s < 8; ++s) {
      model.params().zero_grad();
      StepInfo info;
      info.step = s;
      const double l = model.forward(x.data(), y.data(), 4, 16, info, 1.f);
      ASSERT_TRUE(std::isfinite(l));
      model.backward();
      opt.step(s);
      (s == 0 ? first : last) = l;
    }
    EXPECT_LT(last, first);
  }
}

}  // namespace
