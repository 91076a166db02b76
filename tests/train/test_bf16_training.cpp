// train.precision = bf16 through the whole training loop:
//   1. 200 steps in bf16 track the fp32 run's loss (tolerance derived below);
//   2. bf16 runs are bit-identical for a seed and a thread count;
//   3. resume is bit-exact in bf16 (dense blocks, and MoE + PEER blocks, whichever of their
//      products have a bf16 path): the shadows are a pure function of the masters;
//   4. the precision is saved with the config, and a bf16 checkpoint evaluates in either.
// The f32 default is covered unchanged by test_trainer.cpp and tests/python/test_same_bits.py.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <numeric>
#include <optional>
#include <vector>

#include "../train_util.h"
#include "moe/train/checkpoint.h"
#include "moe/train/trainer.h"

using namespace moe;
using namespace moe::testing;

namespace {

Config long_config(const std::string& data, const std::string& out, Precision p, uint64_t seed) {
  Config c = tiny_config(data, out);
  c.train.steps = 200;
  c.train.grad_accum = 1;  // half the cost of tiny_config's 2; accumulation is tested below
  c.train.warmup_steps = 20;
  c.train.eval_every = 0;
  c.train.log_every = 50;
  c.train.seed = seed;
  c.train.precision = p;
  return c;
}

double mean_of_last(const std::vector<double>& v, std::size_t n) {
  return std::accumulate(v.end() - n, v.end(), 0.0) / double(n);
}

// Tolerance, fixed before looking at any bf16 result: bf16 rounds each operand of a product by at
// most 2⁻⁹ relatively (2⁻⁸ per product), a perturbation of each step's forward and gradient that
// is tiny next to what a different seed changes (every initial weight and every batch). So a
// correct bf16 path must end within the spread that the seed alone causes in fp32: the largest
// difference, over three other seeds, between their fp32 final losses (mean of the last 50 steps)
// and the reference seed's. A broken bf16 path (a stale shadow that never sees the updates, a
// buffer of the wrong layer, a gradient rounded away) trains a different model and lands outside.
// Observed when written: fp32 1.8714, bf16 1.8753, seed spread 0.271 (the bound is loose); with
// the per-step refresh removed (stale shadows) bf16 ends at 2.510 and the test fails.
TEST(Bf16Training, TracksFp32LossWithinTheSeedSpread) {
  TempDir d;
  make_data(d.path);
  auto final_loss = [&](Precision p, uint64_t seed, const std::string& name) {
    Trainer t(long_config(d.path, d.path + "/" + name, p, seed), single_process_communicator());
    t.run();
    EXPECT_EQ(t.losses().size(), 200u);
    return std::pair(mean_of_last(t.losses(), 50), t.losses().front());
  };
  const auto [fp32, fp32_first] = final_loss(Precision::kFp32, 1234, "fp32");
  double spread = 0;
  for (uint64_t s : {7, 99, 2024})
    spread = std::max(
        spread,
        std::fabs(final_loss(Precision::kFp32, s, "seed" + std::to_string(s)).first - fp32));
  const auto [bf16, bf16_first] = final_loss(Precision::kBf16, 1234, "bf16");
  RecordProperty("fp32_final_loss", std::to_string(fp32));
  RecordProperty("bf16_final_loss", std::to_string(bf16));
  RecordProperty("fp32_seed_spread", std::to_string(spread));
  EXPECT_LE(std::fabs(bf16 - fp32), spread)
      << "bf16 " << bf16 << ", fp32 " << fp32 << ", fp32 seed spread " << spread;
  EXPECT_LT(bf16, bf16_first - 0.5);  // and both learn (a sanity check, not the tolerance)
  EXPECT_LT(fp32, fp32_first - 0.5);
}

TEST(Bf16Training, SameSeedAndThreadsGiveBitIdenticalRuns) {
  TempDir d;
  make_data(d.path);
  Config a_cfg = tiny_config(d.path, d.path + "/a"), b_cfg = tiny_config(d.path, d.path + "/b");
  a_cfg.train.precision = b_cfg.train.precision = Precision::kBf16;
  Trainer a(a_cfg, single_process_communicator());
  a.run();
  Trainer b(b_cfg, single_process_communicator());
  b.run();
  ASSERT_EQ(a.losses().size(), 12u);
  for (std::size_t i = 0; i < a.losses().size(); ++i) EXPECT_EQ(a.losses()[i], b.losses()[i]) << i;
  auto& pa = a.model().params();
  auto& pb = b.model().params();
  for (std::size_t i = 0; i < pa.numel(); ++i) ASSERT_EQ(pa.weights()[i], pb.weights()[i]) << i;
  // The bf16 products are in use: the run differs from fp32's from the first step on.
  Config f_cfg = tiny_config(d.path, d.path + "/f");
  Trainer f(f_cfg, single_process_communicator());
  f.run();
  EXPECT_NE(a.losses()[0], f.losses()[0]);
  EXPECT_NE(a.model().ffns()[0]->describe().find("bf16"), std::string::npos);
}

// 12 steps straight vs 6 + resume + 6, in bf16: losses and final weights bit for bit.
void check_bf16_resume(const std::string& dir, const std::function<void(Config&)>& edit) {
  Config full_cfg = tiny_config(dir, dir + "/full"), part_cfg = tiny_config(dir, dir + "/part");
  for (Config* c : {&full_cfg, &part_cfg}) {
    c->train.precision = Precision::kBf16;
    edit(*c);
  }
  Trainer full(full_cfg, single_process_communicator());
  full.run();
  Trainer first(part_cfg, single_process_communicator(), {.stop_after = 6});
  TrainResult r1 = first.run();
  ASSERT_TRUE(r1.interrupted);
  // The checkpoint keeps the precision with the config.
  EXPECT_EQ(read_checkpoint_meta(r1.checkpoint).config.train.precision, Precision::kBf16);
  Trainer second(part_cfg, single_process_communicator(), {.resume = r1.checkpoint});
  TrainResult r2 = second.run();
  EXPECT_EQ(r2.steps_done, 12);
  ASSERT_EQ(second.losses().size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(first.losses()[i], full.losses()[i]) << i;
  for (int i = 0; i < 6; ++i) EXPECT_EQ(second.losses()[i], full.losses()[6 + i]) << 6 + i;
  auto& pa = full.model().params();
  auto& pb = second.model().params();
  for (std::size_t i = 0; i < pa.numel(); ++i) ASSERT_EQ(pa.weights()[i], pb.weights()[i]) << i;
}

TEST(Bf16Training, ResumeIsBitExact) {
  TempDir d;
  make_data(d.path);
  check_bf16_resume(d.path, [](Config&) {});
}

TEST(Bf16Training, ResumeIsBitExactWithMoeAndPeerBlocks) {
  TempDir d;
  make_data(d.path);
  check_bf16_resume(d.path, [](Config& c) {
    c.model.ffn.kind = FfnConfig::Kind::kMoe;
    c.model.ffn.moe.num_experts = 4;
    c.model.ffn.moe.top_k = 2;
    FfnConfig peer;
    peer.kind = FfnConfig::Kind::kPeer;
    peer.activation = Activation::kGELU;
    peer.peer.num_experts = 64;
    peer.peer.heads = 2;
    peer.peer.top_k = 3;
    peer.peer.d_key = 8;
    c.model.ffn_overrides = {{1, peer}};
  });
}

TEST(Bf16Training, ABf16CheckpointEvaluatesInEitherPrecision) {
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/run");
  cfg.train.precision = Precision::kBf16;
  Trainer t(cfg, single_process_communicator());
  const TrainResult r = t.run();
  const data::TokenStream val = data::tokenize_file(t.tokenizer(), d.path + "/val.txt");
  auto eval_in = [&](std::optional<Precision> p) {
    Transformer m(cfg.model, 4, cfg.train.seq_len);
    load_checkpoint(r.checkpoint, m, nullptr);
    if (p) m.set_precision(*p);
    return evaluate(m, val, 4, cfg.train.seq_len).loss;
  };
  const double in_bf16 = eval_in(Precision::kBf16), in_fp32 = eval_in(Precision::kFp32);
  EXPECT_TRUE(std::isfinite(in_bf16));
  EXPECT_NE(in_bf16, in_fp32);  // the bf16 products are in use
  // fp32 is the model's default: choosing it explicitly changes no bit.
  EXPECT_EQ(in_fp32, eval_in(std::nullopt));
  // The trainer ran (and evaluated) in the config's precision.
  EXPECT_EQ(t.model().precision(), Precision::kBf16);
}

}  // namespace
