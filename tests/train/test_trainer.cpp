// The training loop: determinism, bit-exact resume (dense, MoE and PEER blocks, tables updated
// in the backward), NaN handling, stop requests, frozen parameters, gradient accumulation, BPE
// runs, and evaluation windows.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../error_util.h"
#include "../train_util.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/safetensors.h"
#include "moe/train/checkpoint.h"
#include "moe/train/model_identity.h"
#include "moe/train/run_dir.h"
#include "moe/train/trainer.h"

using namespace moe;
using namespace moe::testing;
namespace fs = std::filesystem;

namespace {

TEST(Training, SameSeedGivesBitIdenticalLosses) {
  TempDir d;
  make_data(d.path);
  Trainer a(tiny_config(d.path, d.path + "/a"), single_process_communicator());
  a.run();
  Trainer b(tiny_config(d.path, d.path + "/b"), single_process_communicator());
  b.run();
  ASSERT_EQ(a.losses().size(), 12u);
  for (std::size_t i = 0; i < a.losses().size(); ++i) EXPECT_EQ(a.losses()[i], b.losses()[i]) << i;
  EXPECT_LT(a.losses().back(), a.losses().front());  // it learns something
}

// A PEER block small enough for these runs: 8² experts, 2 heads × top-3.
FfnConfig tiny_peer() {
  FfnConfig peer;
  peer.kind = FfnConfig::Kind::kPeer;
  peer.activation = Activation::kGELU;
  peer.peer.num_experts = 64;
  peer.peer.heads = 2;
  peer.peer.top_k = 3;
  peer.peer.d_key = 8;
  return peer;
}

// Runs 12 steps straight, and 5 + resume + 7; the losses and final weights must be identical.
void check_resume(const std::string& dir, const std::function<void(Config&)>& edit) {
  Config full_cfg = tiny_config(dir, dir + "/full"), part_cfg = tiny_config(dir, dir + "/part");
  edit(full_cfg);
  edit(part_cfg);
  Trainer full(full_cfg, single_process_communicator());
  full.run();
  Trainer first(part_cfg, single_process_communicator(), {.stop_after = 5});
  TrainResult r1 = first.run();
  EXPECT_TRUE(r1.interrupted);
  EXPECT_EQ(r1.steps_done, 5);
  Trainer second(part_cfg, single_process_communicator(), {.resume = r1.checkpoint});
  TrainResult r2 = second.run();
  EXPECT_EQ(r2.steps_done, 12);
  ASSERT_EQ(second.losses().size(), 7u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(first.losses()[i], full.losses()[i]) << i;
  for (int i = 0; i < 7; ++i) EXPECT_EQ(second.losses()[i], full.losses()[5 + i]) << 5 + i;
  auto& pa = full.model().params();
  auto& pb = second.model().params();
  for (std::size_t i = 0; i < pa.numel(); ++i) ASSERT_EQ(pa.weights()[i], pb.weights()[i]) << i;
}

TEST(Training, ResumeIsBitIdenticalToUninterruptedRun) {
  TempDir d;
  make_data(d.path);
  check_resume(d.path, [](Config&) {});
}

TEST(Training, ResumeIsBitIdenticalWithMoeAndPeerBlocks) {
  // Noisy routing (RNG keyed by step), the bias-balance state, PEER's batch-norm running
  // statistics and its lazy Adam's per-row step counts must all survive the checkpoint.
  TempDir d;
  make_data(d.path);
  check_resume(d.path, [](Config& c) {
    FfnConfig moe;
    moe.kind = FfnConfig::Kind::kMoe;
    moe.moe.num_experts = 4;
    moe.moe.top_k = 2;
    moe.moe.d_expert = 16;
    moe.moe.router.kind = RouterConfig::Kind::kNoisyTopK;
    const FfnConfig peer = tiny_peer();
    c.model.ffn_overrides = {{0, moe}, {1, peer}};
    c.train.sparse_lr = 1e-3f;
    c.model.resolve();
  });
}

TEST(Training, ResumeIsBitIdenticalWithPeerTablesUpdatedInBackward) {
  // One micro-batch and no clipping: the trainer hands PEER's tables their rule before each
  // backward (AdamWOptimizer::prepare), and step() fails if a touched row was not updated.
  TempDir d;
  make_data(d.path);
  check_resume(d.path, [](Config& c) {
    const FfnConfig peer = tiny_peer();
    c.model.ffn_overrides = {{1, peer}};
    c.train.grad_accum = 1;
    c.train.grad_clip = 0;
    c.model.resolve();
  });
}

TEST(Training, NanLossStopsNamingTheStepAndKeepsNoBadCheckpoint) {
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/nan");
  cfg.train.lr = 1e30f;  // the first update overflows the weights
  cfg.train.min_lr = 0;
  cfg.train.warmup_steps = 0;
  cfg.train.grad_clip = 0;
  Trainer t(cfg, single_process_communicator());
  try {
    t.run();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at step"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(file_exists(d.path + "/nan/final.safetensors"));
}

TEST(Training, AStopRequestSavesACheckpointThatResumes) {
  TempDir d;
  make_data(d.path);
  // As if the user pressed Ctrl-C before the first step finished (`moe train` asks its signal
  // handler's flag).
  Trainer t(tiny_config(d.path, d.path + "/int"), single_process_communicator(),
            {.stop_requested = [] { return true; }});
  TrainResult r = t.run();
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(r.steps_done, 1);
  ASSERT_TRUE(file_exists(d.path + "/int/last.safetensors"));
  EXPECT_EQ(read_checkpoint_meta(d.path + "/int/last.safetensors").state.step, 1);
}

TEST(Training, ResumeRefusesAnotherModelButTakesOtherTrainingKnobs) {
  // Heads, RoPE base and top-k used to be accepted and the weights reinterpreted.
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/run");
  FfnConfig moe;
  moe.kind = FfnConfig::Kind::kMoe;
  moe.moe.num_experts = 4;
  moe.moe.top_k = 2;
  moe.moe.d_expert = 16;
  cfg.model.ffn = moe;
  Trainer first(cfg, single_process_communicator(), {.stop_after = 2});
  const std::string ckpt = first.run().checkpoint;
  auto resume_with = [&](const std::function<void(Config&)>& edit) {
    Config c = cfg;
    edit(c);
    Trainer t(c, single_process_communicator(), {.resume = ckpt});
  };
  expect_error([&] { resume_with([](Config& c) { c.model.n_heads = 8; }); },
               {"run/last.safetensors", "model.n_heads = 4 (config says 8)"});
  expect_error([&] { resume_with([](Config& c) { c.model.rope_theta = 500000.f; }); },
               {"model.rope_theta"});
  expect_error([&] { resume_with([](Config& c) { c.model.ffn.moe.top_k = 1; }); },
               {"model.ffn.top_k = 2 (config says 1)"});
  // A training knob (the balancing loss's weight, more steps) may change on resume.
  resume_with([](Config& c) {
    c.model.ffn.moe.aux_loss_coef = 0.05;
    c.train.steps += 10;
  });
}

TEST(Training, InitFromRefusesAnotherModelUnlessAllowedAndKeepsItsTokenizer) {
  // --init-from used to compare only the tensors' shapes: another top-k or RoPE base read the
  // weights with another meaning, silently; and a BPE config trained a new tokenizer, so the
  // embedding rows meant other tokens.
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/run");
  cfg.tokenizer.kind = TokenizerConfig::Kind::kBpe;
  cfg.tokenizer.vocab_size = 300;
  cfg.model.vocab_size = 300;
  FfnConfig moe;
  moe.kind = FfnConfig::Kind::kMoe;
  moe.moe.num_experts = 4;
  moe.moe.top_k = 2;
  moe.moe.d_expert = 16;
  cfg.model.ffn = moe;
  Trainer first(cfg, single_process_communicator(), {.stop_after = 3});
  const std::string ckpt = first.run().checkpoint;
  const CheckpointMeta meta = read_checkpoint_meta(ckpt);
  int n = 0;
  auto init_with = [&](const std::function<void(Config&)>& edit, bool allow) {
    Config c = cfg;
    c.train.out_dir = d.path + "/init" + std::to_string(n++);
    edit(c);
    return std::make_unique<Trainer>(c, single_process_communicator(),
                                     TrainOptions{.init_from = ckpt, .allow_model_change = allow});
  };
  Config topk1 = cfg;
  topk1.model.ffn.moe.top_k = 1;
  expect_error(
      [&] { init_with([](Config& c) { c.model.ffn.moe.top_k = 1; }, false); },
      {"run/last.safetensors", "model.ffn.top_k = 2 (config says 1)",
       model_identity_hash(cfg.model), model_identity_hash(topk1.model), "--allow-model-change"});
  expect_error([&] { init_with([](Config& c) { c.model.rope_theta = 500000.f; }, false); },
               {"model.rope_theta"});
  // Asked for: the weights load into the new model (same shapes, another top-k).
  {
    auto t = init_with([](Config& c) { c.model.ffn.moe.top_k = 1; }, true);
    EXPECT_NE(t->allowed_model_change().find("model.ffn.top_k = 2 (config says 1)"),
              std::string::npos);
    Trainer ref(cfg, single_process_communicator(), {.resume = ckpt});
    auto& pa = t->model().params();
    auto& pb = ref.model().params();
    ASSERT_EQ(pa.numel(), pb.numel());
    for (std::size_t i = 0; i < pa.numel(); ++i) ASSERT_EQ(pa.weights()[i], pb.weights()[i]) << i;
  }
  // Training knobs may change without asking; the checkpoint's tokenizer comes along even when
  // the new run's data would train another one.
  {
    std::ofstream(d.path + "/train.txt", std::ios::app) << std::string(3000, 'q') << "zzz xyzzy\n";
    auto t = init_with([](Config& c) { c.model.ffn.moe.aux_loss_coef = 0.05; }, false);
    const TrainResult r = t->run();
    EXPECT_TRUE(read_checkpoint_meta(r.checkpoint).tokenizer_blob == meta.tokenizer_blob);
  }
  EXPECT_EQ(model_identity_hash(meta.config.model), model_identity_hash(cfg.model));
}

TEST(Training, ResumeTrimsTheLogBackToTheCheckpoint) {
  // The interrupted run may have logged steps after its last checkpoint; the resumed run logs
  // them again, so those lines go (they used to appear twice).
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/run");
  cfg.train.log_every = 1;
  Trainer first(cfg, single_process_communicator(), {.stop_after = 5});
  const std::string ckpt = first.run().checkpoint;
  const std::string log = d.path + "/run/metrics.jsonl";
  append_line_atomic(log, R"({"step": 7, "loss": 1.0})");
  append_line_atomic(log, R"({"step": 8, "loss": 1.0})");
  Trainer second(cfg, single_process_communicator(), {.resume = ckpt});
  second.run();
  std::istringstream in(read_file(log));
  std::vector<int64_t> steps;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) steps.push_back(j["step"].get<int64_t>());
  }
  ASSERT_EQ(steps.size(), 12u);
  for (std::size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], int64_t(i) + 1);
}

