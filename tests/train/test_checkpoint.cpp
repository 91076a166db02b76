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
