// Trainer: data → model step → optimizer → eval → log → checkpoint.
//   out_dir/metrics.jsonl   one JSON object per log line (step, loss, lr, grad_norm, tokens_per_s,
//                           elapsed_s) and per evaluation (step, val_loss, val_bpb)
//   out_dir/last.safetensors  latest checkpoint (with optimizer state), written atomically
//   out_dir/final.safetensors the finished model (with optimizer state, so it can be resumed)
// Batches are windows of the train token stream whose start offsets come from the counter-based
// RNG keyed by (seed, step, micro-batch): a resumed run sees exactly the batches the
// uninterrupted run would have, so its losses are bit-identical.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/data/token_data.h"
#include "moe/data/tokenizer.h"
#include "moe/dist/communicator.h"
#include "moe/formats/model_file.h"
#include "moe/infer/engine.h"
#include "moe/model/transformer.h"
#include "moe/train/checkpoint.h"
#include "moe/train/config.h"
#include "moe/train/observer.h"
#include "moe/train/optimizer.h"
#include "moe/train/routing_groups.h"

namespace moe {

struct EvalResult {
  double loss = 0;  // mean nats per predicted token
  double bpb = 0;   // bits per byte of the text those tokens stand for
  int64_t tokens = 0;
  uint64_t bytes = 0;
  nlohmann::json moe;  // per MoE layer routing metrics over the evaluated text (null if dense)
  // With groups: per token-choice MoE layer, its choices by group and their mutual information
  // (train/routing_groups.h); null otherwise.
  nlohmann::json by_group;
};

// Routing metrics of every MoE layer accumulated since the last call, then reset (null if the
// model has no MoE layer).
nlohmann::json collect_moe_metrics(Transformer& model);

// Evaluates windows of T tokens (stride T, so every token after the first is predicted exactly
// once) in batches of B; max_windows > 0 caps how many (taken evenly spaced across the stream,
// which is what the periodic validation uses), 0 = the whole stream.
// groups (optional): the group of every token of `stream`, to count the experts chosen per group.
EvalResult evaluate(Transformer& model, const data::TokenStream& stream, int B, int T,
                    int64_t max_windows = 0, const TokenGroups* groups = nullptr);

// The same windows and loss with the inference engine (weights in their stored dtype, no f32
// copy): for models from outside. One window at a time from an empty cache; no routing metrics.
EvalResult evaluate(infer::Engine& engine, const data::TokenStream& stream, int T);

struct TrainOptions {
  std::string resume;     // checkpoint to resume (model + optimizer + step); "" = fresh
  std::string init_from;  // checkpoint whose weights start a fresh run; "" = random init
  // With init_from (our checkpoint): accept a checkpoint whose model differs from the config's
  // in fields that change the weights' meaning (the differences are printed); false = refuse.
  bool allow_model_change = false;
  std::string upcycle_from;  // dense checkpoint to upcycle into this (MoE) model; "" = none
  // Stop after this many optimizer steps in total (saving last.safetensors as a stop request
  // does), as if interrupted; 0 = run to train.steps. The schedule still spans train.steps, so a
  // resumed run continues exactly where this one stopped.
  int64_t stop_after = 0;
  // A fresh run (no resume) into a train.out_dir that already holds a run (a checkpoint or
  // metrics.jsonl): false = refuse with one line; true = remove those files and start
  // (run_dir.h). Sweeps and comparisons set it: they redo a run they did not record as finished.
  bool overwrite = false;
  // Partition every MoE layer's experts over this many ranks: 1 (off) or all of them.
  int expert_parallel = 1;
  // Asked once after every optimizer step, on every rank: true on any rank saves
  // last.safetensors and stops all ranks at that step. Must be cheap (`moe train` reads the flag
  // its SIGINT/SIGTERM handler sets).
  std::function<bool()> stop_requested = [] { return false; };
  // Test-only fault injection (tests/python/test_data_parallel.py): with several ranks, the rank
  // of this number adds 0.5 to its first replicated weight at start, a divergence no bug-free run
  // produces and the shared updates do not erase, so the replica check must stop the job.
  std::optional<int> fault_replica_rank;
};

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0;
  EvalResult last_val;
  std::string checkpoint;  // path of the final (or interrupt) checkpoint
  bool interrupted = false;
};

