// The config declarations (moe/core/config_fields.h) drive parsing, `--set`, to_json and the
// README's tables: these tests hold the README to the declarations, every declared path to
// `--set`, the enum tables to their spellings, and the messages to naming file, field, value and
// what is allowed.
#include <gtest/gtest.h>

#include <fstream>

#include "../error_util.h"
#include "moe/core/file_io.h"
#include "moe/train/config.h"

using namespace moe;
using moe::testing::error_of;
using moe::testing::expect_error;

namespace {

constexpr const char* kBegin = "<!-- config tables: generated from the declarations -->";
constexpr const char* kEnd = "<!-- end of the generated config tables -->";

TEST(ConfigFields, ReadmeTablesAreTheDeclarations) {
  // Every declared field is in README.md's tables with its default and doc line, and every row
  // there is declared: the section between the markers equals config_reference_markdown().
  const std::string readme = read_file(std::string(MOE_SOURCE_DIR) + "/README.md");
  const auto b = readme.find(kBegin), e = readme.find(kEnd);
  ASSERT_NE(b, std::string::npos) << "README.md lacks the marker " << kBegin;
  ASSERT_NE(e, std::string::npos) << "README.md lacks the marker " << kEnd;
  const std::size_t from = b + std::string(kBegin).size() + 1;
  const std::string in_readme = readme.substr(from, e - from);
  // Built by appends: GCC 12 flags `"\n" + string + "\n"` with a false -Wrestrict.
  std::string generated = "\n";
  generated.append(config_reference_markdown()).push_back('\n');
  if (in_readme != generated) {
    std::ofstream("config_reference.md") << generated;
    FAIL() << "README.md's config tables differ from the declarations; the generated tables are "
              "in config_reference.md (in the test's working directory): paste them between "
              "the markers.";
  }
}

TEST(ConfigFields, EveryDeclaredPathIsAcceptedBySet) {
  // Setting each field to its default through `--set` parses and leaves the config as it was.
  const Config defaults;
  const nlohmann::json expected = config_from_json(nlohmann::json::object(), "none").to_json();
  for (const Field<Config>& f : config_fields().fields()) {
    SCOPED_TRACE(f.path);
    nlohmann::json j = nlohmann::json::object();
    apply_override(j, f.path + "=" + f.write(defaults).dump());
    EXPECT_EQ(config_from_json(j, "--set").to_json(), expected);
  }
}

template <class E>
void expect_spellings_round_trip(std::initializer_list<E> values) {
  for (E v : values) {
    EXPECT_EQ(enum_from_name<E>(enum_name(v)), v) << enum_name(v);
    EXPECT_NE(enum_names<E>().find(enum_name(v)), std::string::npos);
  }
  EXPECT_FALSE(enum_from_name<E>("no such value").has_value());
}

TEST(ConfigFields, EveryEnumValueHasOneSpelling) {
  expect_spellings_round_trip({Activation::kSwiGLU, Activation::kGELU, Activation::kReLU});
  using FK = FfnConfig::Kind;
  expect_spellings_round_trip({FK::kDense, FK::kMoe, FK::kPeer});
  using RK = RouterConfig::Kind;
  expect_spellings_round_trip({RK::kTopK, RK::kNoisyTopK, RK::kGShard, RK::kExpertChoice});
  expect_spellings_round_trip({RouterConfig::Score::kSoftmax, RouterConfig::Score::kSigmoid});
  using G = MoeFfnConfig::ExpertGemm;
  expect_spellings_round_trip({G::kAuto, G::kBlas, G::kPanel});
  using Q = PeerFfnConfig::QueryNorm;
  expect_spellings_round_trip({Q::kBatchNorm, Q::kLayerNorm, Q::kNone});
  expect_spellings_round_trip({TokenizerConfig::Kind::kByte, TokenizerConfig::Kind::kBpe});
}

Config parse(const char* text) { return config_from_json(nlohmann::json::parse(text), "cfg.json"); }

TEST(ConfigFields, ExpertGemmParsesValidatesAndRoundTrips) {
  EXPECT_EQ(Config().model.ffn.moe.expert_gemm, MoeFfnConfig::ExpertGemm::kAuto);
  for (const char* name : {"auto", "blas", "panel"}) {
    nlohmann::json j = nlohmann::json::parse(
        R"({"model": {"ffn": {"kind": "moe", "num_experts": 4, "top_k": 2}}})");
    j["model"]["ffn"]["expert_gemm"] = name;
    const Config c = config_from_json(j, "cfg.json");
    EXPECT_EQ(enum_name(c.model.ffn.moe.expert_gemm), name);
    const nlohmann::json out = c.to_json();
    EXPECT_EQ(out["model"]["ffn"]["expert_gemm"], name);
    EXPECT_EQ(config_from_json(out, "to_json").to_json(), out);
  }
  expect_error(
      [] { parse(R"({"model": {"ffn": {"kind": "moe", "num_experts": 4, "expert_gemm": "1"}}})"); },
      {"cfg.json: field model.ffn.expert_gemm: got \"1\", expected one of: auto, blas, panel"});
  // An override block may choose its own GEMM.
  const Config c = parse(R"({"model": {"n_layers": 2, "ffn": {"kind": "moe", "num_experts": 4},
      "ffn_overrides": {"1": {"expert_gemm": "blas"}}}})");
  EXPECT_EQ(c.model.ffn_for(0).moe.expert_gemm, MoeFfnConfig::ExpertGemm::kAuto);
  EXPECT_EQ(c.model.ffn_for(1).moe.expert_gemm, MoeFfnConfig::ExpertGemm::kBlas);
}