TEST(Training, FrozenParametersStayBitIdentical) {
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/fz");
  cfg.train.freeze = {"*.attn.*", "embed.weight"};
  cfg.train.steps = 3;
  Trainer t(cfg, single_process_communicator());
  std::map<std::string, std::vector<float>> before;
  for (auto& p : t.model().params().all()) before[p.name] = std::vector<float>(p.w, p.w + p.numel);
  t.run();
  for (auto& p : t.model().params().all()) {
    const bool frozen = p.name.find(".attn.") != std::string::npos || p.name == "embed.weight";
    const bool same = before[p.name] == std::vector<float>(p.w, p.w + p.numel);
    EXPECT_EQ(same, frozen) << p.name;
  }
  Config bad = cfg;
  bad.train.freeze = {"*.expertz.*"};
  bad.train.out_dir += "_bad";  // a fresh directory: the first run's is taken (run_dir.h)
  EXPECT_NE(error_of([&] { Trainer x(bad, single_process_communicator()); }).find("expertz"),
            std::string::npos);
}

TEST(Training, GradientAccumulationEqualsOneLargeBatch) {
  // Two micro-batches of 2 sequences scaled by 1/2 give the gradient of one batch of 4 (mean
  // loss over the same tokens), up to float32 summation order: 1e-5 of the largest entry.
  TempDir d;
  Config cfg = tiny_config(d.path, d.path);
  const int T = 8;
  Transformer big(cfg.model, 4, T), small(cfg.model, 2, T);
  big.params().initialize(3);
  small.params().initialize(3);
  std::vector<int32_t> x(4 * T), y(4 * T);
  for (int i = 0; i < 4 * T; ++i) {
    x[i] = (i * 31 + 7) % 256;
    y[i] = (i * 17 + 3) % 256;
  }
  StepInfo info;
  big.params().zero_grad();
  big.forward(x.data(), y.data(), 4, T, info, 1.f);
  big.backward();
  small.params().zero_grad();
  for (int m = 0; m < 2; ++m) {
    small.forward(x.data() + m * 2 * T, y.data() + m * 2 * T, 2, T, info, 0.5f);
    small.backward();
  }
  float mx = 0;
  for (std::size_t i = 0; i < big.params().numel(); ++i)
    mx = std::max(mx, std::abs(big.params().grads()[i]));
  ASSERT_GT(mx, 0);
  for (std::size_t i = 0; i < big.params().numel(); ++i)
    ASSERT_NEAR(small.params().grads()[i], big.params().grads()[i], 1e-5 * mx) << i;
}

