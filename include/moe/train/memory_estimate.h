// Memory limits checked up front. A model is sized from its config alone (no allocation), and
// compared with what the machine can give before anything large is allocated: n_layers = 1e8
// used to grow past 6.8 GB and keep going, 2e9 ended in a bare std::bad_alloc.
//
// The estimate is an upper bound of what the Transformer allocates (weights in the ParamStore,
// the activation arena of Transformer::activation_bytes(), the RoPE table), within ~1.5× of it
// (tests/train/test_memory_estimate.cpp holds it to both against real models), plus what the
// use adds: gradients and AdamW moments for training, a KV cache for generation.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "moe/model/config.h"

namespace moe {

struct MemoryEstimate {
  // Bytes; doubles, so a config of any size is estimated without overflow.
  double weights = 0;        // fp32 parameters (with the ParamStore's 64-byte alignment)
  double training = 0;       // gradients + both AdamW moments (0 unless training)
  double activations = 0;    // the activation arena and the RoPE table for batch × seq
  double kv_cache = 0;       // generation: n_layers × context × 2 × n_kv_heads·head_dim floats
  double low_precision = 0;  // train.precision = bf16: shadows, saved bf16 operands, scratch
  double total() const { return weights + training + activations + kv_cache + low_precision; }
};

enum class MemoryUse { kTrain, kEval, kGenerate };

// For a model built for max_batch × max_seq (Transformer's sizes); kv_context: positions of the
// KV cache (kGenerate only). Never throws for size: counts that exceed int64 stay doubles.
MemoryEstimate estimate_memory(const ModelConfig& cfg, int max_batch, int max_seq, MemoryUse use,
                               int kv_context = 0, Precision precision = Precision::kFp32);

// What this process may still allocate, in bytes: /proc/meminfo's MemAvailable, lowered to the
// cgroup's memory.max − memory.current (v2) or limit − usage (v1) when one is set; nullopt when
// neither can be read.
std::optional<double> available_memory_bytes();

// Throws one moe::Error when e.total() exceeds `available` (default: available_memory_bytes();
// nothing is checked when that is unknown): "<what> needs ~6.8 GB (weights …, gradients and AdamW
// …, activations … for batch B × seq T) with model.n_layers = …, d_model = …, … but 2.1 GB is
// available (…)".
void check_memory(const MemoryEstimate& e, const ModelConfig& cfg, int max_batch, int max_seq,
                  const std::string& what, std::optional<double> available = std::nullopt);

// "6.8 GB", "512.0 MB": bytes for people (powers of 1000, as free(1) -h does not; as df -H does).
std::string human_bytes(double bytes);

}  // namespace moe
