// The Trainer reports to its caller's TrainObserver (and prints nothing): the events of a run, in
// order, with the values the run logs to metrics.jsonl; and a stop request from the caller saves
// last.safetensors and stops after the step during which it came.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../train_util.h"
#include "moe/core/file_io.h"
#include "moe/train/trainer.h"

using namespace moe;
using moe::testing::make_data;
using moe::testing::TempDir;
namespace fs = std::filesystem;

namespace {

Config tiny_config(const std::string& dir, int steps, int log_every, int eval_every,
                   int checkpoint_every) {
  nlohmann::json j = {
      {"model",
       {{"d_model", 32},
        {"n_layers", 2},
        {"n_heads", 4},
        {"max_seq_len", 16},
        {"ffn", {{"kind", "moe"}, {"d_ff", 32}, {"num_experts", 4}, {"top_k", 2}}}}},
      {"data", {{"dir", dir}}},
      {"train",
       {{"batch_size", 4},
        {"seq_len", 16},
        {"steps", steps},
        {"warmup_steps", 2},
        {"log_every", log_every},
        {"eval_every", eval_every},
        {"eval_batches", 1},
        {"checkpoint_every", checkpoint_every},
        {"out_dir", dir + "/run"}}}};
  return config_from_json(j, "test");
}

// Every event as one line of text, plus the values a test compares.
struct Recorder : TrainObserver {
  std::vector<std::string> events;
  std::vector<LogLine> logs;
  std::vector<double> val_losses;
  RunInfo info;
  RunStopped stopped;
  void on_start(const RunInfo& i) override {
    info = i;
    events.push_back("start");
  }
  void on_log(const LogLine& l) override {
    logs.push_back(l);
    events.push_back("log " + std::to_string(l.step));
  }
  void on_eval(int64_t step, const EvalResult& r) override {
    val_losses.push_back(r.loss);
    events.push_back("eval " + std::to_string(step));
  }
  void on_checkpoint(const CheckpointSaved& c) override {
    const char* kind = c.kind == CheckpointKind::kFinal  ? "final"
                       : c.kind == CheckpointKind::kStop ? "stop"
                                                         : "periodic";
    events.push_back("checkpoint " + std::to_string(c.step) + " " + kind + " " + c.path);
  }
  void on_stop(const RunStopped& s) override {
    stopped = s;
    events.push_back("stop " + std::to_string(s.step));
  }
};

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

}  // namespace

TEST(TrainerObserver, ReportsTheRunInOrderWithTheLoggedValues) {
  TempDir d;
  make_data(d.path);
  Recorder rec;
  Trainer t(tiny_config(d.path, 10, 3, 4, 5), single_process_communicator(), {}, rec);
  const TrainResult r = t.run();
  const std::string out = d.path + "/run";
  const std::vector<std::string> expected = {
      "start",   "log 3",
      "eval 4",  "checkpoint 5 periodic " + out + "/last.safetensors",
      "log 6",   "eval 8",
      "log 9",   "log 10",
      "eval 10", "checkpoint 10 final " + out + "/final.safetensors"};
  EXPECT_EQ(rec.events, expected);
  EXPECT_EQ(r.checkpoint, out + "/final.safetensors");
  EXPECT_TRUE(file_exists(r.checkpoint));

  std::size_t params = 0;
  for (const Param& p : t.model().params().all()) params += p.numel;
  EXPECT_EQ(rec.info.parameters, params);
  EXPECT_EQ(rec.info.first_step, 0);
  EXPECT_EQ(rec.info.steps, 10);
  EXPECT_EQ(rec.info.n_layers, 2);

  // The logged losses are the run's losses, and the values metrics.jsonl holds.
  ASSERT_EQ(t.losses().size(), 10u);
  const std::vector<nlohmann::json> metrics = read_metrics(out + "/metrics.jsonl");
  std::vector<nlohmann::json> train_lines, val_lines;
  for (const auto& m : metrics) (m.contains("loss") ? train_lines : val_lines).push_back(m);
  ASSERT_EQ(rec.logs.size(), 4u);
  ASSERT_EQ(train_lines.size(), 4u);
  for (std::size_t i = 0; i < rec.logs.size(); ++i) {
    const LogLine& l = rec.logs[i];
    EXPECT_EQ(l.steps, 10);
    EXPECT_EQ(l.loss, t.losses()[l.step - 1]) << l.step;
    EXPECT_EQ(train_lines[i]["step"].get<int64_t>(), l.step);
    EXPECT_EQ(train_lines[i]["loss"].get<double>(), l.loss);
    EXPECT_EQ(train_lines[i]["lr"].get<double>(), l.lr);
    EXPECT_EQ(train_lines[i]["grad_norm"].get<double>(), l.grad_norm);
    EXPECT_EQ(train_lines[i]["tokens_per_s"].get<double>(), l.tokens_per_s);
    EXPECT_EQ(train_lines[i]["elapsed_s"].get<double>(), l.elapsed_s);
    EXPECT_TRUE(train_lines[i].contains("aux_loss"));  // an MoE model logs its routing
    EXPECT_TRUE(train_lines[i].contains("moe"));
  }
  ASSERT_EQ(val_lines.size(), 3u);
  for (std::size_t i = 0; i < val_lines.size(); ++i)
    EXPECT_EQ(val_lines[i]["val_loss"].get<double>(), rec.val_losses[i]);
  EXPECT_EQ(r.last_val.loss, rec.val_losses.back());
}

TEST(TrainerObserver, AStopRequestStopsAfterItsStepWithLastSaved) {
  TempDir d;
  make_data(d.path);
  Recorder rec;
  // The caller asks to stop while step 3 runs (here: when step 3's log line arrives).
  TrainOptions opts;
  opts.stop_requested = [&] { return !rec.logs.empty() && rec.logs.back().step >= 3; };
  Trainer t(tiny_config(d.path, 10, 1, 0, 0), single_process_communicator(), opts, rec);
  const TrainResult r = t.run();
  const std::string last = d.path + "/run/last.safetensors";
  const std::vector<std::string> expected = {
      "start", "log 1", "log 2", "log 3", "checkpoint 3 stop " + last, "stop 3"};
  EXPECT_EQ(rec.events, expected);
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(r.steps_done, 3);
  EXPECT_EQ(r.checkpoint, last);
  EXPECT_EQ(t.losses().size(), 3u);
  EXPECT_EQ(rec.stopped.reason, StopReason::kRequested);
  EXPECT_EQ(rec.stopped.checkpoint, last);
  ASSERT_TRUE(file_exists(last));
  EXPECT_EQ(read_checkpoint_meta(last).state.step, 3);
  EXPECT_FALSE(file_exists(d.path + "/run/final.safetensors"));
}
