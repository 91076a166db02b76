// GGUF models in and out, for the architectures whose computation our Transformer reproduces
// exactly (facts from llama.cpp's src/models/<arch>.cpp and llama-graph.cpp build_moe_ffn):
//
//   arch       attention                         FFN                                   RoPE
//   llama      q/k/v (+ optional biases)         dense, or MoE: softmax, top-k renormalised
//   interleaved olmoe      whole-row q/k RMSNorm             MoE: softmax, plain top-k rotate-half
//   qwen2moe   q/k/v biases (optional)           MoE plain top-k + one shared expert   rotate-half
//                                                gated by σ(x·w)
//   qwen3moe   per-head q/k RMSNorm              MoE: softmax, top-k renormalised      rotate-half
//   qwen3      per-head q/k RMSNorm              dense                                 rotate-half
//   deepseek   plain                             leading dense blocks, then MoE plain  interleaved
//                                                top-k (× expert_weights_scale) + shared experts
//
// Tensor names map one to one (docs/FORMATS.md): ggml's ne = [C, H, E] is our [E, H, C], so no
// tensor is transposed. Anything a file holds that these computations do not use (a tensor we
// do not map, rope scaling, sliding windows, fused qkv, expert groups, …) is refused with one
// line naming it, never ignored. DeepSeek-V2/V3 (MLA) and gpt-oss are refused by name.
//
// Export writes the architecture that computes our model (a model with rotate-half RoPE and no
// QK-norm goes out as "llama", its q/k rows permuted within each head so interleaved RoPE
// computes the same scores), plus our own config under the key "moe.config", so that importing
// our own export restores the exact model (un-permuting q/k): moe → GGUF (F32) → moe is
// bit-exact. What no llama.cpp architecture computes (PEER, expert choice, noisy or GShard
// routing, sigmoid scores, DeepSeek-V3 bias, GELU experts, capacity at inference, …) is
// refused with one line naming the feature.
#pragma once
#include <memory>
#include <string>

#include "moe/data/tokenizer.h"
#include "moe/formats/gguf.h"
#include "moe/formats/model_file.h"

namespace moe::formats {

std::unique_ptr<ModelReader> open_gguf_model(const std::string& path);

// The architecture export would choose for cfg, or a moe::Error naming the feature no
// llama.cpp architecture computes.
std::string gguf_architecture_for(const ModelConfig& cfg);

// Writes src (any ModelReader: our checkpoint, a Hugging Face directory, another GGUF) as GGUF
// with every matrix in `dtype` (F32, F16, BF16 or Q8_0; norms, biases and the router stay F32
// as llama.cpp's own converter keeps them), one tensor at a time. `tok` is written as the
// file's vocabulary (our byte tokenizer as a byte-level vocabulary of 256 byte tokens).
void write_gguf_model(const ModelReader& src, const data::Tokenizer& tok, GgmlType dtype,
                      const std::string& path);

}  // namespace moe::formats
