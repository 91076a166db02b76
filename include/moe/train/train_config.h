// The training section of the config ("train"): batch shape, schedule, optimizer, evaluation,
// checkpoints. Every field is declared once, with its JSON name, rule and doc line, in
// train_config_fields() (src/train/train_config.cpp); the member initialisers are the defaults.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/core/config_fields.h"
#include "moe/model/config.h"

namespace moe {

struct TrainConfig {
  int batch_size = 16;  // sequences per micro-batch
  int seq_len = 128;    // T
  int grad_accum = 1;   // micro-batches per optimizer step
  // Number a step's sequences across its micro-batches (one data stream per step), so that
  // grad_accum × ranks splits of one step batch see the same sequences; false: one stream per
  // micro-batch (the original order). Equal to it when grad_accum = 1.
  bool sample_by_step = false;
  int steps = 1000;
  float lr = 1e-3f;
  float min_lr = 1e-4f;
  int warmup_steps = 100;
  float weight_decay = 0.1f;
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float grad_clip = 1.0f;         // global-norm clip; 0 = off
  bool decay_embeddings = false;  // norms never decay; embeddings only if this is set
  int eval_every = 200;
  int eval_batches = 20;  // val batches per periodic evaluation
  int log_every = 10;
  int checkpoint_every = 500;
  uint64_t seed = 1234;
  int threads = 0;         // 0 = OpenMP default
  float time_limit_s = 0;  // stop (with checkpoint) after this much training time; 0 = off
  // Glob patterns (fnmatch) of parameter names the optimizer must not update, for fine-tuning,
  // e.g. ["*.experts.*", "*.router.*"] or ["*.attn.*"].
  std::vector<std::string> freeze;
  // Constant learning rate of row-sparse tables (PEER's u, v); 0 = the scheduled rate.
  float sparse_lr = 0;
  // The operands of the matrix products (docs/KERNELS.md): bf16 rounds weights once per
  // optimizer step and activations per product, accumulating in f32; masters, gradients, AdamW,
  // norms, softmax, the router and the losses stay f32. A training knob: the checkpoint keeps f32
  // masters whatever it is.
  Precision precision = Precision::kFp32;
  std::string out_dir = "runs/default";
};

// The declarations (JSON paths relative to "train").
const FieldTable<TrainConfig>& train_config_fields();

}  // namespace moe
