#include "moe/formats/gguf_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "moe/core/error.h"
#include "moe/core/json_util.h"
#include "moe/formats/gguf_tokenizer.h"
#include "moe/formats/tensor_names.h"

namespace moe::formats {

namespace {

constexpr const char* kSupported = "llama, olmoe, qwen2moe, qwen3moe, qwen3, deepseek";
// Our own key: the exact model config, so importing our own export restores it (q/k un-permuted).
constexpr const char* kMoeConfigKey = "moe.config";

bool interleaved_arch(const std::string& arch) { return arch == "llama" || arch == "deepseek"; }

// The per-architecture facts of llama.cpp's graphs (see the table in gguf_model.h).
struct ArchFacts {
  bool moe_required;
  bool norm_topk;  // build_moe_ffn's norm_w
  QkNorm qk_norm;
};

ArchFacts facts_for(const std::string& file, const std::string& arch) {
  using Q = QkNorm;
  if (arch == "llama") return {false, true, Q::kNone};
  if (arch == "olmoe") return {true, false, Q::kRow};
  if (arch == "qwen2moe") return {true, false, Q::kNone};
  if (arch == "qwen3moe") return {true, true, Q::kHead};
  if (arch == "qwen3") return {false, false, Q::kHead};
  if (arch == "deepseek") return {true, false, Q::kNone};
  if (arch == "deepseek2" || arch == "deepseek32")
    MOE_FAIL(
        "{}: general.architecture is \"{}\": DeepSeek-V2/V3 attention (MLA) "
        "is not supported yet; supported: {}",
        file, arch, kSupported);
  if (arch == "gpt-oss")
    MOE_FAIL(
        "{}: general.architecture is \"gpt-oss\": not supported yet (attention "
        "sinks, biased experts); supported: {}",
        file, kSupported);
  MOE_FAIL("{}: general.architecture is \"{}\", expected one of: {}", file, arch, kSupported);
}

// Keys whose presence changes the computation in ways we do not reproduce.
void refuse_unsupported_keys(const GgufFile& f, const std::string& a) {
  auto refuse_if = [&](const std::string& key, const std::string& why) {
    MOE_CHECK(!f.has(key), "{}: metadata '{}' is set: {} is not supported", f.path(), key, why);
  };
  refuse_if(a + ".attention.sliding_window", "sliding-window attention");
  refuse_if(a + ".expert_group_scale", "a group-limited routing scale");
  refuse_if(a + ".attention.scale", "a custom attention scale");
  refuse_if(a + ".logit_scale", "logit scaling");
  refuse_if(a + ".embedding_scale", "embedding scaling");
  refuse_if(a + ".residual_scale", "residual scaling");
  if (f.has(a + ".rope.scaling.type")) {
    const std::string t = f.get_string(a + ".rope.scaling.type");
    const double factor = f.get_float_or(a + ".rope.scaling.factor", 1.0);
    MOE_CHECK(t == "none" || (t == "linear" && (factor == 1.0 || factor == 0.0)),
              "{}: metadata '{}.rope.scaling.type' is \"{}\" (factor {}): RoPE scaling is not "
              "supported, expected none",
              f.path(), a, t, factor);
  }
  if (f.has(a + ".expert_gating_func")) {
    const int64_t g = f.get_int(a + ".expert_gating_func");
    MOE_CHECK(g == 1,
              "{}: metadata '{}.expert_gating_func' is {}: only softmax gating (1) is "
              "supported",
              f.path(), a, g);
  }
  for (const char* per_layer : {".attention.head_count", ".attention.head_count_kv",
                                ".feed_forward_length", ".expert_used_count"}) {
    const auto t = f.type_of(a + per_layer);
    MOE_CHECK(!t || *t != GgufValueType::kArray,
              "{}: metadata '{}{}' is an array: per-layer sizes are not supported", f.path(), a,
              per_layer);
  }
}

int int_key(const GgufFile& f, const std::string& key, int64_t lo, int64_t hi) {
  const int64_t v = f.get_int(key);
  MOE_CHECK(v >= lo && v <= hi, "{}: metadata '{}' is {}, expected {}..{}", f.path(), key, v, lo,
            hi);
  return int(v);
}

int int_key_or(const GgufFile& f, const std::string& key, int64_t fallback, int64_t lo,
               int64_t hi) {
  return f.has(key) ? int_key(f, key, lo, hi) : int(fallback);
}

// Group-limited routing (DeepSeek-V3; llama.cpp's build_moe_ffn for any architecture): the E
// experts form expert_group_count groups of consecutive experts, a token keeps the
// expert_group_used_count groups with the largest sums of their two best selection scores (bias
// included), then its top-k among their experts. 0 or 1 groups: off. The bounds are llama.cpp's
// (E divisible, 0 < used < count), plus the two experts per group its top-2 needs and enough
// experts in the kept groups for the k.
void read_expert_groups(const GgufFile& f, const std::string& a, MoeFfnConfig& m) {
  const int E = m.num_experts, k = m.top_k;
  const int groups = int_key_or(f, a + ".expert_group_count", 0, 0, E);
  if (groups <= 1) return;
  MOE_CHECK(E % groups == 0 && E / groups >= 2,
            "{}: metadata '{}.expert_group_count' is {}, expected a divisor of expert_count = {} "
            "leaving >= 2 experts per group",
            f.path(), a, groups, E);
  MOE_CHECK(f.has(a + ".expert_group_used_count"),
            "{}: metadata '{}.expert_group_count' is {} but '{}.expert_group_used_count' is "
            "missing",
            f.path(), a, groups, a);
  const int used = int_key(f, a + ".expert_group_used_count", 1, groups - 1);
  MOE_CHECK(int64_t(used) * (E / groups) >= k,
            "{}: metadata '{}.expert_group_used_count' is {}: its groups hold {} experts, fewer "
            "than expert_used_count = {}",
            f.path(), a, used, int64_t(used) * (E / groups), k);
  m.router.n_group = groups;
  m.router.topk_group = used;
}

ModelConfig config_from_metadata(const GgufFile& f, const std::string& a) {
  const ArchFacts facts = facts_for(f.path(), a);
  refuse_unsupported_keys(f, a);
  constexpr int64_t kMaxDim = int64_t(1) << 24, kMaxLayers = 4096;
  ModelConfig c;
  c.d_model = int_key(f, a + ".embedding_length", 1, kMaxDim);
  c.n_layers = int_key(f, a + ".block_count", 1, kMaxLayers);
  c.n_heads = int_key(f, a + ".attention.head_count", 1, 65536);
  c.n_kv_heads = int_key_or(f, a + ".attention.head_count_kv", c.n_heads, 1, c.n_heads);
  c.head_dim = int_key_or(f, a + ".attention.key_length", c.d_model / c.n_heads, 2, 65536);
  const int v_len = int_key_or(f, a + ".attention.value_length", c.head_dim, 1, 65536);
  MOE_CHECK(v_len == c.head_dim,
            "{}: metadata '{}.attention.value_length' is {} but key_length is {}: expected equal",
            f.path(), a, v_len, c.head_dim);
  const int rot = int_key_or(f, a + ".rope.dimension_count", c.head_dim, 1, 65536);
  MOE_CHECK(rot == c.head_dim,
            "{}: metadata '{}.rope.dimension_count' is {}: partial rotary embeddings are not "
            "supported, expected head_dim {}",
            f.path(), a, rot, c.head_dim);
  c.max_seq_len = int_key(f, a + ".context_length", 1, int64_t(1) << 24);
  c.rope_theta = float(f.get_float_or(a + ".rope.freq_base", 10000.0));
  c.norm_eps = float(f.get_float(a + ".attention.layer_norm_rms_epsilon"));
  // The count only: the tokens themselves are read once, by the tokenizer.
  const std::optional<uint64_t> n_tokens = f.array_size("tokenizer.ggml.tokens");
  MOE_CHECK(n_tokens && f.array_type("tokenizer.ggml.tokens") == GgufValueType::kString,
            "{}: metadata 'tokenizer.ggml.tokens' is missing or not an array of strings: the file "
            "has no vocabulary",
            f.path());
  c.vocab_size = int(std::min<uint64_t>(*n_tokens, uint64_t(1) << 30));
  c.qk_norm = facts.qk_norm;
  c.rope_style = interleaved_arch(a) ? RopeStyle::kInterleaved : RopeStyle::kHalf;
  c.qkv_bias = f.find("blk.0.attn_q.bias") != nullptr;
  c.tie_embeddings = f.find("output.weight") == nullptr;

  const int E = int_key_or(f, a + ".expert_count", 0, 0, 1 << 20);
  const int n_ff = int_key_or(f, a + ".feed_forward_length", 0, 0, kMaxDim);
  MOE_CHECK(!facts.moe_required || E > 0,
            "{}: metadata '{}.expert_count' is missing or 0: the {} architecture needs experts",
            f.path(), a, a);
  if (E == 0) {
    c.ffn.kind = FfnConfig::Kind::kDense;
    MOE_CHECK(n_ff > 0, "{}: metadata '{}.feed_forward_length' is missing or 0", f.path(), a);
    c.ffn.d_ff = n_ff;
    return c;
  }
  const int k = int_key(f, a + ".expert_used_count", 1, E);
  MoeFfnConfig& m = c.ffn.moe;
  c.ffn.kind = FfnConfig::Kind::kMoe;
  m.num_experts = E;
  m.top_k = k;
  m.router.normalize = facts.norm_topk;
  read_expert_groups(f, a, m);
  m.capacity_factor = 0;
  m.eval_capacity_factor = 0;
  if (a == "llama" || a == "olmoe") {
    m.d_expert = n_ff;
  } else {
    m.d_expert = int_key_or(f, a + ".expert_feed_forward_length", n_ff / k, 1, kMaxDim);
  }
  MOE_CHECK(m.d_expert > 0,
            "{}: metadata '{}.feed_forward_length' is missing: expected the "
            "expert width",
            f.path(), a);
  c.ffn.d_ff = m.d_expert;
  if (a == "qwen2moe") {
    m.shared_experts = 1;
    m.shared_d_expert = int_key_or(f, a + ".expert_shared_feed_forward_length", n_ff, 1, kMaxDim);
    m.shared_gate = true;
  }
  if (a == "deepseek") {
    const int shared = int_key(f, a + ".expert_shared_count", 0, 1 << 16);
    if (shared > 0) {
      // llama.cpp holds the n shared experts as one MLP of width n·H (the sum of n MLPs).
      m.shared_experts = 1;
      m.shared_d_expert = shared * m.d_expert;
    }
    const double scale = f.get_float_or(a + ".expert_weights_scale", 0.0);
    m.router.routed_scaling_factor = scale == 0.0 ? 1.f : float(scale);  // 0 = unset in llama.cpp
    const int dense = int_key_or(f, a + ".leading_dense_block_count", 0, 0, c.n_layers);
    for (int l = 0; l < dense; ++l) {
      FfnConfig d;
      d.kind = FfnConfig::Kind::kDense;
      d.d_ff = n_ff;
      c.ffn_overrides.push_back({l, d});
    }
  }
  return c;
}

class GgufModelReader final : public ModelReader {
 public:
  explicit GgufModelReader(const std::string& path) : file_(path) {
    arch_ = file_.get_string("general.architecture");
    cfg_ = config_from_metadata(file_, arch_);
    if (file_.has(kMoeConfigKey)) adopt_our_config();
    cfg_.resolve();
    check_tensors();
  }

