// A run's configuration, read from JSON: the model, the tokenizer, the data and the training
// run. Every field has a default; unknown fields and invalid values are rejected with one line
// naming the file, the field's dotted path, the bad value and what is allowed. `--set a.b=value`
// overrides are applied to the JSON before it is parsed, so they are checked the same way.
// Every field is declared once (config_fields()); the README's "Config reference" tables are
// generated from those declarations (config_reference_markdown()).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/core/config_fields.h"
#include "moe/data/data_config.h"
#include "moe/model/config.h"
#include "moe/train/train_config.h"

namespace moe {

struct Config {
  ModelConfig model;
  TokenizerConfig tokenizer;
  DataConfig data;
  TrainConfig train;
  nlohmann::json to_json() const;
};

// Every field of a config, with its full dotted path ("model.ffn.router.kind").
const FieldTable<Config>& config_fields();

// Parses and validates. `source` names the file in error messages.
Config config_from_json(const nlohmann::json& j, const std::string& source);
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Applies "a.b.c=value" (value parsed as JSON, else taken as a string) to j.
void apply_override(nlohmann::json& j, const std::string& assignment);

// The README's config tables (markdown), generated from the declarations.
std::string config_reference_markdown();

}  // namespace moe
