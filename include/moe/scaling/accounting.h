// Parameter and FLOP accounting from a config alone (no allocation, so it works for presets far
// larger than this machine). Letters here are the model's: C width, V vocabulary, L layers.
// FLOP convention: a multiply-add is 2 FLOPs; training = 3 × forward (forward + 2 backward
// products). Matmul FLOPs per token = 2 · (matmul parameters a token uses, LM head included).
// Attention's score and value products are counted separately with the causal convention: a
// token at position t attends to t+1 positions, so the mean context over a window of T tokens
// is (T+1)/2; per layer and token that is 2·2·Hq·hd·(T+1)/2 forward FLOPs.
#pragma once
#include <cstdint>
#include <string>

#include "moe/model/config.h"

namespace moe {

struct ModelCount {
  int64_t embedding = 0;   // V·C
  int64_t attention = 0;   // wq, wk, wv, wo over all layers
  int64_t norms = 0;       // every RMSNorm weight (incl. QK-norm)
  int64_t ffn = 0;         // all FFN parameters
  int64_t ffn_active = 0;  // FFN parameters one token uses
  int64_t head = 0;        // 0 when tied
  int64_t total = 0;
  int64_t active = 0;      // all but the routed experts a token does not use
  double flops_matmul_fwd = 0;     // per token
  double flops_attention_fwd = 0;  // per token, causal mean over seq_len
  double flops_fwd = 0;            // per token, total
  double flops_train = 0;          // per token, 3 × forward
};

ModelCount count_model(const ModelConfig& m, int seq_len);

}  // namespace moe