// One training run. The ranks of `comm` train together (data parallel: each takes
// train.batch_size / P sequences of every batch; expert parallel with opts.expert_parallel);
// every rank constructs its Trainer with the same config and calls run(). Progress goes to
// `observer` (observer.h), which must outlive the trainer (the first form reports to nobody);
// the trainer itself prints nothing.
class Trainer {
 public:
  Trainer(const Config& cfg, Communicator& comm, TrainOptions opts = {});
  Trainer(const Config& cfg, Communicator& comm, TrainOptions opts, TrainObserver& observer);
  TrainResult run();
  // Per-step training losses of this run (for tests).
  const std::vector<double>& losses() const { return losses_; }
  Transformer& model() { return *model_; }
  // With TrainOptions::allow_model_change: the differences between the --init-from checkpoint's
  // model and the config's that were accepted (fields, values, identity hashes); "" = none.
  const std::string& allowed_model_change() const { return allowed_model_change_; }
  const data::Tokenizer& tokenizer() const { return *tokenizer_; }
  const data::TokenStream& val_stream() const { return val_; }

 private:
  using Clock = std::chrono::steady_clock;
  // The loss of one optimizer step (the mean over the global batch) and what the step reported.
  struct StepResult {
    double loss = 0, aux = 0;
    OptimStats stats;
  };
  // Tokens and time since the last log line: the throughput it reports.
  struct Window {
    Clock::time_point start;
    int64_t tokens = 0;
    double allreduce_s = 0;  // data parallel: time in the gradient all-reduce
  };

  void load_weights(const CheckpointMeta& resume_meta);
  std::unique_ptr<formats::ModelReader> adopt_foreign_model();
  void check_model_matches(const ModelConfig& stored, const std::string& path, bool resume);
  void freeze_parameters();
  void inject_replica_fault();
  RunInfo run_info() const;
  StepResult train_step(int64_t step);
  void log_step(const StepResult& r);
  void evaluate_now(TrainResult& res);
  std::optional<StopReason> stop_reason();
  double elapsed() const;

  void allreduce_replicated_grads();
  void check_replicas();
  void sample_batch(int64_t step, int micro, int32_t* x, int32_t* y) const;
  // aux_loss_scope global_batch: the step's counting forwards (FeedForward::needs_count_pass).
  void count_pass(int64_t step, const StepInfo& info);
  void save(const std::string& path, CheckpointKind kind);
  void log_json(const nlohmann::json& j);

  Config cfg_;
  TrainOptions opts_;
  Communicator& comm_;
  TrainObserver& observer_;
  int local_batch_ = 0;  // sequences of each batch this rank takes: batch_size / P
  std::unique_ptr<data::Tokenizer> tokenizer_;
  std::string allowed_model_change_;
  data::TokenStream train_, val_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<AdamWOptimizer> opt_;
  TrainState state_;
  std::vector<double> losses_;
  std::vector<int32_t> batch_x_, batch_y_;  // one micro-batch [local_batch_, seq_len]
  Clock::time_point run_start_;             // of this process's run() (elapsed adds state_'s)
  double elapsed_before_ = 0;               // seconds trained before this run() (a resume)
  Window window_;
  // Data-parallel reduction of row-sparse tables: scratch reused every step.
  std::vector<float> sparse_mark_, sparse_buf_;
  std::vector<int32_t> sparse_rows_;
};

// The tokenizer a config asks for: byte, or BPE trained on <data.dir>/train.txt and cached as
// <out_dir>/tokenizer.blob so a resume uses the same one.
std::unique_ptr<data::Tokenizer> make_tokenizer(const Config& cfg);

}  // namespace moe
