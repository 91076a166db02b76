// Config errors name the field, value and what is allowed; ffn_overrides block patterns; --set.
#include <gtest/gtest.h>

#include "../error_util.h"
#include "../train_util.h"
#include "moe/core/error.h"
#include "moe/train/config.h"

using namespace moe;
using namespace moe::testing;
namespace fs = std::filesystem;

namespace {

TEST(Config, UnknownAndInvalidFieldsAreNamed) {
  auto err = [](const char* text) {
    return error_of([&] { config_from_json(nlohmann::json::parse(text), "cfg.json"); });
  };
  std::string e = err(R"({"model": {"d_modle": 64}})");
  EXPECT_NE(e.find("unknown field model.d_modle"), std::string::npos) << e;
  e = err(R"({"train": {"lr": "fast"}})");
  EXPECT_NE(e.find("train.lr"), std::string::npos) << e;
  EXPECT_NE(e.find("\"fast\""), std::string::npos) << e;
  e = err(R"({"model": {"n_heads": 4, "n_kv_heads": 3}})");
  EXPECT_NE(e.find("n_kv_heads"), std::string::npos) << e;
  e = err(R"({"model": {"ffn": {"activation": "relu"}}})");
  EXPECT_NE(e.find("swiglu, gelu"), std::string::npos) << e;
  e = err(R"({"train": {"seq_len": 512}})");
  EXPECT_NE(e.find("max_seq_len"), std::string::npos) << e;
  e = err(R"({"train": {"beta2": 1.0}})");
  EXPECT_NE(e.find("train.beta2"), std::string::npos) << e;
  e = err(R"([1, 2])");
  EXPECT_NE(e.find("expected a JSON object"), std::string::npos) << e;
}

TEST(Config, BlockPatternsOfFfnOverrides) {
  // Which blocks are MoE, for a 6-block model: "every other block", "all but the first", lists.
  auto kinds = [](const char* key) {
    nlohmann::json j = nlohmann::json::parse(
        R"({"model": {"n_layers": 6, "ffn_overrides": {")" + std::string(key) +
        R"(": {"kind": "moe", "num_experts": 4, "top_k": 2}}}})");
    Config c = config_from_json(j, "cfg.json");
    std::string s;
    for (int l = 0; l < 6; ++l) s += c.model.ffn_for(l).kind == FfnConfig::Kind::kMoe ? 'M' : 'd';
    return s;
  };
  EXPECT_EQ(kinds("1::2"), "dMdMdM");
  EXPECT_EQ(kinds("::2"), "MdMdMd");
  EXPECT_EQ(kinds("1:"), "dMMMMM");
  EXPECT_EQ(kinds(":2"), "MMdddd");
  EXPECT_EQ(kinds("2:5"), "ddMMMd");
  EXPECT_EQ(kinds("0,5"), "MddddM");
  EXPECT_EQ(kinds("3"), "dddMdd");
  for (const char* bad : {"6", "a:b", "1:2:0", "1:2:3:4", "-1", "1,,2", ""}) {
    const std::string e = error_of([&] { kinds(bad); });
    EXPECT_NE(e.find("model.ffn_overrides"), std::string::npos) << bad << ": " << e;
  }
  // One block in two keys is ambiguous: refused.
  const std::string e = error_of([&] {
    config_from_json(nlohmann::json::parse(R"({"model": {"n_layers": 4, "ffn_overrides":
        {"1::2": {"kind": "moe"}, "3": {"kind": "peer", "num_experts": 16}}}})"),
                     "cfg.json");
  });
  EXPECT_NE(e.find("block 3 is given twice"), std::string::npos) << e;
}

TEST(Config, SetOverridesAreAppliedAndValidated) {
  nlohmann::json j = nlohmann::json::object();
  apply_override(j, "train.lr=0.0003");
  apply_override(j, "model.ffn.activation=gelu");
  apply_override(j, "model.qk_norm=true");
  Config c = config_from_json(j, "--set");
  EXPECT_FLOAT_EQ(c.train.lr, 3e-4f);
  EXPECT_EQ(c.model.ffn.activation, Activation::kGELU);
  EXPECT_EQ(c.model.qk_norm, QkNorm::kRow);  // the boolean form of older configs
  nlohmann::json k = nlohmann::json::object();
  apply_override(k, "train.nope=1");
  EXPECT_NE(error_of([&] { config_from_json(k, "--set"); }).find("train.nope"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(k, "noequals"); }).find("key=value"), std::string::npos);
}

}  // namespace

namespace {

TEST(Config, DeepOrHugeValuesGiveShortErrorsNotCrashes) {
  // A config nested 100,000 levels deep used to overflow the stack (the error message dumped
  // the value recursively); a 2 MB bad value made a 2 MB error line.
  TempDir d;
  const std::string deep = d.path + "/deep.json";
  write_file_atomic(deep, std::string(100000, '[') + std::string(100000, ']'));
  expect_error([&] { load_config(deep); }, {"deep.json", "nested deeper"});
  const std::string nested = d.path + "/nested.json";
  write_file_atomic(
      nested, "{\"model\": {\"d_model\": " + std::string(60, '[') + std::string(60, ']') + "}}");
  const std::string e = error_of([&] { load_config(nested); });
  EXPECT_NE(e.find("model.d_model"), std::string::npos) << e;
  EXPECT_LT(e.size(), 300u) << e;
  const std::string big = d.path + "/big.json";
  write_file_atomic(big, "{\"train\": {\"lr\": \"" + std::string(2 << 20, 'x') + "\"}}");
  const std::string e2 = error_of([&] { load_config(big); });
  EXPECT_NE(e2.find("train.lr"), std::string::npos);
  EXPECT_LT(e2.size(), 300u);
}

TEST(Config, DeepSetValueIsRefusedNotACrash) {
  // fuzz_config's finding: a `--set` value is parsed as JSON too, and one nested 100,000 deep
  // overflowed the stack (ASan: stack-overflow) before config_from_json could refuse it.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_error([&] { load_config("", {"model.d_model=" + deep}); },
               {"model.d_model", "nested deeper than 64"});
  const std::string e = error_of([&] { load_config("", {"model.d_model=" + deep}); });
  EXPECT_LT(e.size(), 300u) << e;
  // Shallow JSON values and plain strings still work as before.
  EXPECT_EQ(load_config("", {"model.d_model=64"}).model.d_model, 64);
  expect_error([&] { load_config("", {"model.d_model=[[1]]"}); }, {"model.d_model"});
}

}  // namespace
