// The memory estimate against what the Transformer really allocates: never less (a refusal
// must not be needed after the fact), at most 1.5× (a working config must not be refused).
#include <gtest/gtest.h>

#include "../error_util.h"
#include "moe/model/transformer.h"
#include "moe/train/config.h"
#include "moe/train/memory_estimate.h"

using namespace moe;
using namespace moe::testing;

namespace {

TEST(MemoryEstimate, BoundsTheRealAllocationWithinOneAndAHalf) {
  struct Case {
    const char* model;
    int B, T;
  };
  const Case cases[] = {
      {R"({"d_model": 64, "n_layers": 2, "n_heads": 4})", 4, 32},
      {R"({"d_model": 48, "n_layers": 3, "n_heads": 6, "n_kv_heads": 2, "qk_norm": true,
           "tie_embeddings": false, "ffn": {"activation": "gelu"}})",
       2, 64},
      {R"({"d_model": 64, "n_layers": 2, "n_heads": 4, "ffn": {"kind": "moe",
           "num_experts": 8, "top_k": 2, "d_expert": 64}})",
       4, 32},
      {R"({"d_model": 64, "n_layers": 2, "n_heads": 4, "ffn": {"kind": "moe",
           "num_experts": 8, "top_k": 2, "d_expert": 64, "shared_experts": 1,
           "router": {"kind": "noisy_topk"}}})",
       4, 32},
      {R"({"d_model": 64, "n_layers": 2, "n_heads": 4, "ffn": {"kind": "moe",
           "granularity": 2, "expansion": 4, "d_ff": 128,
           "router": {"kind": "expert_choice"}}})",
       4, 32},
      {R"({"d_model": 64, "n_layers": 3, "n_heads": 4, "ffn_overrides": {"1": {"kind": "peer",
           "num_experts": 1024, "heads": 4, "top_k": 8, "d_key": 32}}})",
       4, 32},
      {R"({"d_model": 256, "n_layers": 4, "n_heads": 8, "vocab_size": 4096})", 8, 128},
  };
  for (const Case& c : cases) {
    const std::string text = std::string(R"({"model": )") + c.model + "}";
    Config cfg = config_from_json(nlohmann::json::parse(text), "test");
    Transformer m(cfg.model, c.B, c.T);
    const double hd = cfg.model.head_dim;
    // Weights, the activation arena, and the RoPE table and decoding scores for T positions.
    const double real =
        4.0 * double(m.params().numel()) + double(m.activation_bytes()) + 4.0 * (c.T * hd + c.T);
    const MemoryEstimate e = estimate_memory(cfg.model, c.B, c.T, MemoryUse::kEval);
    EXPECT_GE(e.total(), real) << text;
    EXPECT_LE(e.total(), 1.5 * real) << text;
    EXPECT_GE(e.weights, 4.0 * double(m.params().numel())) << text;
    EXPECT_LE(e.weights, 1.5 * 4.0 * double(m.params().numel())) << text;
    // Training adds gradients and both AdamW moments: three more copies of the weights.
    const MemoryEstimate t = estimate_memory(cfg.model, c.B, c.T, MemoryUse::kTrain);
    EXPECT_EQ(t.training, 3 * t.weights);
    EXPECT_EQ(t.low_precision, 0);
    // train.precision = bf16 adds the bf16 arenas (the model's and each FFN's, the experts'
    // packed weights and per-thread scratch), which the estimate bounds as it bounds the rest:
    // at least what set_precision allocated, within 1.5× of it plus gemm_bf16's packing scratch
    // (one calling thread's panels, counted by the estimate, allocated at the first product).
    const double acts_f32 = double(m.activation_bytes());
    m.set_precision(Precision::kBf16);
    const double low = double(m.low_precision_bytes());
    const MemoryEstimate b =
        estimate_memory(cfg.model, c.B, c.T, MemoryUse::kTrain, 0, Precision::kBf16);
    EXPECT_GT(low, 0) << text;
    EXPECT_GE(b.low_precision, low) << text;
    EXPECT_LE(b.low_precision, 1.5 * low + 4.0 * c.B * c.T * (2 * 4 * 64 + 64)) << text;
    EXPECT_EQ(b.weights, t.weights);
    // bf16 attention saves row stats instead of the probabilities [B, Hq, T, T] per layer: those
    // (and f32 attention's backward scratch) are freed, and the estimate leaves them out.
    const double acts_bf16 = double(m.activation_bytes()),
                 probs = 4.0 * cfg.model.n_layers * c.B * cfg.model.n_heads * c.T * c.T;
    EXPECT_LE(acts_bf16, acts_f32 - probs) << text;
    EXPECT_LE(b.activations, t.activations - probs) << text;
    // The same bounds as above for weights + activations.
    const double real_bf16 = real - acts_f32 + acts_bf16;
    EXPECT_GE(b.weights + b.activations, real_bf16) << text;
    EXPECT_LE(b.weights + b.activations, 1.5 * real_bf16) << text;
  }
}

TEST(MemoryEstimate, RefusesWhatDoesNotFitNamingTheFields) {
  Config cfg =
      config_from_json(nlohmann::json::parse(R"({"model": {"n_layers": 100000000}})"), "test");
  const MemoryEstimate e = estimate_memory(cfg.model, 16, 128, MemoryUse::kTrain);
  EXPECT_GT(e.total(), 1e12);
  expect_error([&] { check_memory(e, cfg.model, 16, 128, "training", 21.3e9); },
               {"training needs ~", "TB", "n_layers = 100000000", "21.3 GB is available",
                "batch 16 × seq 128"});
  // Fits: nothing happens.
  check_memory(estimate_memory(cfg.model, 1, 1, MemoryUse::kEval), cfg.model, 1, 1, "x", 1e300);
  // Generation counts its KV cache for the context it will use.
  const MemoryEstimate g = estimate_memory(cfg.model, 1, 1, MemoryUse::kGenerate, 1000);
  EXPECT_EQ(g.kv_cache, 4.0 * 100000000 * 1000 * 2 * cfg.model.d_model);
  EXPECT_TRUE(available_memory_bytes().has_value());  // /proc/meminfo on Linux
}

}  // namespace
