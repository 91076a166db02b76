// Run configuration, read from JSON. Every field has a default; unknown fields and invalid
// values are rejected with the field's dotted path, the bad value and what is allowed.
// `--set a.b=value` overrides are applied to the JSON before it is parsed, so they are checked
// the same way. The README's "Config reference" documents each field.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moe {

enum class Activation { kSwiGLU, kGELU, kReLU };  // ReLU: PEER experts only

// Router of an MoE FFN (ffn.router). See docs/MOE.md.
struct RouterConfig {
  std::string kind = "topk";  // topk | noisy_topk | gshard | expert_choice
  bool normalize = true;      // topk: renormalise the k gates to sum 1 (Mixtral); false = Switch
  std::string score = "softmax";  // topk: softmax | sigmoid
  float jitter = 0;           // topk: multiplicative input jitter x·U(1−j, 1+j), training only
  bool bias_balance = false;  // DeepSeek-V3 aux-loss-free bias on the selection (token choice)
  float bias_rate = 1e-3f;    // γ of the bias update b_e += γ·sign(mean load − load_e)
};

// The FFN of one block. `kind` selects the implementation behind ffn/feed_forward.h.
struct FfnConfig {
  std::string kind = "dense";  // dense | moe
  Activation activation = Activation::kSwiGLU;
  int d_ff = 0;  // dense hidden width; 0 = auto (see resolve())
  // --- kind "moe" (ignored for dense). Either explicit sizes ...
  int num_experts = 0;  // E (routed experts)
  int top_k = 0;        // k
  int d_expert = 0;     // H of one expert; 0 = d_ff (or d_ff / G)
  // ... or the fine-grained parametrisation of Krajewski et al.: E·G experts of width d_ff/G,
  // top-k = G·k_base. Set granularity > 0 to use it.
  int granularity = 0;  // G
  int expansion = 0;    // E (expansion rate)
  int k_base = 1;
  int shared_experts = 0;          // dense experts every token passes through (width H)
  float capacity_factor = 0;       // training; 0 = dropless (token choice)
  float eval_capacity_factor = 0;  // evaluation / generation; 0 = dropless
  double aux_loss_coef = 0.01;     // α of the Switch load-balancing loss
  double z_loss_coef = 0.001;      // β of the router z-loss
  float expert_dropout = 0;        // dropout on expert hidden units, training only
  // --- kind "peer" (He 2024): num_experts = S² single-neuron experts, `heads` query heads each
  // retrieving top_k of them by product keys of dimension d_key; activation gelu or relu.
  int heads = 8;
  int d_key = 128;
  std::string query_norm = "batchnorm";  // batchnorm | layernorm | none
  RouterConfig router;
};

struct ModelConfig {
  int vocab_size = 256;  // set from the tokenizer when "auto" (0)
  int d_model = 128;     // C
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 0;     // 0 = n_heads (plain multi-head attention); must divide n_heads
  int head_dim = 0;       // 0 = d_model / n_heads
  int max_seq_len = 256;  // longest context (RoPE table, KV cache)
  float rope_theta = 10000.f;
  float norm_eps = 1e-5f;
  bool qk_norm = false;  // RMSNorm over the whole q row (n_heads*head_dim) and k row
  bool tie_embeddings = true;
  float init_std = 0.02f;
  FfnConfig ffn;
  // Per-block overrides of `ffn`, by block index (JSON object {"0": {...}}); empty = same FFN
  // in every block.
  std::vector<std::pair<int, FfnConfig>> ffn_overrides;
  // Runtime only (not in the JSON, set by `moe train --expert-parallel P`): MoE experts are
  // partitioned over this many MPI ranks (1 = every rank holds all experts).
  int expert_parallel = 1;

  const FfnConfig& ffn_for(int layer) const;
  void resolve();  // fills the 0 = auto fields and validates; throws moe::Error
};

struct TokenizerConfig {
  std::string kind = "byte";  // byte | bpe
  int vocab_size = 4096;      // bpe only
};

struct DataConfig {
  std::string dir = "data/brown";  // holds train.txt, val.txt, test.txt
};

struct TrainConfig {
  int batch_size = 16;  // sequences per micro-batch
  int seq_len = 128;    // T
  int grad_accum = 1;   // micro-batches per optimizer step
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
  std::string out_dir = "runs/default";
};

struct Config {
  ModelConfig model;
  TokenizerConfig tokenizer;
  DataConfig data;
  TrainConfig train;
  nlohmann::json to_json() const;
};

// Parses and validates. `source` names the file in error messages.
Config config_from_json(const nlohmann::json& j, const std::string& source);
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Applies "a.b.c=value" (value parsed as JSON, else taken as a string) to j.
void apply_override(nlohmann::json& j, const std::string& assignment);

}  // namespace moe
