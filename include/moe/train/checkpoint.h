// Checkpoints are safetensors files (docs/FORMATS.md): every parameter under its model name,
// optionally the AdamW moments as "optim.m.<name>" / "optim.v.<name>", and in __metadata__
// (string values, as the format requires): "format" = "moe.cpp/1", "config" (JSON),
// "train_state" (JSON: step, tokens_seen, elapsed_s), "tokenizer.kind", "tokenizer.blob".
// Written atomically; loading validates format, names, dtypes and shapes, naming the file.
#pragma once
#include <cstdint>
#include <string>

#include "moe/formats/model_file.h"
#include "moe/model/transformer.h"
#include "moe/train/config.h"
#include "moe/train/optimizer.h"

namespace moe {

using formats::kCheckpointFormat;  // "moe.cpp/1", defined where the readers of files live

struct TrainState {
  int64_t step = 0;  // optimizer steps completed
  int64_t tokens_seen = 0;
  double elapsed_s = 0;
};

struct CheckpointMeta {
  Config config;
  TrainState state;
  std::string tokenizer_kind = "byte";
  std::string tokenizer_blob;
};

// A collective over model.communicator(): every rank calls it, expert-parallel shards are
// gathered into whole tensors, and rank 0 writes the file.
void save_checkpoint(const std::string& path, Transformer& model, const AdamWOptimizer* opt,
                     const CheckpointMeta& meta);
// Reads only the metadata (config, state, tokenizer); validates the format tag.
CheckpointMeta read_checkpoint_meta(const std::string& path);
// Loads parameters (and the optimizer moments when opt is given; error if absent).
void load_checkpoint(const std::string& path, Transformer& model, AdamWOptimizer* opt);

// Sparse upcycling (Komatsuzaki et al. 2023): starts an MoE model from a dense checkpoint.
// Every tensor of the model is copied from the tensor of the same name (embeddings, attention,
// norms, dense FFNs), which must exist as F32 with the same shape; each MoE layer's experts
// start from the dense FFN of the same block (F32 [D, C], w_down [C, D]): a copy when d_expert
// equals D, else expert e takes the slice e mod (D/d_expert) of the hidden units (so G
// fine-grained experts together hold the whole dense FFN); shared experts alike. Only the
// routers (and the shared experts' gate) keep their fresh initialisation. A missing, reshaped
// or non-F32 tensor is an error naming the file, the tensor, what was found and what was
// expected. Returns the number of tensors filled.
int upcycle_from_dense(const std::string& path, Transformer& model);

}  // namespace moe
