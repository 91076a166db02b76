// Training-loop behaviour: determinism, bit-exact resume, checkpoint validation, NaN handling,
// config errors, KV-cache decoding, and the accountant against the allocated model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "../error_util.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/safetensors.h"
#include "moe/infer/generator.h"
#include "moe/scaling/accounting.h"
#include "moe/train/checkpoint.h"
#include "moe/train/compare.h"
#include "moe/train/sweep.h"
#include "moe/train/trainer.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

using moe::testing::error_of;
using moe::testing::expect_error;

// A fresh temporary directory per test, removed afterwards.
struct TempDir {
  std::string path;
  TempDir() {
    path = (fs::temp_directory_path() /
            ("moe_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Writes small train/val/test splits of English-like text.
std::string make_data(const std::string& dir) {
  const char* words[] = {"the",    "jury",      "said",   "that", "city",   "election",
                         "was",    "conducted", "in",     "a",    "manner", "of",
                         "praise", "and",       "thanks", "for",  "it"};
  for (const char* split : {"train", "val", "test"}) {
    std::string text;
    uint32_t x = split[0];
    const int n = split[0] == 't' && split[1] == 'r' ? 6000 : 800;
    for (int i = 0; i < n; ++i) {
      x = x * 1664525u + 1013904223u;
      text += words[(x >> 16) % 17];
      text += (i % 11 == 10) ? " .\n" : " ";
    }
    write_file_atomic(dir + "/" + split + ".txt", text);
  }
  return dir;
}

Config tiny_config(const std::string& data_dir, const std::string& out_dir) {
  nlohmann::json j = {{"model",
                       {{"d_model", 32},
                        {"n_layers", 2},
                        {"n_heads", 4},
                        {"n_kv_heads", 2},
                        {"max_seq_len", 32},
                        {"qk_norm", true},
                        {"ffn", {{"kind", "dense"}, {"d_ff", 64}}}}},
                      {"data", {{"dir", data_dir}}},
                      {"train",
                       {{"batch_size", 4},
                        {"seq_len", 16},
                        {"steps", 12},
                        {"lr", 3e-3},
                        {"warmup_steps", 3},
                        {"min_lr", 3e-4},
                        {"eval_every", 6},
                        {"eval_batches", 2},
                        {"log_every", 3},
                        {"checkpoint_every", 0},
                        {"grad_accum", 2},
                        {"out_dir", out_dir}}}};
  return config_from_json(j, "test");
}

TEST(Training, SameSeedGivesBitIdenticalLosses) {
  TempDir d;
  make_data(d.path);
  Trainer a(tiny_config(d.path, d.path + "/a"), world());
  a.run();
  Trainer b(tiny_config(d.path, d.path + "/b"), world());
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
  Trainer full(full_cfg, world());
  full.run();
  Trainer first(part_cfg, world(), {.stop_after = 5});
  TrainResult r1 = first.run();
  EXPECT_TRUE(r1.interrupted);
  EXPECT_EQ(r1.steps_done, 5);
  Trainer second(part_cfg, world(), {.resume = r1.checkpoint});
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
  Trainer t(cfg, world());
  try {
    t.run();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at step"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(file_exists(d.path + "/nan/final.safetensors"));
}

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
  EXPECT_TRUE(c.model.qk_norm);
  nlohmann::json k = nlohmann::json::object();
  apply_override(k, "train.nope=1");
  EXPECT_NE(error_of([&] { config_from_json(k, "--set"); }).find("train.nope"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(k, "noequals"); }).find("key=value"), std::string::npos);
}

TEST(Generation, KvCacheDecodingEqualsFullForward) {
  TempDir d;
  Config cfg = tiny_config(d.path, d.path);
  const int T = 12;
  Transformer full(cfg.model, 1, T), step(cfg.model, 1, 1);
  full.params().initialize(7);
  step.params().initialize(7);
  std::vector<int32_t> toks(T);
  for (int i = 0; i < T; ++i) toks[i] = (i * 37 + 11) % 256;
  StepInfo info;
  info.training = false;
  full.forward(toks.data(), nullptr, 1, T, info, 0.f);
  KVCache cache = step.make_cache(T);
  const int V = cfg.model.vocab_size;
  for (int t = 0; t < T; ++t) {
    const float* l = step.decode_step(toks[t], t, cache);
    for (int v = 0; v < V; ++v)
      ASSERT_NEAR(l[v], full.logits()[t * V + v], 1e-4) << "position " << t << " token " << v;
  }
}

TEST(Generation, SlidingWindowKeepsTheContextWithinMaxContext) {
  // Past max_context the last half of the context is re-encoded: the tokens generated after a
  // slide equal those of a fresh generation from that half-context (greedy, so deterministic).
  TempDir d;
  Config cfg = tiny_config(d.path, d.path);
  Transformer m(cfg.model, 1, 1);
  m.params().initialize(13);
  SampleOptions o;
  o.max_new_tokens = 12;
  o.temperature = 0;
  o.max_context = 8;
  std::vector<int32_t> prompt = {1, 2, 3};
  std::vector<int32_t> out = generate(m, prompt, o);
  ASSERT_EQ(out.size(), 12u);
  // The 9th context token triggers the slide: context = last 4 of the first 9.
  std::vector<int32_t> ctx = prompt;
  ctx.insert(ctx.end(), out.begin(), out.begin() + 6);  // 9 tokens
  std::vector<int32_t> half(ctx.end() - 4, ctx.end());
  SampleOptions o2 = o;
  o2.max_new_tokens = 1;
  EXPECT_EQ(generate(m, half, o2)[0], out[6]);
}

TEST(Generation, SamplerIsGreedyAtZeroTemperatureAndRespectsTopP) {
  std::vector<float> logits = {0.f, 3.f, 1.f, 2.9f};
  std::vector<std::pair<float, int32_t>> scratch;
  EXPECT_EQ(sample_token(logits.data(), 4, 0.f, 1.f, 0.99f, scratch), 1);
  // With top_p small only the most likely token survives, whatever the draw.
  for (float u : {0.f, 0.5f, 0.999f})
    EXPECT_EQ(sample_token(logits.data(), 4, 1.f, 0.1f, u, scratch), 1);
  // With top_p = 1 a draw near 1 reaches the least likely token.
  EXPECT_EQ(sample_token(logits.data(), 4, 1.f, 1.f, 0.9999f, scratch), 0);
}

TEST(Accounting, CountsEqualAllocatedParameters) {
  for (
      const char* text :
      {R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 4}})",
       R"({"model": {"d_model": 48, "n_layers": 3, "n_heads": 6, "n_kv_heads": 2, "qk_norm": true, "tie_embeddings": false}})",
       R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "head_dim": 24, "ffn": {"activation": "gelu", "d_ff": 80}}})",
       R"({"model": {"d_model": 32, "n_layers": 3, "n_heads": 4, "ffn_overrides": {"1": {"activation": "gelu", "d_ff": 40}}}})"}) {
    Config c = config_from_json(nlohmann::json::parse(text), "test");
    Transformer m(c.model, 1, 4);
    int64_t allocated = 0;
    for (auto& p : m.params().all()) allocated += int64_t(p.numel);
    ModelCount mc = count_model(c.model, 16);
    EXPECT_EQ(mc.total, allocated) << text;
    EXPECT_EQ(mc.active, mc.total) << text;  // dense: every parameter is active
  }
}

