// Parameter and FLOP accounting from a config alone (no allocation, so it works for presets far
// larger than this machine). Letters here are the model's: C width, V vocabulary, L layers.
// FLOP convention (used everywhere in moe.cpp): a multiply-add is 2 FLOPs. Per token,
//   forward  = 2·(matmul parameters the token uses, LM head included, router excluded)
//            + 2·C·E per MoE layer (router logits) + attention (below)
//   training = 6·(the same matmul parameters) + 14·C·E per MoE layer (Krajewski et al.'s c_r = 14:
//              router forward, two backward products, dispatch, combine and their backward)
//            + 3 · attention forward + 3 · PEER retrieval forward (query network and sub-key
//              scores: 2·(C·h·d_key + h·S·d_key) per PEER layer; its experts are matmul params).
// Attention's score and value products are counted separately with the causal convention: a
// token at position t attends to t+1 positions, so the mean context over a window of T tokens
// is (T+1)/2; per layer and token that is 2·2·Hq·hd·(T+1)/2 forward FLOPs.
#pragma once
#include <cstdint>

#include "moe/model/config.h"

namespace moe {

struct ModelCount {
  int64_t embedding = 0;   // V·C
  int64_t attention = 0;   // wq, wk, wv, wo over all layers
  int64_t norms = 0;       // every RMSNorm weight (incl. QK-norm)
  int64_t ffn = 0;         // all FFN parameters
  int64_t ffn_active = 0;  // FFN parameters one token uses (router included)
  int64_t router = 0;      // router weights (and noise projections) of all MoE layers
  int64_t experts = 0;     // routed expert parameters
  int64_t shared = 0;      // shared expert parameters
  int64_t head = 0;        // 0 when tied
  int64_t total = 0;
  int64_t active = 0;              // all but the routed experts a token does not use
  double flops_matmul_fwd = 0;     // per token
  double flops_attention_fwd = 0;  // per token, causal mean over seq_len
  double flops_fwd = 0;            // per token, total
  double flops_train = 0;          // per token, 3 × forward
};

ModelCount count_model(const ModelConfig& m, int seq_len);

}  // namespace moe
