#include "moe/train/config.h"

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/json_util.h"

namespace moe {

using json = nlohmann::json;

const FieldTable<Config>& config_fields() {
  static const FieldTable<Config> t = [] {
    FieldTable<Config> t;
    t.add_group("model", &Config::model, model_config_fields());
    t.add_group("tokenizer", &Config::tokenizer, tokenizer_config_fields());
    t.add_group("data", &Config::data, data_config_fields());
    t.add_group("train", &Config::train, train_config_fields());
    return t;
  }();
  return t;
}

Config config_from_json(const json& j, const std::string& source) {
  Config c;
  config_fields().parse(j, c, source, "");
  // The byte tokenizer has 256 ids unless the model asks for more; BPE sets the vocabulary.
  if (c.tokenizer.kind == TokenizerConfig::Kind::kByte &&
      !(j.contains("model") && j["model"].contains("vocab_size")))
    c.model.vocab_size = 256;
  if (c.tokenizer.kind == TokenizerConfig::Kind::kBpe) c.model.vocab_size = c.tokenizer.vocab_size;
  try {
    c.model.resolve();
  } catch (const Error& e) {
    throw Error(source + ": " + e.message(), "config");
  }
  MOE_CHECK(c.train.seq_len <= c.model.max_seq_len,
            "{}: field train.seq_len: got {}, expected <= model.max_seq_len = {}", source,
            c.train.seq_len, c.model.max_seq_len);
  return c;
}

json Config::to_json() const { return config_fields().to_json(*this); }

void apply_override(json& j, const std::string& assignment) {
  const auto eq = assignment.find('=');
  MOE_CHECK(eq != std::string::npos && eq > 0,
            "override '{}': expected key=value, e.g. train.lr=3e-4", assignment);
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  json* node = &j;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? dot : dot - start);
    MOE_CHECK(!part.empty(), "override '{}': empty component in key '{}'", assignment, key);
    if (!node->is_object()) *node = json::object();
    node = &(*node)[part];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  // The value is outside input like a config file, so its depth is bounded the same way (found
  // by fuzz_config: `--set model.d_model=[[[…` 100,000 deep overflowed the stack). Not JSON at
  // all: taken as a string.
  bool too_deep = false;
  auto limit = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth)
      too_deep = true;
    return !too_deep;
  };
  json v = json::parse(value, limit, /*allow_exceptions=*/false);
  MOE_CHECK(!too_deep, "override of '{}': value nested deeper than {} levels", key, kMaxJsonDepth);
  *node = v.is_discarded() ? json(value) : v;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  json j;
  if (!path.empty()) {
    j = parse_json(read_file(path), path);  // depth-bounded: a config is outside input
  } else {
    j = json::object();
  }
  for (auto& o : overrides) apply_override(j, o);
  return config_from_json(j, path.empty() ? "<defaults>" : path);
}

std::string config_reference_markdown() { return config_fields().markdown(); }

}  // namespace moe
