// Hugging Face model directories: config.json + model.safetensors, or shards listed in
// model.safetensors.index.json ("weight_map": HF tensor name → shard file).
//
// Read: open_hf_model(dir) turns config.json into our ModelConfig and serves each of our
// parameters from the shards (F32, BF16 or F16, widened exactly to f32; the per-expert tensors
// HF keeps are stacked straight into the caller's buffer). Supported classes ("architectures"):
//   MixtralForCausalLM   renormalised top-k, no QK-norm
//   OlmoeForCausalLM     whole-row QK-norm, top-k (norm_topk_prob)
//   Qwen2MoeForCausalLM  q/k/v biases, shared expert with a sigmoid gate, top-k
//   Qwen3MoeForCausalLM  per-head QK-norm, top-k
//   DeepseekForCausalLM  DeepSeekMoE V1: shared experts, leading dense blocks, top-k
//   LlamaForCausalLM     dense
//   Qwen3ForCausalLM     dense, per-head QK-norm
// Anything else (DeepseekV2/V3 with MLA, gpt-oss, …) and every config value our model cannot
// compute (rope_scaling, a sliding window in use, attention biases where the class has none, an
// activation other than silu, …) is refused with one line naming the file, the key and value.
//
// Write: write_hf_model() picks the class that computes exactly our model (hf_arch_for) and
// refuses what none computes (PEER, expert choice, noisy or GShard routing, sigmoid scores,
// selection bias, GELU, an evaluation capacity factor, …) with one line naming the feature.
// Every file is written atomically; the directory is created.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/core/params.h"
#include "moe/core/safetensors.h"
#include "moe/formats/model_file.h"
#include "moe/model/config.h"

namespace moe::formats {

enum class HfArch { kMixtral, kOlmoe, kQwen2Moe, kQwen3Moe, kDeepseek, kLlama, kQwen3 };
const char* hf_arch_name(HfArch a);  // "MixtralForCausalLM", …
// "MixtralForCausalLM, OlmoeForCausalLM, …" for error messages.
std::string hf_supported_archs();

// Opens a model directory. Checks at open time that every tensor the config implies is present
// in its shard with the right shape and a readable dtype, that the index names no missing shard
// and no tensor absent from its shard, and that no tensor is left over (an unknown tensor means
// a feature we do not compute). architecture() is the HF class name, format() "hf". The
// tokenizer is the directory's tokenizer.json (nullptr when there is none).
std::unique_ptr<ModelReader> open_hf_model(const std::string& dir);
// True when `path` is a directory holding config.json (what open_hf_model expects), for
// commands that take any model file and pick the reader.
bool is_hf_model_dir(const std::string& path);

// config.json (parsed) → our resolved ModelConfig; `source` names the file in errors.
ModelConfig hf_config_to_model(const nlohmann::json& config, const std::string& source,
                               HfArch* arch);

// The class that computes exactly `cfg` (resolved), or a moe::Error naming the feature none of
// them computes.
HfArch hf_arch_for(const ModelConfig& cfg);
// config.json for `cfg` written as class `arch` (hf_arch_for(cfg) or, when it computes the same
// model, another one); `dtype` goes to "torch_dtype".
nlohmann::json hf_config_from_model(const ModelConfig& cfg, HfArch arch, DType dtype);

struct HfWriteOptions {
  DType dtype = DType::F32;  // F32, BF16 or F16 (narrowing rounds to nearest even)
  uint64_t shard_bytes = 0;  // > 0: start a new shard file before one would exceed this size
                             // (a larger tensor gets a shard of its own); 0: one file
};

// Fills dst[0..numel(shape)) with our parameter `our_name` (checkpoint names, docs/FORMATS.md)
// in f32; ModelReader::read has this form.
using ParamSource =
    std::function<void(const std::string& our_name, const std::vector<int64_t>& shape, float*)>;

// Writes config.json and the weights of the model `cfg` (resolved) into `dir`: model.safetensors,
// or model-0000i-of-0000n.safetensors + model.safetensors.index.json when sharded. Tensors are
// fetched and converted one at a time (one of our tensors in memory at once).
void write_hf_model(const ModelConfig& cfg, const ParamSource& params, const std::string& dir,
                    const HfWriteOptions& opt = {});
// From a model's ParamStore (e.g. Transformer::params()); expert-parallel shards are refused.
void write_hf_model(const ModelConfig& cfg, const ParamStore& params, const std::string& dir,
                    const HfWriteOptions& opt = {});
// From any model file (GGUF, HF, ours).
void write_hf_model(const ModelReader& src, const std::string& dir, const HfWriteOptions& opt = {});

}  // namespace moe::formats
