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
// Every tensor whose name and shape match is copied (embeddings, attention, norms, dense
// FFNs); each MoE layer's experts start from the dense FFN of the same block: a copy when
// d_expert equals the dense d_ff, else expert e takes the slice e mod (d_ff/d_expert) of the
// hidden units (so G fine-grained experts together hold the whole dense FFN); shared experts
// alike. Routers keep their fresh initialisation. Returns the number of tensors filled.
int upcycle_from_dense(const std::string& path, Transformer& model);

}  // namespace moe
