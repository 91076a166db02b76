// Trainer: data → model step → optimizer → eval → log → checkpoint.
//   out_dir/metrics.jsonl   one JSON object per log line (step, loss, lr, grad_norm, tokens_per_s,
//                           elapsed_s) and per evaluation (step, val_loss, val_bpb)
//   out_dir/last.safetensors  latest checkpoint (with optimizer state), written atomically
//   out_dir/final.safetensors the finished model (with optimizer state, so it can be resumed)
// Batches are windows of the train token stream whose start offsets come from the counter-based
// RNG keyed by (seed, step, micro-batch): a resumed run sees exactly the batches the
// uninterrupted run would have, so its losses are bit-identical.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "moe/data/token_data.h"
#include "moe/data/tokenizer.h"
#include "moe/dist/communicator.h"
#include "moe/model/transformer.h"
#include "moe/train/checkpoint.h"
#include "moe/train/config.h"
#include "moe/train/optimizer.h"

namespace moe {

struct EvalResult {
  double loss = 0;  // mean nats per predicted token
  double bpb = 0;   // bits per byte of the text those tokens stand for
  int64_t tokens = 0;
  uint64_t bytes = 0;
  nlohmann::json moe;  // per MoE layer routing metrics over the evaluated text (null if dense)
};

// Routing metrics of every MoE layer accumulated since the last call, then reset (null if the
// model has no MoE layer).
nlohmann::json collect_moe_metrics(Transformer& model);

// Evaluates windows of T tokens (stride T, so every token after the first is predicted exactly
// once) in batches of B; max_windows > 0 caps how many (taken evenly spaced across the stream,
// which is what the periodic validation uses), 0 = the whole stream.
EvalResult evaluate(Transformer& model, const data::TokenStream& stream, int B, int T,
                    int64_t max_windows = 0);

// Set by the SIGINT handler; the training loop saves a checkpoint and stops at the next step.
extern std::atomic<bool> g_stop_requested;
void install_sigint_handler();

struct TrainOptions {
  std::string resume;        // checkpoint to resume (model + optimizer + step); "" = fresh
  std::string init_from;     // checkpoint whose weights start a fresh run; "" = random init
  std::string upcycle_from;  // dense checkpoint to upcycle into this (MoE) model; "" = none
  bool quiet = false;
  // Stop after this many optimizer steps in total (saving last.safetensors as Ctrl-C does), as
  // if interrupted; 0 = run to train.steps. The schedule still spans train.steps, so a resumed
  // run continues exactly where this one stopped.
  int64_t stop_after = 0;
  // Partition every MoE layer's experts over this many MPI ranks: 1 (off) or all of them.
  int expert_parallel = 1;
};

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0;
  EvalResult last_val;
  std::string checkpoint;  // path of the final (or interrupt) checkpoint
  bool interrupted = false;
};

class Trainer {
 public:
  Trainer(const Config& cfg, TrainOptions opts);
  TrainResult run();
  // Per-step training losses of this run (for tests).
  const std::vector<double>& losses() const { return losses_; }
  Transformer& model() { return *model_; }
  const data::Tokenizer& tokenizer() const { return *tokenizer_; }
  const data::TokenStream& val_stream() const { return val_; }

 private:
  void allreduce_replicated_grads();
  // Data-parallel reduction of row-sparse tables: scratch reused every step.
  std::vector<float> sparse_mark_, sparse_buf_;
  std::vector<int32_t> sparse_rows_;
  void check_replicas();
  void sample_batch(int64_t step, int micro, int32_t* x, int32_t* y) const;
  void save(const std::string& path);
  void log_json(const nlohmann::json& j);

  Config cfg_;
  TrainOptions opts_;
  Communicator* comm_;  // data parallel: each rank takes batch_size / P sequences of each batch
  int local_batch_ = 0;
  std::unique_ptr<data::Tokenizer> tokenizer_;
  data::TokenStream train_, val_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<AdamWOptimizer> opt_;
  TrainState state_;
  std::vector<double> losses_;
};

// The tokenizer a config asks for: byte, or BPE trained on <data.dir>/train.txt and cached as
// <out_dir>/tokenizer.blob so a resume uses the same one.
std::unique_ptr<data::Tokenizer> make_tokenizer(const Config& cfg);

}  // namespace moe