TEST(Accounting, FlopsMatchHandCount) {
  // C=32, L=2, 4 heads of 8, byte vocab, SwiGLU d_ff=64, tied, T=16.
  Config c = config_from_json(
      nlohmann::json::parse(
          R"({"model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "ffn": {"d_ff": 64}}, "train": {"seq_len": 16}})"),
      "test");
  ModelCount m = count_model(c.model, 16);
  const double attn = 2 * 4.0 * 32 * 32, ffn = 2 * 3.0 * 32 * 64, head = 256.0 * 32;
  EXPECT_DOUBLE_EQ(m.flops_matmul_fwd, 2 * (attn + ffn + head));
  EXPECT_DOUBLE_EQ(m.flops_attention_fwd, 2 * 2 * 2 * 32 * 17 / 2.0);
  EXPECT_DOUBLE_EQ(m.flops_train, 3 * (m.flops_matmul_fwd + m.flops_attention_fwd));
}

TEST(Training, AStopRequestSavesACheckpointThatResumes) {
  TempDir d;
  make_data(d.path);
  // As if the user pressed Ctrl-C before the first step finished (`moe train` asks its signal
  // handler's flag).
  Trainer t(tiny_config(d.path, d.path + "/int"), world(), {.stop_requested = [] { return true; }});
  TrainResult r = t.run();
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(r.steps_done, 1);
  ASSERT_TRUE(file_exists(d.path + "/int/last.safetensors"));
  EXPECT_EQ(read_checkpoint_meta(d.path + "/int/last.safetensors").state.step, 1);
}