TEST(Training, BpeTokenizerTrainsAndEvaluatesInBitsPerByte) {
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/bpe");
  cfg.tokenizer.kind = TokenizerConfig::Kind::kBpe;
  cfg.tokenizer.vocab_size = 300;
  cfg.model.vocab_size = 300;
  cfg.train.steps = 4;
  Trainer t(cfg, single_process_communicator());
  TrainResult r = t.run();
  EXPECT_EQ(t.tokenizer().kind(), "bpe");
  EXPECT_TRUE(file_exists(d.path + "/bpe/tokenizer.blob"));
  // bpb counts the bytes the predicted tokens stand for, so it is comparable to a byte model's.
  EXPECT_GT(r.last_val.bytes, uint64_t(r.last_val.tokens));
  EXPECT_NEAR(r.last_val.bpb,
              r.last_val.loss * r.last_val.tokens / r.last_val.bytes / std::log(2.0), 1e-9);
  // The checkpoint carries the tokenizer: a resume needs nothing else.
  CheckpointMeta m = read_checkpoint_meta(r.checkpoint);
  EXPECT_EQ(m.tokenizer_kind, "bpe");
  EXPECT_FALSE(m.tokenizer_blob.empty());
}

TEST(Evaluation, EveryTokenAfterTheFirstIsPredictedOnce) {
  TempDir d;
  Config cfg = tiny_config(d.path, d.path);
  auto tok = data::make_byte_tokenizer();
  data::TokenStream s = data::tokenize_text(*tok, std::string(103, 'a') + "bc");
  Transformer m(cfg.model, 3, 16);
  m.params().initialize(5);
  EvalResult r = evaluate(m, s, 3, 16);
  EXPECT_EQ(r.tokens, int64_t(s.ids.size()) - 1);
  EXPECT_EQ(r.bytes, s.ids.size() - 1);
  // The same total with another batching: the loss is a property of the text, not of batching.
  Transformer m1(cfg.model, 1, 16);
  m1.params().initialize(5);
  EvalResult r1 = evaluate(m1, s, 1, 16);
  EXPECT_NEAR(r1.loss, r.loss, 1e-6);
}

}  // namespace

