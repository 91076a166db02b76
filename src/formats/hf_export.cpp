// Which Hugging Face class computes exactly our model, and its config.json. What each class
// computes (transformers' modeling_*.py; DeepSeek's remote modeling_deepseek.py):
//   Mixtral   softmax router, top-k weights always renormalised; no QK-norm, no biases
//   OLMoE     q_norm / k_norm = RMSNorm over the whole q and k rows; norm_topk_prob
//   Qwen2-MoE q/k/v biases; norm_topk_prob; one shared expert scaled by sigmoid(x·g)
//   Qwen3-MoE per-head RMSNorm on q and k (weights [head_dim]); norm_topk_prob
//   DeepSeek  norm_topk_prob; ungated shared experts (one MLP of width n_shared·H); the first
//             first_k_dense_replace blocks dense
//   Llama / Qwen3 (dense) no QK-norm / per-head QK-norm
// All: pre-norm RMSNorm blocks, rotate-half RoPE, SiLU-gated FFNs, untied or tied head.
#include <fmt/format.h>

#include <string>

#include "hf_internal.h"
#include "moe/core/error.h"

namespace moe::formats {

using json = nlohmann::json;
using hf::QkNorm;

namespace {

[[noreturn]] void none_computes(const std::string& feature) {
  MOE_FAIL("no Hugging Face class computes this model: {}", feature);
}

// The fields of an MoE block that the classes can express; all MoE blocks must agree on them.
bool same_moe(const FfnConfig& a, const FfnConfig& b) {
  const MoeFfnConfig &x = a.moe, &y = b.moe;
  return x.num_experts == y.num_experts && x.top_k == y.top_k && x.d_expert == y.d_expert &&
         x.shared_experts == y.shared_experts && x.router.normalize == y.router.normalize &&
         hf::shared_width_of(a) == hf::shared_width_of(b) &&
         hf::shared_gate_of(a) == hf::shared_gate_of(b) &&
         hf::routed_scaling_of(a) == hf::routed_scaling_of(b);
}

void check_moe_block(const FfnConfig& f, int l) {
  const RouterConfig& r = f.moe.router;
  if (r.kind != RouterConfig::Kind::kTopK)
    none_computes(fmt::format("{} routing (block {})", enum_name(r.kind), l));
  if (r.score != RouterConfig::Score::kSoftmax)
    none_computes(fmt::format("sigmoid router scores (block {})", l));
  if (r.bias_balance) none_computes(fmt::format("router selection bias (block {})", l));
  if (r.n_group > 1) none_computes(fmt::format("group-limited routing (block {})", l));
  if (f.moe.eval_capacity_factor != 0)
    none_computes(fmt::format("eval_capacity_factor {} (block {}): HF routing drops no tokens",
                              f.moe.eval_capacity_factor, l));
}

// Blocks [0, first_moe) dense with one width, the rest MoE and alike; returns first_moe
// (n_layers when every block is dense).
int check_blocks(const ModelConfig& m) {
  int first_moe = -1, dense_ff = -1;
  for (int l = 0; l < m.n_layers; ++l) {
    const FfnConfig& f = m.ffn_for(l);
    if (f.kind == FfnConfig::Kind::kPeer) none_computes(fmt::format("PEER FFN (block {})", l));
    if (f.activation != Activation::kSwiGLU)
      none_computes(fmt::format("{} FFN (block {}): the classes use SiLU-gated FFNs",
                                enum_name(f.activation), l));
    if (f.kind == FfnConfig::Kind::kMoe) {
      check_moe_block(f, l);
      if (first_moe < 0) first_moe = l;
      if (!same_moe(f, m.ffn_for(first_moe)))
        none_computes(fmt::format("MoE block {} differs from MoE block {}", l, first_moe));
    } else {
      if (first_moe >= 0) none_computes(fmt::format("dense block {} after MoE blocks", l));
      if (dense_ff >= 0 && f.d_ff != dense_ff)
        none_computes(
            fmt::format("dense blocks of different widths ({} and {})", dense_ff, f.d_ff));
      dense_ff = f.d_ff;
    }
  }
  return first_moe < 0 ? m.n_layers : first_moe;
}

HfArch dense_arch(QkNorm qk, bool bias) {
  if (bias) none_computes("q/k/v biases in a dense model");
  if (qk == QkNorm::kRow) none_computes("whole-row QK-norm in a dense model");
  return qk == QkNorm::kHead ? HfArch::kQwen3 : HfArch::kLlama;
}

HfArch moe_arch(const ModelConfig& m, int first_moe) {
  const FfnConfig& f = m.ffn_for(first_moe);
  const QkNorm qk = hf::qk_norm_of(m);
  const bool bias = hf::qkv_bias_of(m), gate = hf::shared_gate_of(f);
  const int S = f.moe.shared_experts;
  if (hf::routed_scaling_of(f) != 1.f)
    none_computes(fmt::format("routed_scaling_factor {}", hf::routed_scaling_of(f)));
  if (qk != QkNorm::kNone) {
    const char* what =
        qk == QkNorm::kHead ? "per-head QK-norm (Qwen3-MoE)" : "whole-row QK-norm (OLMoE)";
    if (bias) none_computes(fmt::format("{} with q/k/v biases", what));
    if (S > 0) none_computes(fmt::format("{} with shared experts", what));
    if (first_moe > 0) none_computes(fmt::format("{} with leading dense blocks", what));
    return qk == QkNorm::kHead ? HfArch::kQwen3Moe : HfArch::kOlmoe;
  }
  if (bias || gate) {
    // Qwen2-MoE: biases, and exactly one gated shared MLP in every block.
    if (!bias) none_computes("a gated shared expert without q/k/v biases");
    if (!gate) none_computes("q/k/v biases without a gated shared expert (Qwen2-MoE has both)");
    if (S == 0) none_computes("a shared-expert gate without shared experts");
    if (first_moe > 0) none_computes("q/k/v biases with leading dense blocks");
    return HfArch::kQwen2Moe;
  }
  if (S > 0 || first_moe > 0 || !f.moe.router.normalize) {
    if (S > 0 && hf::shared_width_of(f) != f.moe.d_expert)
      none_computes(fmt::format(
          "ungated shared experts of width {} beside routed experts of width {} (DeepSeekMoE "
          "ties them)",
          hf::shared_width_of(f), f.moe.d_expert));
    if (f.moe.router.normalize && f.moe.top_k == 1)
      none_computes(
          "renormalised top-1 routing with shared experts or leading dense blocks "
          "(DeepSeekMoE renormalises only when k > 1)");
    return HfArch::kDeepseek;
  }
  return HfArch::kMixtral;
}

// The shortest decimal that reads back as the same float (config.json holds doubles).
double as_json_float(float v) { return std::stod(fmt::format("{}", v)); }

const char* torch_dtype(DType d) {
  switch (d) {
    case DType::F32:
      return "float32";
    case DType::BF16:
      return "bfloat16";
    case DType::F16:
      return "float16";
    default:
      MOE_FAIL("Hugging Face export: dtype {} is not supported (F32, BF16 or F16)", dtype_name(d));
  }
}

}  // namespace

HfArch hf_arch_for(const ModelConfig& m) {
  if (!hf::rope_half_of(m)) none_computes("interleaved RoPE (HF classes rotate halves)");
  const int first_moe = check_blocks(m);
  if (first_moe == m.n_layers) return dense_arch(hf::qk_norm_of(m), hf::qkv_bias_of(m));
  return moe_arch(m, first_moe);
}

json hf_config_from_model(const ModelConfig& m, HfArch arch, DType dtype) {
  const int first_moe = check_blocks(m);
  json j = {{"architectures", {hf_arch_name(arch)}},
            {"model_type", hf::model_type(arch)},
            {"hidden_size", m.d_model},
            {"num_hidden_layers", m.n_layers},
            {"num_attention_heads", m.n_heads},
            {"num_key_value_heads", m.n_kv_heads},
            {"head_dim", m.head_dim},
            {"vocab_size", m.vocab_size},
            {"max_position_embeddings", m.max_seq_len},
            {"rope_theta", as_json_float(m.rope_theta)},
            {"rope_scaling", nullptr},
            {"rms_norm_eps", as_json_float(m.norm_eps)},
            {"tie_word_embeddings", m.tie_embeddings},
            {"initializer_range", as_json_float(m.init_std)},
            {"hidden_act", "silu"},
            {"attention_dropout", 0.0},
            {"torch_dtype", torch_dtype(dtype)}};
  if (arch != HfArch::kQwen2Moe) j["attention_bias"] = false;
  if (first_moe == m.n_layers) {  // dense
    j["intermediate_size"] = m.ffn_for(0).d_ff;
    if (arch == HfArch::kLlama) j["mlp_bias"] = false;
    if (arch == HfArch::kQwen3) j["use_sliding_window"] = false;
    return j;
  }
  const FfnConfig& f = m.ffn_for(first_moe);
  const MoeFfnConfig& e = f.moe;
  // intermediate_size: the leading dense blocks' width when there are some; the routed experts'
  // width for Mixtral and OLMoE (their key for it), and otherwise unused by the class.
  j["intermediate_size"] = first_moe > 0 ? m.ffn_for(0).d_ff : e.d_expert;
  j["num_experts_per_tok"] = e.top_k;
  switch (arch) {
    case HfArch::kMixtral:
      j["num_local_experts"] = e.num_experts;
      j["sliding_window"] = nullptr;
      break;
    case HfArch::kOlmoe:
      j["num_experts"] = e.num_experts;
      j["norm_topk_prob"] = e.router.normalize;
      j["clip_qkv"] = nullptr;
      break;
    case HfArch::kQwen2Moe:
    case HfArch::kQwen3Moe:
      j["num_experts"] = e.num_experts;
      j["moe_intermediate_size"] = e.d_expert;
      j["norm_topk_prob"] = e.router.normalize;
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = json::array();
      j["use_sliding_window"] = false;
      if (arch == HfArch::kQwen2Moe)
        j["shared_expert_intermediate_size"] = e.shared_experts * hf::shared_width_of(f);
      break;
    case HfArch::kDeepseek:
      j["n_routed_experts"] = e.num_experts;
      j["n_shared_experts"] = e.shared_experts > 0 ? json(e.shared_experts) : json(nullptr);
      j["moe_intermediate_size"] = e.d_expert;
      j["first_k_dense_replace"] = first_moe;
      j["moe_layer_freq"] = 1;
      j["norm_topk_prob"] = e.router.normalize;
      j["scoring_func"] = "softmax";
      break;
    default:
      MOE_FAIL("{} is a dense class but the model has MoE blocks", hf_arch_name(arch));
  }
  return j;
}

}  // namespace moe::formats