TEST(Training, FrozenParametersStayBitIdentical) {
  TempDir d;
  make_data(d.path);
  Config cfg = tiny_config(d.path, d.path + "/fz");
  cfg.train.freeze = {"*.attn.*", "embed.weight"};
  cfg.train.steps = 3;
  Trainer t(cfg, world());
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
  EXPECT_NE(error_of([&] { Trainer x(bad, world()); }).find("expertz"), std::string::npos);
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
  Trainer t(cfg, world());
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

TEST(Sweep, AppendsOneLinePerRunAndResumesBySkippingFinishedRuns) {
  TempDir d;
  make_data(d.path);
  write_file_atomic(d.path + "/base.json",
                    nlohmann::json({{"model", {{"max_seq_len", 16}}},
                                    {"data", {{"dir", d.path}}},
                                    {"train", {{"batch_size", 4}, {"seq_len", 16}}}})
                        .dump());
  const std::string grid = d.path + "/grid.json";
  write_file_atomic(grid, nlohmann::json({{"base", d.path + "/base.json"},
                                          {"out_dir", d.path + "/sweep"},
                                          {"d_model", {64}},
                                          {"tokens", {320, 640}},
                                          {"granularity", {1, 2}},
                                          {"expansion", 2}})
                              .dump());
  SweepSummary a = run_sweep(grid, world());
  EXPECT_EQ(a.ran, 4);
  const std::string text = read_file(a.runs_file);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4);
  auto first = nlohmann::json::parse(text.substr(0, text.find('\n')));
  for (const char* k : {"name", "N", "D", "G", "E", "flops", "loss", "val_bpb"})
    EXPECT_TRUE(first.contains(k)) << k;
  EXPECT_EQ(first["D"].get<double>(), 320.0);
  // N: non-embedding, router excluded: 1 block of d=64 with 2·G experts of width 256/G (GELU)
  // = attention 4·64² + FFN 2·64·256·2 + norms 3·64.
  EXPECT_EQ(first["N"].get<double>(), 4.0 * 64 * 64 + 2.0 * 64 * 256 * 2 + 3 * 64);
  SweepSummary b = run_sweep(grid, world());
  EXPECT_EQ(b.ran, 0);
  EXPECT_EQ(b.skipped, 4);
}

TEST(Compare, EqualFlopBudgetsAndResumableResults) {
  TempDir d;
  make_data(d.path);
  auto write_cfg = [&](const std::string& name, const nlohmann::json& ffn) {
    const std::string p = d.path + "/" + name + ".json";
    write_file_atomic(p, nlohmann::json({{"model",
                                          {{"d_model", 32},
                                           {"n_layers", 2},
                                           {"n_heads", 2},
                                           {"max_seq_len", 16},
                                           {"ffn", ffn}}},
                                         {"data", {{"dir", d.path}}},
                                         {"train", {{"batch_size", 4}, {"seq_len", 16}}}})
                             .dump());
    return p;
  };
  CompareOptions o;
  o.flops = 3e8;
  o.configs = {write_cfg("small", {{"d_ff", 32}}), write_cfg("big", {{"d_ff", 256}})};
  o.out_dir = d.path + "/cmp";
  auto r = run_compare(o, world());
  ASSERT_EQ(r.size(), 2u);
  for (auto& j : r) {
    // Each run spends the budget to within one step.
    const double per_step = j["flops_per_token_train"].get<double>() * 64;
    EXPECT_LE(j["flops"].get<double>(), o.flops);
    EXPECT_GT(j["flops"].get<double>(), o.flops - per_step);
    EXPECT_TRUE(std::isfinite(j["val_bpb"].get<double>()));
  }
  EXPECT_GT(r[0]["steps"].get<int64_t>(),
            r[1]["steps"].get<int64_t>());  // cheaper model, more steps
  auto again = run_compare(o, world());     // resumable: read back, not retrained
  EXPECT_EQ(again[1]["wall_s"], r[1]["wall_s"]);
}

}  // namespace
