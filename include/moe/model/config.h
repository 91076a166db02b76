// The model's configuration: its shape, and the FFN of each block (dense, MoE or PEER). Every
// field is declared once, with its JSON path, rule and doc line, in model_config_fields() /
// ffn_config_fields() (src/model/config.cpp); the member initialisers below are the defaults.
// The whole run's config (model + tokenizer + data + train) is moe/train/config.h.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "moe/core/config_fields.h"

namespace moe {

enum class Activation { kSwiGLU, kGELU, kReLU };                  // ReLU: PEER experts only
std::span<const EnumSpelling<Activation>> spellings(Activation);  // swiglu | gelu | relu

// The operands of the training products (train.precision, docs/KERNELS.md). kBf16: the matrix
// products of attention, dense FFNs, MoE experts and PEER's query take bf16 operands (weights
// rounded once per optimizer step, activations per product) with f32 accumulation; masters,
// gradient accumulation, AdamW, norms, softmax, the router and the losses stay f32. It changes
// the bits of training, not what the weights mean: a training knob, not part of model identity.
enum class Precision { kFp32, kBf16 };
std::span<const EnumSpelling<Precision>> spellings(Precision);  // fp32 | bf16

// Router of an MoE FFN (ffn.router). See docs/MOE.md.
struct RouterConfig {
  enum class Kind { kTopK, kNoisyTopK, kGShard, kExpertChoice, kRelu };
  enum class Score { kSoftmax, kSigmoid };
  enum class BiasUpdate { kSign, kSignCentred };
  Kind kind = Kind::kTopK;
  bool normalize = true;  // topk: renormalise the k gates to sum 1 (Mixtral); false = Switch
  Score score = Score::kSoftmax;  // sigmoid: topk only
  float jitter = 0;           // topk: multiplicative input jitter x·U(1−j, 1+j), training only
  bool bias_balance = false;  // DeepSeek-V3 aux-loss-free bias on the selection (token choice)
  float bias_rate = 1e-3f;    // γ of the bias update b_e += γ·sign(mean load − load_e)
  BiasUpdate bias_update = BiasUpdate::kSign;  // once per optimizer step; centred: mean b = 0
  // DeepSeek-V3 group-limited routing (topk): n_group groups, the topk_group best (by the sum of
  // each group's two best keys) hold the token's k experts. 1 = off.
  int n_group = 1;
  int topk_group = 1;
  // topk: multiplies the k combine weights after the optional renormalisation (DeepSeek's
  // routed_scaling_factor, llama.cpp's expert_weights_scale).
  float routed_scaling_factor = 1.f;
  // relu (ReMoE, arXiv 2412.14711 §3.3): the L1 coefficient starts at relu_l1_init (λ_0) and is
  // multiplied or divided by relu_l1_rate (α) once per optimizer step to hold the sparsity at
  // 1 − top_k/num_experts. Training knobs (not model identity).
  double relu_l1_init = 1e-8;
  double relu_l1_rate = 1.2;
};
std::span<const EnumSpelling<RouterConfig::Kind>> spellings(RouterConfig::Kind);
std::span<const EnumSpelling<RouterConfig::Score>> spellings(RouterConfig::Score);
std::span<const EnumSpelling<RouterConfig::BiasUpdate>> spellings(RouterConfig::BiasUpdate);

// The fields of an FFN of kind "moe". Either explicit sizes (num_experts, top_k, d_expert) or
// the fine-grained parametrisation of Krajewski et al.: E·G experts of width d_ff/G, top-k =
// G·k_base (set granularity > 0).
struct MoeFfnConfig {
  // Which product runs the experts' matrices; the two give different bits, so it is part of the
  // config (and so of the checkpoint).
  enum class ExpertGemm { kAuto, kBlas, kPanel };
  // The balancing loss's f_e and P_e over the micro-batch, or per sequence (DeepSeek-V2/V3), or
  // f_e over the optimizer step's whole global batch (Qwen, arXiv 2501.11873; docs/MOE.md).
  enum class AuxLossScope { kMicroBatch, kSequence, kGlobalBatch };
  int num_experts = 0;  // E (routed experts)
  int top_k = 0;        // k; 0 = 1 (gshard: 2; fine-grained: G·k_base)
  int d_expert = 0;     // H of one expert; 0 = d_ff (or d_ff / G)
  int granularity = 0;  // G
  int expansion = 0;    // E (expansion rate)
  int k_base = 1;
  int shared_experts = 0;          // dense experts every token passes through
  int shared_d_expert = 0;         // width of one shared expert; 0 = d_expert
  bool shared_gate = false;        // Qwen2-MoE: shared output × σ(x·w_gate_shared) per token
  float capacity_factor = 0;       // training; 0 = dropless (token choice)
  float eval_capacity_factor = 0;  // evaluation / generation; 0 = dropless
  double aux_loss_coef = 0.01;     // α of the Switch load-balancing loss
  AuxLossScope aux_loss_scope = AuxLossScope::kMicroBatch;
  double z_loss_coef = 0.001;  // β of the router z-loss
  float expert_dropout = 0;    // dropout on expert hidden units, training only
  ExpertGemm expert_gemm = ExpertGemm::kAuto;
  RouterConfig router;
};
std::span<const EnumSpelling<MoeFfnConfig::ExpertGemm>> spellings(MoeFfnConfig::ExpertGemm);
std::span<const EnumSpelling<MoeFfnConfig::AuxLossScope>> spellings(MoeFfnConfig::AuxLossScope);

// The fields of an FFN of kind "peer" (He 2024): num_experts = S² single-neuron experts, `heads`
// query heads each retrieving top_k of them by product keys of dimension d_key.
struct PeerFfnConfig {
  enum class QueryNorm { kBatchNorm, kLayerNorm, kNone };
  int num_experts = 0;  // S², a perfect square
  int heads = 8;
  int top_k = 0;  // per head; 0 = min(16, S)
  int d_key = 128;
  QueryNorm query_norm = QueryNorm::kBatchNorm;
};
std::span<const EnumSpelling<PeerFfnConfig::QueryNorm>> spellings(PeerFfnConfig::QueryNorm);

// The FFN of one block. `kind` selects the implementation behind ffn/feed_forward.h; `moe` and
// `peer` hold the fields of those kinds (the other kinds ignore them). In JSON all of them sit
// flat in one object ("ffn": {"kind": "moe", "num_experts": 8, "router": {...}}).
struct FfnConfig {
  enum class Kind { kDense, kMoe, kPeer };
  Kind kind = Kind::kDense;
  Activation activation = Activation::kSwiGLU;  // peer: gelu unless given
  int d_ff = 0;                                 // dense hidden width; 0 = auto (see resolve())
  MoeFfnConfig moe;
  PeerFfnConfig peer;
};
std::span<const EnumSpelling<FfnConfig::Kind>> spellings(FfnConfig::Kind);

// Normalisation of the attention's q and k before RoPE (model.qk_norm).
enum class QkNorm {
  kNone,
  kRow,   // RMSNorm over the whole q row [Hq·hd] and k row [Hkv·hd], weights of that size (OLMoE)
  kHead,  // RMSNorm over each head's hd values, one weight [hd] shared by the heads (Qwen3)
};
std::span<const EnumSpelling<QkNorm>> spellings(QkNorm);  // none | row | head

// Which pairs of a head RoPE rotates (model.rope_style); pair i turns by pos·θ^(−2i/hd) in both.
enum class RopeStyle {
  kHalf,         // (i, i + hd/2): GPT-NeoX, HF LLaMA; llama.cpp's LLAMA_ROPE_TYPE_NEOX
  kInterleaved,  // (2i, 2i + 1): Meta LLaMA; llama.cpp's LLAMA_ROPE_TYPE_NORM ("llama" arch)
};
std::span<const EnumSpelling<RopeStyle>> spellings(RopeStyle);  // half | interleaved

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
  RopeStyle rope_style = RopeStyle::kHalf;
  QkNorm qk_norm = QkNorm::kNone;  // JSON false / true read as none / row (older configs)
  bool qkv_bias = false;           // biases on the q, k, v projections (Qwen2)
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

// The declarations (JSON paths relative to "model" and to one FFN object).
const FieldTable<FfnConfig>& ffn_config_fields();
const FieldTable<ModelConfig>& model_config_fields();

}  // namespace moe
