// What a training run reports while it runs, for whoever started it to show (the `moe` command
// prints a progress bar or plain lines; a test records the events). The trainer itself never
// prints: it calls these hooks, in this order over a run:
//   on_upcycle (constructor, when upcycling) → on_start → { on_log | on_eval | on_checkpoint }*
//   → on_checkpoint (the final checkpoint, or the stop checkpoint followed by on_stop).
// Every rank of a distributed run calls them with the same values; a caller that wants one voice
// hands the other ranks a TrainObserver (the base class: every hook does nothing).
// metrics.jsonl is not an observer: the trainer writes it itself, as a file of the run.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace moe {

struct EvalResult;

// Facts about the run, known once the model, tokenizer and data are ready.
struct RunInfo {
  std::size_t parameters = 0;  // every parameter of the model, trainable or frozen
  int n_layers = 0;
  std::string ffn;  // the first block's FFN, described (e.g. "moe 8 experts top-2 ...")
  std::string tokenizer;
  int vocab_size = 0;  // of the tokenizer
  std::size_t train_tokens = 0, val_tokens = 0;
  int threads = 0;  // OpenMP threads
  std::string blas;
  int64_t first_step = 0;  // > 0 when the run resumes a checkpoint
  int64_t steps = 0;       // train.steps: the run ends after this many optimizer steps
};

// One log line (every train.log_every steps and at the last step), the values metrics.jsonl gets.
struct LogLine {
  int64_t step = 0;  // optimizer steps done
  int64_t steps = 0;
  double loss = 0;  // mean training loss of this step (Trainer::losses().back())
  double lr = 0;
  double grad_norm = 0;     // before clipping
  double tokens_per_s = 0;  // training throughput since the last log line (evaluations excluded)
  double elapsed_s = 0;     // since the run first started, resumed runs included
  std::optional<double> eta_s;  // steps left at this throughput; none before any throughput
};

enum class CheckpointKind { kPeriodic, kStop, kFinal };

struct CheckpointSaved {
  int64_t step = 0;
  std::string path;
  CheckpointKind kind = CheckpointKind::kPeriodic;
};

// Why a run stopped before train.steps.
enum class StopReason {
  kRequested,  // TrainOptions::stop_requested said so (Ctrl-C in `moe train`)
  kTimeLimit,  // train.time_limit_s
  kStepLimit,  // TrainOptions::stop_after
};

struct RunStopped {
  int64_t step = 0;
  StopReason reason = StopReason::kRequested;
  std::string checkpoint;  // last.safetensors, written with optimizer state: resumable
};

class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  // Weights copied from a dense checkpoint into this MoE model (TrainOptions::upcycle_from).
  virtual void on_upcycle(int /*tensors*/, const std::string& /*from*/) {}
  virtual void on_start(const RunInfo& /*info*/) {}
  virtual void on_log(const LogLine& /*line*/) {}
  // A validation (train.eval_every steps and at the last step) after `step` optimizer steps.
  virtual void on_eval(int64_t /*step*/, const EvalResult& /*result*/) {}
  virtual void on_checkpoint(const CheckpointSaved& /*saved*/) {}
  // The run stopped before train.steps; sent after its checkpoint's on_checkpoint.
  virtual void on_stop(const RunStopped& /*stopped*/) {}
};

}  // namespace moe
