// Checkpoints: a round trip restores every tensor and the metadata; truncated, foreign and
// mismatched files give clear errors naming the file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../error_util.h"
#include "../train_util.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/safetensors.h"
#include "moe/train/checkpoint.h"
#include "moe/train/trainer.h"

using namespace moe;
using namespace moe::testing;
namespace fs = std::filesystem;

namespace {

TEST(Checkpoint, RoundTripRestoresEveryTensorAndMetadata) {
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/ck");
  Transformer m(cfg.model, 1, 8);
  m.params().initialize(42);
  AdamWOptimizer opt(m.params(), cfg.train);
  for (std::size_t i = 0; i < opt.numel(); ++i) {
    opt.m()[i] = float(i) * 1e-3f;
    opt.v()[i] = float(i) * 2e-3f;
  }
  CheckpointMeta meta{cfg, {17, 1000, 2.5}, "byte", ""};
  const std::string path = d.path + "/ck.safetensors";
  save_checkpoint(path, m, &opt, meta);
  Transformer m2(cfg.model, 1, 8);
  AdamWOptimizer opt2(m2.params(), cfg.train);
  load_checkpoint(path, m2, &opt2);
  for (std::size_t i = 0; i < m.params().numel(); ++i) {
    ASSERT_EQ(m.params().weights()[i], m2.params().weights()[i]);
    ASSERT_EQ(opt.m()[i], opt2.m()[i]);
    ASSERT_EQ(opt.v()[i], opt2.v()[i]);
  }
  CheckpointMeta back = read_checkpoint_meta(path);
  EXPECT_EQ(back.state.step, 17);
  EXPECT_EQ(back.state.tokens_seen, 1000);
  EXPECT_EQ(back.config.to_json(), cfg.to_json());
  // No temporary file is left behind.
  for (auto& e : fs::directory_iterator(d.path))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(Checkpoint, TruncatedForeignAndMismatchedFilesGiveClearErrors) {
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/ck");
  Transformer m(cfg.model, 1, 8);
  m.params().initialize(1);
  const std::string good = d.path + "/good.safetensors";
  save_checkpoint(good, m, nullptr, {cfg, {}, "byte", ""});
  const std::string bytes = read_file(good);

  const std::string trunc = d.path + "/trunc.safetensors";
  write_file_atomic(trunc, bytes.substr(0, bytes.size() - 100));
  std::string e = error_of([&] { load_checkpoint(trunc, m, nullptr); });
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  EXPECT_NE(e.find(trunc), std::string::npos) << e;

  write_file_atomic(trunc, bytes.substr(0, 5));
  e = error_of([&] { read_checkpoint_meta(trunc); });
  EXPECT_NE(e.find("not a safetensors file"), std::string::npos) << e;

  const std::string foreign = d.path + "/foreign.safetensors";
  float x[2] = {1, 2};
  write_safetensors(foreign, {{"w", DType::F32, {2}, x}}, {{"format", "pt"}});
  e = error_of([&] { read_checkpoint_meta(foreign); });
  EXPECT_NE(e.find("not a moe.cpp checkpoint"), std::string::npos) << e;
  e = error_of([&] { load_checkpoint(foreign, m, nullptr); });
  EXPECT_NE(e.find("not a moe.cpp checkpoint"), std::string::npos) << e;

  Config wide = cfg;
  wide.model.ffn.d_ff = 96;
  Transformer m_wide(wide.model, 1, 8);
  e = error_of([&] { load_checkpoint(good, m_wide, nullptr); });
  EXPECT_NE(e.find("layers.0.ffn.w_gate"), std::string::npos) << e;
  EXPECT_NE(e.find("[96, 32]"), std::string::npos) << e;

  AdamWOptimizer opt(m.params(), cfg.train);
  e = error_of([&] { load_checkpoint(good, m, &opt); });
  EXPECT_NE(e.find("optimizer state"), std::string::npos) << e;
}

}  // namespace

namespace {

// A dense checkpoint of the tiny upcycling model with one tensor changed by `edit`
// (which may drop it, transpose it or change its dtype), written to path.
void write_edited_dense(const std::string& path, const std::string& victim, int edit) {
  const char* cfg = R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 8,
      "ffn": {"d_ff": 64}}, "train": {"seq_len": 8}})";
  Config dc = config_from_json(nlohmann::json::parse(cfg), "dense");
  Transformer dense(dc.model, 1, 8);
  dense.params().initialize(3);
  std::vector<TensorRef> ts;
  std::vector<std::vector<uint16_t>> halves;
  halves.reserve(64);
  for (const Param& p : dense.params().all()) {
    TensorRef t{p.name, DType::F32, p.shape, p.w};
    if (p.name == victim) {
      if (edit == 0) continue;                            // missing
      if (edit == 1) t.shape = {p.shape[1], p.shape[0]};  // transposed
      if (edit == 2) {                                    // another dtype
        halves.emplace_back(p.numel, uint16_t(0x3f80));   // bf16 1.0
        t = {p.name, DType::BF16, p.shape, halves.back().data()};
      }
    }
    ts.push_back(t);
  }
  write_safetensors(path, ts,
                    {{"format", kCheckpointFormat},
                     {"config", dc.to_json().dump()},
                     {"train_state", R"({"step": 0})"},
                     {"tokenizer.kind", "byte"},
                     {"tokenizer.blob", ""},
                     {"has_optimizer", "0"}});
}

TEST(Checkpoint, UpcycleRefusesMissingTransposedOrOtherDtypeTensors) {
  // It used to print "upcycled N tensors" and keep the random initialisation of every tensor
  // that was missing, transposed or not F32.
  TempDir d;
  const char* moe_cfg = R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2,
      "max_seq_len": 8, "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2, "d_ff": 64}},
      "train": {"seq_len": 8}})";
  Config mc = config_from_json(nlohmann::json::parse(moe_cfg), "moe");
  struct Case {
    std::string victim;
    int edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"layers.1.attn.wq", 0, {"'layers.1.attn.wq'", "[32, 32]", "does not have"}},
      {"layers.0.ffn.w_up", 0, {"'layers.0.ffn.experts.w_up'", "'layers.0.ffn.w_up'"}},
      {"layers.0.ffn.w_up", 1, {"'layers.0.ffn.w_up'", "shape [32, 64]", "expected [D, 32]"}},
      {"layers.1.ffn.w_down", 2, {"'layers.1.ffn.w_down'", "BF16", "expected F32"}},
      {"embed.weight", 2, {"'embed.weight'", "BF16 [256, 32]", "expected F32 [256, 32]"}},
      {"norm.weight", 0, {"'norm.weight'", "does not have"}},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string path = d.path + "/dense" + std::to_string(i++) + ".safetensors";
    write_edited_dense(path, c.victim, c.edit);
    Transformer moe(mc.model, 1, 8);
    std::vector<std::string> parts = c.parts;
    parts.push_back(path);
    expect_error([&] { upcycle_from_dense(path, moe); }, parts);
  }
  // The intact file fills every tensor but the routers (2 layers × 1 router weight).
  const std::string ok = d.path + "/ok.safetensors";
  write_edited_dense(ok, "", -1);
  Transformer moe(mc.model, 1, 8);
  EXPECT_EQ(upcycle_from_dense(ok, moe), int(moe.params().all().size()) - 2);
}

}  // namespace