TEST(ConfigFields, MessagesNameFileFieldValueAndWhatIsAllowed) {
  expect_error([] { parse(R"({"train": {"beta1": 1.5}})"); },
               {"cfg.json: field train.beta1: got 1.5, expected [0, 1)"});
  expect_error([] { parse(R"({"train": {"eval_every": -1}})"); },
               {"cfg.json: field train.eval_every: got -1, expected >= 0"});
  expect_error([] { parse(R"({"train": {"min_lr": 0.1, "lr": 0.01}})"); },
               {"field train.min_lr: got 0.1, expected 0 <= min_lr <= lr = 0.01"});
  expect_error([] { parse(R"({"model": {"ffn": {"router": {"kinds": "topk"}}}})"); },
               {"cfg.json: unknown field model.ffn.router.kinds", "kind, n_group, normalize"});
  expect_error([] { parse(R"({"model": {"ffn": {"router": "topk"}}})"); },
               {"field model.ffn.router: expected a JSON object", "\"topk\""});
  expect_error([] { parse(R"({"model": {"ffn": {"router": {"kind": "top1"}}}})"); },
               {"field model.ffn.router.kind: got \"top1\"",
                "one of: topk, noisy_topk, gshard, expert_choice"});
  expect_error([] { parse(R"({"model": {"ffn": {"kind": "peer", "activation": "swiglu"}}})"); },
               {"field model.ffn.activation: got \"swiglu\", expected one of: gelu, relu"});
  expect_error([] { parse(R"({"model": {"ffn": {"kind": "peer", "d_key": 7}}})"); },
               {"field model.ffn.d_key: got 7, expected an even number >= 2"});
  expect_error([] { parse(R"({"tokenizer": {"kind": "wordpiece"}})"); },
               {"field tokenizer.kind: got \"wordpiece\", expected one of: byte, bpe"});
  expect_error([] { parse(R"({"train": {"freeze": ["*.attn.*", 3]}})"); },
               {"field train.freeze: entry 3 is not a string"});
  expect_error([] { parse(R"({"train": {"seed": -1}})"); },
               {"field train.seed: -1 is out of range"});
  expect_error(
      [] { parse(R"({"model": {"n_layers": 2, "ffn_overrides": {"1": {"top_k": -2}}}})"); },
      {"field model.ffn_overrides.1.top_k: got -2, expected >= 0"});
  // A config built in code is held to the same declarations.
  ModelConfig m;
  m.ffn.moe.expert_dropout = 1.5f;
  EXPECT_NE(error_of([&] { m.resolve(); }).find("model.ffn.expert_dropout: got 1.5"),
            std::string::npos);
}

TEST(ConfigFields, AnOverrideOfAnotherKindStartsFromThatKindsDefaults) {
  const Config c = parse(R"({"model": {"n_layers": 3,
      "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "d_ff": 96},
      "ffn_overrides": {"1": {"kind": "peer", "num_experts": 16}, "2": {"top_k": 1}}}})");
  const FfnConfig& peer = c.model.ffn_for(1);
  EXPECT_EQ(peer.kind, FfnConfig::Kind::kPeer);
  EXPECT_EQ(peer.activation, Activation::kGELU);  // PEER's default, not the inherited SwiGLU
  EXPECT_NE(peer.d_ff, 96);                       // not inherited either
  EXPECT_EQ(peer.peer.top_k, 4);                  // min(16, S = 4)
  const FfnConfig& moe = c.model.ffn_for(2);      // same kind: inherits, then overrides
  EXPECT_EQ(moe.moe.num_experts, 4);
  EXPECT_EQ(moe.moe.top_k, 1);
  EXPECT_EQ(moe.d_ff, 96);
}

}  // namespace