  std::string format() const override { return "gguf"; }
  std::string architecture() const override { return arch_; }
  const std::string& path() const override { return file_.path(); }
  const ModelConfig& config() const override { return cfg_; }
  std::unique_ptr<data::Tokenizer> tokenizer() const override { return tokenizer_from_gguf(file_); }

  std::vector<SourceTensor> tensors() const override {
    std::vector<SourceTensor> out;
    for (const GgufTensor& t : file_.tensors()) {
      std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
      const auto it = ours_.find(t.name);
      out.push_back(
          {it == ours_.end() ? "" : it->second, t.name, ggml_type_name(t.type), shape, t.nbytes});
    }
    return out;
  }

  void read(const std::string& our_name, const std::vector<int64_t>& shape,
            float* dst) const override {
    const std::string name = gguf_name_of(our_name);
    const GgufTensor& t = file_.tensor(name);
    check_shape(t, shape, our_name);
    file_.read_f32(t, dst);  // straight into the caller's buffer
    if (permuted_)
      permute_rope_param(our_name, shape, dst, cfg_.head_dim, /*to_interleaved=*/false);
  }

  std::optional<StoredTensor> stored(const std::string& our_name) const override {
    if (permuted_ && is_rope_param(our_name)) return std::nullopt;  // permuted on read
    const GgufTensor* t = file_.find(gguf_name_of(our_name));
    if (t == nullptr || t->ne.empty()) return std::nullopt;
    std::optional<WType> w;
    switch (t->type) {
      case GgmlType::kF32:
        w = WType::kF32;
        break;
      case GgmlType::kF16:
        w = WType::kF16;
        break;
      case GgmlType::kBF16:
        w = WType::kBF16;
        break;
      case GgmlType::kQ8_0:
        w = WType::kQ8_0;
        break;
      case GgmlType::kQ4_0:
        w = WType::kQ4_0;
        break;
      case GgmlType::kQ4_K:
        w = WType::kQ4_K;
        break;
      case GgmlType::kQ6_K:
        w = WType::kQ6_K;
        break;
      default:
        return std::nullopt;
    }
    std::vector<int64_t> shape(t->ne.rbegin(), t->ne.rend());
    return StoredTensor{*w, shape, {t->data}, wtype_row_bytes(*w, t->ne[0])};
  }

