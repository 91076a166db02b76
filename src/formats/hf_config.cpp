// config.json → ModelConfig. Keys and their defaults are those of transformers'
// configuration_*.py for each class (and of DeepSeek's remote-code configuration_deepseek.py);
// llama.cpp's conversion/*.py reads the same keys. A key we cannot honour is refused, naming
// the file, the key and its value.
#include <fmt/format.h>

#include <optional>

#include "hf_internal.h"
#include "moe/core/error.h"
#include "moe/core/json_util.h"

namespace moe::formats {

using json = nlohmann::json;
using hf::QkNorm;
using hf::set_qk_norm;
using hf::set_qkv_bias;
using hf::set_routed_scaling;
using hf::set_shared_gate;
using hf::set_shared_width;

namespace {

struct ArchInfo {
  HfArch arch;
  const char* name;
  const char* model_type;
  double rope_theta, rms_norm_eps;  // the class's defaults
};
constexpr ArchInfo kArchs[] = {
    {HfArch::kMixtral, "MixtralForCausalLM", "mixtral", 1e6, 1e-5},
    {HfArch::kOlmoe, "OlmoeForCausalLM", "olmoe", 1e4, 1e-5},
    {HfArch::kQwen2Moe, "Qwen2MoeForCausalLM", "qwen2_moe", 1e4, 1e-6},
    {HfArch::kQwen3Moe, "Qwen3MoeForCausalLM", "qwen3_moe", 1e4, 1e-6},
    {HfArch::kDeepseek, "DeepseekForCausalLM", "deepseek", 1e4, 1e-6},
    {HfArch::kLlama, "LlamaForCausalLM", "llama", 1e4, 1e-6},
    {HfArch::kQwen3, "Qwen3ForCausalLM", "qwen3", 1e4, 1e-6},
};

const ArchInfo& info(HfArch a) {
  for (const ArchInfo& i : kArchs)
    if (i.arch == a) return i;
  MOE_FAIL("unknown HfArch {}", int(a));
}

// Typed, checked access to config.json's keys. A key that is absent or null takes the class
// default (nullopt: required).
class Keys {
 public:
  Keys(const json& j, std::string source) : j_(j), src_(std::move(source)) {}
  const std::string& source() const { return src_; }
  bool has(const char* k) const { return j_.contains(k) && !j_[k].is_null(); }
  const json& at(const char* k) const { return j_[k]; }
  std::string where(const char* k) const { return fmt::format("{}: key '{}'", src_, k); }
  [[noreturn]] void refuse(const char* k, const std::string& why) const {
    MOE_FAIL("{}: key '{}' = {}: {}", src_, k, json_excerpt(j_[k]), why);
  }
  int integer(const char* k, std::optional<int> def, int lo = 1) const {
    if (!has(k)) {
      MOE_CHECK(def.has_value(), "{}: key '{}' is missing", src_, k);
      return *def;
    }
    if (!j_[k].is_number_integer() || j_[k].get<int64_t>() < lo ||
        j_[k].get<int64_t>() > (int64_t(1) << 30))
      refuse(k, fmt::format("expected an integer in [{}, 2^30]", lo));
    return int(j_[k].get<int64_t>());
  }
  double number(const char* k, double def) const {
    if (!has(k)) return def;
    if (!j_[k].is_number()) refuse(k, "expected a number");
    return j_[k].get<double>();
  }
  bool boolean(const char* k, bool def) const {
    if (!has(k)) return def;
    if (!j_[k].is_boolean()) refuse(k, "expected true or false");
    return j_[k].get<bool>();
  }
  std::string string(const char* k, const std::string& def) const {
    if (!has(k)) return def;
    if (!j_[k].is_string()) refuse(k, "expected a string");
    return j_[k].get<std::string>();
  }
  // The key must be absent, null or equal to `ok` (what our model computes).
  void require(const char* k, const json& ok, const std::string& why) const {
    if (has(k) && j_[k] != ok) refuse(k, why);
  }