namespace {

TEST(Training, ANewRunRefusesADirectoryHoldingARunUnlessOverwriting) {
  // A second run into the same train.out_dir used to replace its checkpoints and cut its
  // metrics.jsonl silently.
  TempDir d;
  make_data(d.path);
  const Config cfg = tiny_config(d.path, d.path + "/run");
  Trainer(cfg, single_process_communicator(), {.stop_after = 2}).run();
  const std::string metrics = read_file(d.path + "/run/metrics.jsonl");
  const auto lines = std::count(metrics.begin(), metrics.end(), '\n');
  expect_error([&] { Trainer t(cfg, single_process_communicator()); },
               {d.path + "/run", "last.safetensors", fmt::format("metrics.jsonl ({} lines)", lines),
                "--overwrite", "--resume " + d.path + "/run/last.safetensors"});
  EXPECT_EQ(read_file(d.path + "/run/metrics.jsonl"), metrics);  // untouched
  // Resuming is allowed; so is overwriting, which removes the old run's files first (an
  // interrupted new run must not leave the old last.safetensors looking like its own).
  Trainer(cfg, single_process_communicator(), {.resume = d.path + "/run/last.safetensors"});
  write_file_atomic(d.path + "/run/notes.txt", "mine");
  Trainer t(cfg, single_process_communicator(), {.overwrite = true});
  EXPECT_FALSE(file_exists(d.path + "/run/last.safetensors"));
  EXPECT_TRUE(file_exists(d.path + "/run/notes.txt"));  // nothing but the run's files goes
  EXPECT_EQ(run_files_in(d.path + "/run"), std::vector<std::string>{"metrics.jsonl"});
  // A fresh directory or one with other files only is free.
  EXPECT_TRUE(run_files_in(d.path + "/nope").empty());
  claim_run_dir(d.path, false);  // holds only data files
}

}  // namespace