 private:
  // Our own export: take the exact config it carries, after checking it describes this file.
  void adopt_our_config() {
    const nlohmann::json j =
        parse_json(file_.get_string(kMoeConfigKey), file_.path() + ": metadata moe.config");
    ModelConfig ours;
    model_config_fields().parse(j, ours, file_.path() + " (metadata moe.config)", "model");
    ours.resolve();
    ModelConfig theirs = cfg_;
    theirs.resolve();
    MOE_CHECK(ours.d_model == theirs.d_model && ours.n_layers == theirs.n_layers &&
                  ours.n_heads == theirs.n_heads && ours.n_kv_heads == theirs.n_kv_heads &&
                  ours.head_dim == theirs.head_dim && ours.vocab_size == theirs.vocab_size,
              "{}: metadata moe.config disagrees with the file's {} hyperparameters", file_.path(),
              arch_);
    permuted_ = interleaved_arch(arch_) && ours.rope_style == RopeStyle::kHalf;
    cfg_ = ours;
    from_moe_config_ = true;
  }

  void check_shape(const GgufTensor& t, const std::vector<int64_t>& shape,
                   const std::string& our_name) const {
    // Ours may carry leading 1s (one shared expert [1, H, C]); ggml's ne is the reverse.
    std::vector<int64_t> want = shape;
    while (want.size() > t.ne.size() && want.front() == 1) want.erase(want.begin());
    const std::vector<int64_t> have(t.ne.rbegin(), t.ne.rend());
    MOE_CHECK(want == have,
              "{}: tensor '{}' has shape {} (ggml ne reversed), but the metadata implies {} for "
              "{}",
              file_.path(), t.name, fmt::format("[{}]", fmt::join(have, ", ")),
              fmt::format("[{}]", fmt::join(want, ", ")), our_name);
  }