 private:
  const json& j_;
  std::string src_;
};

HfArch parse_arch(const Keys& k) {
  const std::string supported = hf_supported_archs();
  MOE_CHECK(k.has("architectures") && k.at("architectures").is_array() &&
                k.at("architectures").size() == 1 && k.at("architectures")[0].is_string(),
            "{}: key 'architectures' must be a list of one class name (supported: {})", k.source(),
            supported);
  const std::string a = k.at("architectures")[0].get<std::string>();
  for (const ArchInfo& i : kArchs)
    if (a == i.name) return i.arch;
  const bool mla = a == "DeepseekV2ForCausalLM" || a == "DeepseekV3ForCausalLM";
  MOE_FAIL("{}: architecture {} is not supported{} (supported: {})", k.source(), a,
           mla ? " (multi-head latent attention)" : "", supported);
}

// rope_theta from the top level or transformers 5's rope_parameters; any scaling is refused.
float parse_rope(const Keys& k, double def) {
  const json plain = {{"rope_type", "default"}};
  if (k.has("rope_scaling") && k.at("rope_scaling") != plain &&
      k.at("rope_scaling") != json{{"type", "default"}})
    k.refuse("rope_scaling", "RoPE scaling is not supported (expected null)");
  double theta = k.number("rope_theta", def);
  if (k.has("rope_parameters")) {
    const json& p = k.at("rope_parameters");
    if (!p.is_object() || p.value("rope_type", "default") != "default" ||
        (p.contains("rope_theta") && !p["rope_theta"].is_number()))
      k.refuse("rope_parameters", "only rope_type \"default\" with a numeric rope_theta");
    for (auto& [key, v] : p.items())
      if (key != "rope_type" && key != "rope_theta")
        k.refuse("rope_parameters", fmt::format("RoPE parameter '{}' is not supported", key));
    if (p.contains("rope_theta")) theta = p["rope_theta"].get<double>();
  }
  if (!(theta > 0)) k.refuse("rope_theta", "expected a positive number");
  return float(theta);
}

void parse_common(const Keys& k, const ArchInfo& a, ModelConfig& m) {
  m.d_model = k.integer("hidden_size", std::nullopt);
  m.n_layers = k.integer("num_hidden_layers", std::nullopt);
  m.n_heads = k.integer("num_attention_heads", std::nullopt);
  m.n_kv_heads = k.integer("num_key_value_heads", m.n_heads);
  m.head_dim = k.integer("head_dim", 0, 0);
  m.vocab_size = k.integer("vocab_size", std::nullopt);
  m.max_seq_len = k.integer("max_position_embeddings", 4096);
  m.rope_theta = parse_rope(k, a.rope_theta);
  m.norm_eps = float(k.number("rms_norm_eps", a.rms_norm_eps));
  if (!(m.norm_eps > 0)) k.refuse("rms_norm_eps", "expected a positive number");
  m.tie_embeddings = k.boolean("tie_word_embeddings", false);
  m.init_std = float(k.number("initializer_range", 0.02));
  k.require("hidden_act", "silu", "only silu (SwiGLU) FFNs are supported");
  k.require("mlp_bias", false, "FFN biases are not supported");
  if (k.has("quantization_config"))
    k.refuse("quantization_config", "quantized checkpoints are not supported");
  // Sliding-window attention: Qwen classes switch it with use_sliding_window (and list layer
  // types); Mixtral uses sliding_window whenever it is set and shorter than the context.
  k.require("use_sliding_window", false, "sliding-window attention is not supported");
  if (k.has("layer_types")) {
    for (const json& t : k.at("layer_types"))
      if (t != "full_attention")
        k.refuse("layer_types", "only full_attention layers are supported");
  }
  if (a.arch == HfArch::kMixtral && k.has("sliding_window") &&
      !(k.at("sliding_window").is_number_integer() &&
        k.at("sliding_window").get<int64_t>() >= m.max_seq_len))
    k.refuse("sliding_window", "sliding-window attention is not supported (expected null)");
  // Qwen2-MoE always has q/k/v biases (attention_bias is not its key).
  if (a.arch != HfArch::kQwen2Moe)
    k.require("attention_bias", false, "attention biases are not supported for this class");
  const QkNorm qk = a.arch == HfArch::kOlmoe                                  ? QkNorm::kRow
                    : a.arch == HfArch::kQwen3Moe || a.arch == HfArch::kQwen3 ? QkNorm::kHead
                                                                              : QkNorm::kNone;
  set_qk_norm(m, qk, k.source() + ": architectures " + a.name);
  if (a.arch == HfArch::kOlmoe) k.require("clip_qkv", nullptr, "q/k/v clipping is not supported");
  if (a.arch == HfArch::kQwen2Moe) set_qkv_bias(m, true, k.source() + ": Qwen2MoeForCausalLM");
}

FfnConfig moe_ffn(int E, int top_k, int H, bool normalize) {
  FfnConfig f;
  f.kind = FfnConfig::Kind::kMoe;
  f.activation = Activation::kSwiGLU;
  f.d_ff = H;
  f.moe.num_experts = E;
  f.moe.top_k = top_k;
  f.moe.d_expert = H;
  f.moe.router.kind = RouterConfig::Kind::kTopK;
  f.moe.router.score = RouterConfig::Score::kSoftmax;
  f.moe.router.normalize = normalize;
  return f;
}

void parse_ffn(const Keys& k, HfArch arch, ModelConfig& m) {
  const char* n_exp_key = arch == HfArch::kMixtral    ? "num_local_experts"
                          : arch == HfArch::kDeepseek ? "n_routed_experts"
                                                      : "num_experts";
  if (arch == HfArch::kLlama || arch == HfArch::kQwen3) {
    m.ffn.kind = FfnConfig::Kind::kDense;
    m.ffn.activation = Activation::kSwiGLU;
    m.ffn.d_ff = k.integer("intermediate_size", std::nullopt);
    return;
  }
  const int E = k.integer(n_exp_key, std::nullopt);
  const int top_k = k.integer("num_experts_per_tok", std::nullopt);
  if (top_k > E) k.refuse("num_experts_per_tok", fmt::format("more than the {} experts", E));
  const bool qwen = arch == HfArch::kQwen2Moe || arch == HfArch::kQwen3Moe;
  const int H =
      k.integer(qwen || arch == HfArch::kDeepseek ? "moe_intermediate_size" : "intermediate_size",
                std::nullopt);
  // Mixtral always renormalises the k weights; the others do when norm_topk_prob (DeepSeekMoE
  // only when k > 1: its top-1 weight stays the softmax probability).
  const bool normalize = arch == HfArch::kMixtral || (k.boolean("norm_topk_prob", false) &&
                                                      (arch != HfArch::kDeepseek || top_k > 1));
  m.ffn = moe_ffn(E, top_k, H, normalize);
  if (qwen) {
    k.require("decoder_sparse_step", 1, "only every block sparse (1) is supported");
    if (k.has("mlp_only_layers") && k.at("mlp_only_layers") != json::array())
      k.refuse("mlp_only_layers", "dense blocks among the sparse ones are not supported");
  }
  if (arch == HfArch::kQwen2Moe) {
    const int Hs = k.integer("shared_expert_intermediate_size", std::nullopt);
    m.ffn.moe.shared_experts = 1;
    set_shared_width(m.ffn, Hs, k.where("shared_expert_intermediate_size"));
    set_shared_gate(m.ffn, true, k.where("shared_expert_intermediate_size"));
  }
  if (arch == HfArch::kDeepseek) {
    k.require("scoring_func", "softmax", "only softmax router scores are supported");
    k.require("topk_method", "greedy", "only greedy top-k is supported");
    k.require("moe_layer_freq", 1, "only every block after the dense ones sparse (1)");
    if (k.has("routed_scaling_factor"))
      set_routed_scaling(m.ffn, float(k.number("routed_scaling_factor", 1)),
                         k.where("routed_scaling_factor"));
    m.ffn.moe.shared_experts = k.integer("n_shared_experts", 0, 0);
    const int first_dense = k.integer("first_k_dense_replace", 0, 0);
    if (first_dense > m.n_layers)
      k.refuse("first_k_dense_replace", fmt::format("more than the {} blocks", m.n_layers));
    FfnConfig dense;
    dense.kind = FfnConfig::Kind::kDense;
    dense.activation = Activation::kSwiGLU;
    if (first_dense > 0) dense.d_ff = k.integer("intermediate_size", std::nullopt);
    for (int l = 0; l < first_dense; ++l) m.ffn_overrides.emplace_back(l, dense);
  }
}

}  // namespace

const char* hf_arch_name(HfArch a) { return info(a).name; }

std::string hf_supported_archs() {
  std::string s;
  for (const ArchInfo& i : kArchs) s += (s.empty() ? "" : ", ") + std::string(i.name);
  return s;
}

ModelConfig hf_config_to_model(const json& config, const std::string& source, HfArch* arch) {
  MOE_CHECK(config.is_object(), "{}: expected a JSON object", source);
  const Keys k(config, source);
  const HfArch a = parse_arch(k);
  ModelConfig m;
  parse_common(k, info(a), m);
  parse_ffn(k, a, m);
  try {
    m.resolve();
  } catch (const Error& e) {
    MOE_FAIL("{}: {}", source, e.message());
  }
  if (arch) *arch = a;
  return m;
}

const char* hf::model_type(HfArch a) { return info(a).model_type; }

}  // namespace moe::formats
