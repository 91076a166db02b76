// The inference engine: a model run for generation and evaluation with its weights in the
// dtype its file stores them (f32, f16, bf16, Q8_0: kernels/qmatmul.h), read in place from the
// file's memory map — no f32 copy of the large matrices (embeddings, attention, experts, head);
// only the small ones (norms, biases, routers) are held in f32.
//
//   feed(tokens) appends n tokens at positions position()..position()+n-1:
//     prefill (n > 1): one pass per chunk of up to max_batch tokens — each projection one product
//       over all the chunk's tokens, MoE tokens grouped by expert and each expert's rows one
//       product, causal attention over the cache in blocks;
//     decode (n = 1): each active weight read once (the k chosen experts' matrices only).
//   The KV cache holds context() positions in f32, or in bf16 (EngineOptions::kv_type): K and V
//   rounded to nearest even as they are written, widened exactly to f32 as attention reads them,
//   so scores and the weighted sum of values are the f32 arithmetic on the rounded K and V (q and
//   the softmax weights stay f32). Half the cache's memory and decode's attention traffic, at a
//   relative error of at most 2⁻⁹ per stored element.
//
// Semantics are the training model's (model/transformer.h) evaluated token by token: the same
// attention (GQA, qkv_bias, qk_norm, RoPE style), the same router (ffn/moe/router.h, fp32,
// dropless: capacity never applies at inference; expert choice decodes as its B = 1 rule), and
// the same FFN kinds (a PEER block runs its own fp32 layer). For an f32 model the logits equal the
// Transformer's to rounding (tests/infer/test_engine.cpp); for bf16/Q8_0 they equal those of the
// same model dequantized to f32 to a stated tolerance.
// Deterministic: the same tokens give bit-identical logits for any thread count.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "moe/formats/model_file.h"
#include "moe/model/config.h"

namespace moe::infer {

// The element type of the KV cache.
enum class KvType { kF32, kBF16 };
// "f32" | "bf16"; and the inverse, which errors in one line naming `what` (e.g. "--kv-type") and
// the value otherwise.
const char* kv_type_name(KvType t);
KvType parse_kv_type(const std::string& s, const std::string& what);
// Bytes of one cached element.
inline int kv_type_bytes(KvType t) { return t == KvType::kF32 ? 4 : 2; }

struct EngineOptions {
  int context = 0;                // KV cache positions; 0 = the model's max_seq_len
  int max_batch = 512;            // tokens per prefill pass (longer prompts run in chunks)
  KvType kv_type = KvType::kF32;  // the cache's element type
};

class Engine {
 public:
  virtual ~Engine() = default;
  // Builds the engine on an open model file; the reader (and its map) must outlive the engine.
  // Errors name the file and tensor (an unsupported dtype, a context over max_seq_len, …).
  static std::unique_ptr<Engine> open(const formats::ModelReader& reader,
                                      const EngineOptions& opt = {});

  virtual const ModelConfig& config() const = 0;
  virtual int context() const = 0;   // positions the cache holds
  virtual int position() const = 0;  // positions filled
  virtual void reset() = 0;          // empties the cache (position() = 0)

  // Appends tokens (ids checked against the vocabulary; position() + n ≤ context(), else a
  // clear error and nothing is appended). Returns the logits [V] after the last token, valid
  // until the next call.
  virtual const float* feed(std::span<const int32_t> tokens) = 0;
  // As feed, writing the logits of every token: logits [n, V].
  virtual void feed_all(std::span<const int32_t> tokens, float* logits) = 0;

  // Bytes of the weights the engine reads (as stored), of the f32 copies it holds, of the cache.
  virtual uint64_t weight_bytes() const = 0;
  virtual uint64_t owned_bytes() const = 0;
  virtual uint64_t kv_bytes() const = 0;
  // Bytes of weights one decode step reads (attention, the k routed experts per MoE block on
  // average, shared experts, dense FFNs, head): the numerator of tg's bandwidth fraction.
  virtual uint64_t active_weight_bytes_per_token() const = 0;
};

}  // namespace moe::infer