  // Every tensor of the file must be one our model uses, and every one it uses must be there.
  void check_tensors() {
    for (const std::string& n : parameter_names(cfg_)) ours_[gguf_name_of(n)] = n;
    // Our tied export to olmoe/qwen2moe repeats the embedding as output.weight.
    if (cfg_.tie_embeddings && from_moe_config_) ours_["output.weight"] = "embed.weight";
    for (const GgufTensor& t : file_.tensors())
      MOE_CHECK(ours_.count(t.name),
                "{}: tensor '{}' is not part of the {} computation we implement (unsupported "
                "feature)",
                file_.path(), t.name, arch_);
    for (const auto& [n, unused] : ours_)
      MOE_CHECK(file_.find(n) != nullptr || (n == "output.weight" && cfg_.tie_embeddings),
                "{}: tensor '{}' is missing (the metadata implies it)", file_.path(), n);
  }

  GgufFile file_;
  std::string arch_;
  ModelConfig cfg_;
  bool permuted_ = false;
  bool from_moe_config_ = false;
  std::map<std::string, std::string> ours_;  // GGUF tensor name → our parameter name
};

}  // namespace

std::unique_ptr<ModelReader> open_gguf_model(const std::string& path) {
  return std::make_unique<GgufModelReader>(path);
}

}  // namespace moe::formats
