#include "moe/model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "moe/core/error.h"
#include "moe/core/file_io.h"

namespace moe {

using json = nlohmann::json;

namespace {

// Reads the fields of one JSON object, remembering which were consumed, so unknown fields can be
// rejected by name afterwards. Every message carries "<source>: field <path>".
class Fields {
 public:
  Fields(const json& j, std::string source, std::string path)
      : j_(j), source_(std::move(source)), path_(std::move(path)) {
    MOE_CHECK(j.is_object(), "{}: field {}: expected a JSON object, got {}", source_,
              path_.empty() ? "<root>" : path_, j.dump());
  }

  std::string where(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }

  template <typename T>
  void get(const std::string& key, T& out) {
    seen_.insert(key);
    if (!j_.contains(key)) return;
    const json& v = j_[key];
    bool ok;
    if constexpr (std::is_same_v<T, bool>)
      ok = v.is_boolean();
    else if constexpr (std::is_integral_v<T>)
      ok = v.is_number_integer();
    else if constexpr (std::is_floating_point_v<T>)
      ok = v.is_number();
    else
      ok = v.is_string();
    MOE_CHECK(ok, "{}: field {}: got {}, expected {}", source_, where(key), v.dump(),
              std::is_same_v<T, bool>       ? "true or false"
              : std::is_integral_v<T>       ? "an integer"
              : std::is_floating_point_v<T> ? "a number"
                                            : "a string");
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      const auto x = v.get<int64_t>();
      const bool ok_range = std::is_unsigned_v<T> ? x >= 0
                                                  : x >= int64_t(std::numeric_limits<T>::min()) &&
                                                        x <= int64_t(std::numeric_limits<T>::max());
      MOE_CHECK(ok_range, "{}: field {}: {} is out of range for this field", source_, where(key),
                x);
    }
    out = v.get<T>();
  }

  // A string restricted to a fixed set of values.
  void get_choice(const std::string& key, std::string& out,
                  const std::vector<std::string>& allowed) {
    get(key, out);
    bool ok = false;
    std::string list;
    for (auto& a : allowed) {
      ok |= (a == out);
      list += (list.empty() ? "" : ", ") + a;
    }
    MOE_CHECK(ok, "{}: field {}: got \"{}\", expected one of: {}", source_, where(key), out, list);
  }

  const json* sub(const std::string& key) {
    seen_.insert(key);
    return j_.contains(key) ? &j_[key] : nullptr;
  }

  void reject_unknown() const {
    for (auto& [k, _] : j_.items()) {
      if (k == "comment" || k == "_comment") continue;  // free-text notes are allowed anywhere
      if (!seen_.count(k)) {
        std::string known;
        for (auto& s : seen_) known += (known.empty() ? "" : ", ") + s;
        MOE_FAIL("{}: unknown field {} (known fields here: {})", source_, where(k), known);
      }
    }
  }

  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_, path_;
  std::set<std::string> seen_;
};

FfnConfig parse_ffn(const json& j, const std::string& source, const std::string& path,
                    FfnConfig base) {
  Fields f(j, source, path);
  // An override of another kind starts from that kind's defaults, not from the default FFN's
  // fields (a PEER block's ReLU must not leak into a dense block).
  const std::string inherited_kind = base.kind;
  f.get_choice("kind", base.kind, {"dense", "moe", "peer"});
  if (base.kind != inherited_kind) {
    const std::string kind = base.kind;
    base = FfnConfig{};
    base.kind = kind;
  }
  if (base.kind == "peer" && !j.contains("activation")) base.activation = Activation::kGELU;
  std::string act = base.activation == Activation::kGELU   ? "gelu"
                    : base.activation == Activation::kReLU ? "relu"
                                                           : "swiglu";
  if (base.kind == "peer")
    f.get_choice("activation", act, {"gelu", "relu"});
  else
    f.get_choice("activation", act, {"swiglu", "gelu"});
  base.activation = act == "gelu"   ? Activation::kGELU
                    : act == "relu" ? Activation::kReLU
                                    : Activation::kSwiGLU;
  f.get("heads", base.heads);
  f.get("d_key", base.d_key);
  f.get_choice("query_norm", base.query_norm, {"batchnorm", "layernorm", "none"});
  f.get("d_ff", base.d_ff);
  f.get("num_experts", base.num_experts);
  f.get("top_k", base.top_k);
  f.get("d_expert", base.d_expert);
  f.get("granularity", base.granularity);
  f.get("expansion", base.expansion);
  f.get("k_base", base.k_base);
  f.get("shared_experts", base.shared_experts);
  f.get("capacity_factor", base.capacity_factor);
  f.get("eval_capacity_factor", base.eval_capacity_factor);
  f.get("aux_loss_coef", base.aux_loss_coef);
  f.get("z_loss_coef", base.z_loss_coef);
  f.get("expert_dropout", base.expert_dropout);
  if (const json* r = f.sub("router")) {
    Fields rf(*r, source, path + ".router");
    rf.get_choice("kind", base.router.kind, {"topk", "noisy_topk", "gshard", "expert_choice"});
    rf.get("normalize", base.router.normalize);
    rf.get_choice("score", base.router.score, {"softmax", "sigmoid"});
    rf.get("jitter", base.router.jitter);
    rf.get("bias_balance", base.router.bias_balance);
    rf.get("bias_rate", base.router.bias_rate);
    rf.reject_unknown();
  }
  f.reject_unknown();
  auto nonneg = [&](const char* name, double v) {
    MOE_CHECK(v >= 0, "{}: field {}.{}: got {}, expected >= 0", source, path, name, v);
  };
  nonneg("d_ff", base.d_ff);
  nonneg("num_experts", base.num_experts);
  nonneg("top_k", base.top_k);
  nonneg("d_expert", base.d_expert);
  nonneg("granularity", base.granularity);
  nonneg("expansion", base.expansion);
  nonneg("shared_experts", base.shared_experts);
  nonneg("capacity_factor", base.capacity_factor);
  nonneg("eval_capacity_factor", base.eval_capacity_factor);
  nonneg("aux_loss_coef", base.aux_loss_coef);
  nonneg("z_loss_coef", base.z_loss_coef);
  MOE_CHECK(base.router.jitter >= 0 && base.router.jitter < 1,
            "{}: field {}.router.jitter: got {}, expected [0, 1)", source, path,
            base.router.jitter);
  MOE_CHECK(base.expert_dropout >= 0 && base.expert_dropout < 1,
            "{}: field {}.expert_dropout: got {}, expected [0, 1)", source, path,
            base.expert_dropout);
  MOE_CHECK(base.k_base >= 1, "{}: field {}.k_base: got {}, expected >= 1", source, path,
            base.k_base);
  return base;
}

json ffn_to_json(const FfnConfig& f) {
  json j = {{"kind", f.kind},
            {"activation", f.activation == Activation::kGELU   ? "gelu"
                           : f.activation == Activation::kReLU ? "relu"
                                                               : "swiglu"},
            {"d_ff", f.d_ff}};
  if (f.kind == "peer")
    j.update({{"num_experts", f.num_experts},
              {"heads", f.heads},
              {"top_k", f.top_k},
              {"d_key", f.d_key},
              {"query_norm", f.query_norm}});
  if (f.kind == "moe") {
    j.update({{"num_experts", f.num_experts},
              {"top_k", f.top_k},
              {"d_expert", f.d_expert},
              {"granularity", f.granularity},
              {"expansion", f.expansion},
              {"k_base", f.k_base},
              {"shared_experts", f.shared_experts},
              {"capacity_factor", f.capacity_factor},
              {"eval_capacity_factor", f.eval_capacity_factor},
              {"aux_loss_coef", f.aux_loss_coef},
              {"z_loss_coef", f.z_loss_coef},
              {"expert_dropout", f.expert_dropout},
              {"router",
               {{"kind", f.router.kind},
                {"normalize", f.router.normalize},
                {"score", f.router.score},
                {"jitter", f.router.jitter},
                {"bias_balance", f.router.bias_balance},
                {"bias_rate", f.router.bias_rate}}}});
  }
  return j;
}

}  // namespace

const FfnConfig& ModelConfig::ffn_for(int layer) const {
  for (auto& [l, f] : ffn_overrides)
    if (l == layer) return f;
  return ffn;
}

// A key of model.ffn_overrides: a block index ("2"), a comma list ("0,3"), or a Python-style
// slice "start:stop[:step]" with the ends optional: "1::2" = every other block from 1, "1:" = all
// but the first, ":2" = the first two.
static std::vector<int> parse_block_set(const std::string& key, int n_layers,
                                        const std::string& source) {
  auto fail = [&]() {
    MOE_FAIL(
        "{}: field model.ffn_overrides.\"{}\": expected a block index, a list \"0,2\" or a "
        "slice \"start:stop:step\" (e.g. \"1::2\" every other block, \"1:\" all but the "
        "first) with blocks in 0..{}",
        source, key, n_layers - 1);
  };
  auto number = [&](const std::string& t, int dflt) {
    if (t.empty()) return dflt;
    std::size_t used = 0;
    int v = -1;
    try {
      v = std::stoi(t, &used);
    } catch (...) {
      fail();
    }
    if (used != t.size() || v < 0) fail();
    return v;
  };
  std::vector<int> out;
  if (key.find(':') != std::string::npos) {
    std::vector<std::string> parts;
    std::size_t at = 0;
    for (std::size_t c; (c = key.find(':', at)) != std::string::npos; at = c + 1)
      parts.push_back(key.substr(at, c - at));
    parts.push_back(key.substr(at));
    if (parts.size() > 3) fail();
    const int start = number(parts[0], 0), stop = std::min(number(parts[1], n_layers), n_layers);
    const int step = parts.size() == 3 ? number(parts[2], 1) : 1;
    if (step < 1) fail();
    for (int l = start; l < stop; l += step) out.push_back(l);
  } else {
    std::size_t at = 0;
    for (std::size_t c; (c = key.find(',', at)) != std::string::npos; at = c + 1)
      out.push_back(number(key.substr(at, c - at), -1));
    out.push_back(number(key.substr(at), -1));
  }
  if (out.empty()) fail();
  for (int l : out)
    if (l >= n_layers) fail();
  return out;
}

static void resolve_ffn(FfnConfig& f, int d_model, const std::string& where) {
  if (f.d_ff == 0) {
    // GELU: the classic 4·C. SwiGLU has three matrices, so 2/3 of that width keeps the parameter
    // count equal (LLaMA's rule), rounded up to a multiple of 64 for the GEMMs.
    f.d_ff = f.activation == Activation::kGELU ? 4 * d_model : (8 * d_model / 3 + 63) / 64 * 64;
  }
  if (f.kind == "peer") {
    const int S = int(std::lround(std::sqrt(double(f.num_experts))));
    MOE_CHECK(f.num_experts > 0 && int64_t(S) * S == f.num_experts,
              "config: field {}.num_experts: got {}, PEER needs a perfect square S² (S sub-keys "
              "per half), e.g. 16384 or 1048576",
              where, f.num_experts);
    if (f.top_k == 0) f.top_k = std::min(16, S);
    MOE_CHECK(f.top_k >= 1 && f.top_k <= S,
              "config: field {}.top_k: got {}, expected 1..S = {} (the top-k per half)", where,
              f.top_k, S);
    MOE_CHECK(f.heads >= 1, "config: field {}.heads: got {}, expected >= 1", where, f.heads);
    MOE_CHECK(f.d_key >= 2 && f.d_key % 2 == 0,
              "config: field {}.d_key: got {}, expected an even number >= 2", where, f.d_key);
    return;
  }
  if (f.kind != "moe") return;
  if (f.granularity > 0) {
    // Krajewski et al.: E·G experts of width d_ff/G, each token to G·k_base of them, so the
    // active parameters stay those of the dense FFN (times k_base) whatever G is.
    MOE_CHECK(f.expansion > 0,
              "config: field {}.expansion: got {}, the fine-grained form (granularity > 0) needs "
              "an expansion rate >= 1",
              where, f.expansion);
    MOE_CHECK(f.d_ff % f.granularity == 0,
              "config: field {}.granularity: d_ff = {} is not divisible by G = {}", where, f.d_ff,
              f.granularity);
    MOE_CHECK(f.num_experts == 0 || f.num_experts == f.expansion * f.granularity,
              "config: field {}.num_experts: got {}, but expansion·granularity = {}; set one form",
              where, f.num_experts, f.expansion * f.granularity);
    f.num_experts = f.expansion * f.granularity;
    f.d_expert = f.d_ff / f.granularity;
    if (f.top_k == 0) f.top_k = f.granularity * f.k_base;
  }
  if (f.d_expert == 0) f.d_expert = f.d_ff;
  MOE_CHECK(f.num_experts >= 1,
            "config: field {}.num_experts: got {}, an MoE FFN needs at least 1 expert (or "
            "granularity + expansion)",
            where, f.num_experts);
  if (f.top_k == 0) f.top_k = f.router.kind == "gshard" ? 2 : 1;
  MOE_CHECK(f.top_k <= f.num_experts,
            "config: field {}.top_k: got {}, expected 1..num_experts = {}", where, f.top_k,
            f.num_experts);
  if (f.router.kind == "gshard")
    MOE_CHECK(f.top_k == 2, "config: field {}.top_k: got {}, the gshard router is top-2", where,
              f.top_k);
  if (f.router.kind == "expert_choice") {
    // Here the capacity factor is the mean number of experts per token; default: top_k.
    if (f.capacity_factor == 0) f.capacity_factor = float(f.top_k);
    if (f.eval_capacity_factor == 0) f.eval_capacity_factor = f.capacity_factor;
    MOE_CHECK(!f.router.bias_balance,
              "config: field {}.router.bias_balance: expert choice balances by construction; "
              "bias_balance is for token-choice routers",
              where);
  }
  MOE_CHECK(f.router.score == "softmax" || f.router.kind == "topk",
            "config: field {}.router.score: sigmoid scores are only for the topk router", where);
}

void ModelConfig::resolve() {
  auto pos = [](const char* name, long v) {
    MOE_CHECK(v > 0, "config: field model.{}: got {}, expected a positive integer", name, v);
  };
  pos("vocab_size", vocab_size);
  pos("d_model", d_model);
  pos("n_layers", n_layers);
  pos("n_heads", n_heads);
  pos("max_seq_len", max_seq_len);
  if (n_kv_heads == 0) n_kv_heads = n_heads;
  MOE_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0,
            "config: field model.n_kv_heads: got {}, expected a divisor of n_heads = {}",
            n_kv_heads, n_heads);
  if (head_dim == 0) {
    MOE_CHECK(d_model % n_heads == 0,
              "config: field model.n_heads: d_model = {} is not divisible by n_heads = {}; set "
              "model.head_dim explicitly",
              d_model, n_heads);
    head_dim = d_model / n_heads;
  }
  MOE_CHECK(head_dim > 0 && head_dim % 2 == 0,
            "config: field model.head_dim: got {}, expected a positive even number (RoPE rotates "
            "pairs)",
            head_dim);
  MOE_CHECK(rope_theta > 0, "config: field model.rope_theta: got {}, expected > 0", rope_theta);
  MOE_CHECK(norm_eps > 0, "config: field model.norm_eps: got {}, expected > 0", norm_eps);
  MOE_CHECK(init_std > 0, "config: field model.init_std: got {}, expected > 0", init_std);
  resolve_ffn(ffn, d_model, "model.ffn");
  for (auto& [l, f] : ffn_overrides) {
    MOE_CHECK(l >= 0 && l < n_layers,
              "config: field model.ffn_overrides: block {} does not exist (n_layers = {})", l,
              n_layers);
    resolve_ffn(f, d_model, "model.ffn_overrides." + std::to_string(l));
  }
}

Config config_from_json(const json& j, const std::string& source) {
  Config c;
  Fields root(j, source, "");
  if (const json* m = root.sub("model")) {
    ModelConfig& mc = c.model;
    Fields f(*m, source, "model");
    f.get("vocab_size", mc.vocab_size);
    f.get("d_model", mc.d_model);
    f.get("n_layers", mc.n_layers);
    f.get("n_heads", mc.n_heads);
    f.get("n_kv_heads", mc.n_kv_heads);
    f.get("head_dim", mc.head_dim);
    f.get("max_seq_len", mc.max_seq_len);
    f.get("rope_theta", mc.rope_theta);
    f.get("norm_eps", mc.norm_eps);
    f.get("qk_norm", mc.qk_norm);
    f.get("tie_embeddings", mc.tie_embeddings);
    f.get("init_std", mc.init_std);
    if (const json* ffn = f.sub("ffn")) mc.ffn = parse_ffn(*ffn, source, "model.ffn", mc.ffn);
    if (const json* ov = f.sub("ffn_overrides")) {
      MOE_CHECK(ov->is_object(),
                "{}: field model.ffn_overrides: expected an object {{\"<block>\": {{ffn}}}}",
                source);
      for (auto& [k, v] : ov->items()) {
        const std::vector<int> blocks = parse_block_set(k, mc.n_layers, source);
        const FfnConfig fc = parse_ffn(v, source, "model.ffn_overrides." + k, mc.ffn);
        for (int layer : blocks) {
          for (auto& [l, unused] : mc.ffn_overrides)
            MOE_CHECK(l != layer, "{}: field model.ffn_overrides: block {} is given twice", source,
                      layer);
          mc.ffn_overrides.push_back({layer, fc});
        }
      }
    }
    f.reject_unknown();
  }
  if (const json* t = root.sub("tokenizer")) {
    Fields f(*t, source, "tokenizer");
    f.get_choice("kind", c.tokenizer.kind, {"byte", "bpe"});
    f.get("vocab_size", c.tokenizer.vocab_size);
    MOE_CHECK(c.tokenizer.vocab_size >= 260 && c.tokenizer.vocab_size <= 65536,
              "{}: field tokenizer.vocab_size: got {}, expected 260..65536", source,
              c.tokenizer.vocab_size);
    f.reject_unknown();
  }
  if (const json* d = root.sub("data")) {
    Fields f(*d, source, "data");
    f.get("dir", c.data.dir);
    f.reject_unknown();
  }
  if (const json* t = root.sub("train")) {
    TrainConfig& tc = c.train;
    Fields f(*t, source, "train");
    f.get("batch_size", tc.batch_size);
    f.get("seq_len", tc.seq_len);
    f.get("grad_accum", tc.grad_accum);
    f.get("steps", tc.steps);
    f.get("lr", tc.lr);
    f.get("min_lr", tc.min_lr);
    f.get("warmup_steps", tc.warmup_steps);
    f.get("weight_decay", tc.weight_decay);
    f.get("beta1", tc.beta1);
    f.get("beta2", tc.beta2);
    f.get("eps", tc.eps);
    f.get("grad_clip", tc.grad_clip);
    f.get("decay_embeddings", tc.decay_embeddings);
    f.get("eval_every", tc.eval_every);
    f.get("eval_batches", tc.eval_batches);
    f.get("log_every", tc.log_every);
    f.get("checkpoint_every", tc.checkpoint_every);
    f.get("seed", tc.seed);
    f.get("threads", tc.threads);
    f.get("time_limit_s", tc.time_limit_s);
    f.get("out_dir", tc.out_dir);
    f.get("sparse_lr", tc.sparse_lr);
    MOE_CHECK(tc.sparse_lr >= 0, "{}: field train.sparse_lr: got {}, expected >= 0", source,
              tc.sparse_lr);
    if (const json* fr = f.sub("freeze")) {
      MOE_CHECK(fr->is_array(), "{}: field train.freeze: expected a list of name patterns, got {}",
                source, fr->dump());
      for (auto& p : *fr) {
        MOE_CHECK(p.is_string(), "{}: field train.freeze: entry {} is not a string", source,
                  p.dump());
        tc.freeze.push_back(p.get<std::string>());
      }
    }
    f.reject_unknown();
    auto pos = [&](const char* name, double v) {
      MOE_CHECK(v > 0, "{}: field train.{}: got {}, expected > 0", source, name, v);
    };
    pos("batch_size", tc.batch_size);
    pos("seq_len", tc.seq_len);
    pos("grad_accum", tc.grad_accum);
    pos("steps", tc.steps);
    pos("lr", tc.lr);
    pos("eps", tc.eps);
    pos("eval_batches", tc.eval_batches);
    pos("log_every", tc.log_every);
    MOE_CHECK(tc.min_lr >= 0 && tc.min_lr <= tc.lr,
              "{}: field train.min_lr: got {}, expected 0 <= min_lr <= lr = {}", source, tc.min_lr,
              tc.lr);
    MOE_CHECK(tc.warmup_steps >= 0, "{}: field train.warmup_steps: got {}, expected >= 0", source,
              tc.warmup_steps);
    MOE_CHECK(tc.weight_decay >= 0, "{}: field train.weight_decay: got {}, expected >= 0", source,
              tc.weight_decay);
    MOE_CHECK(tc.beta1 >= 0 && tc.beta1 < 1, "{}: field train.beta1: got {}, expected [0, 1)",
              source, tc.beta1);
    MOE_CHECK(tc.beta2 >= 0 && tc.beta2 < 1, "{}: field train.beta2: got {}, expected [0, 1)",
              source, tc.beta2);
    MOE_CHECK(tc.grad_clip >= 0, "{}: field train.grad_clip: got {}, expected >= 0 (0 = off)",
              source, tc.grad_clip);
    MOE_CHECK(
        tc.eval_every >= 0 && tc.checkpoint_every >= 0 && tc.threads >= 0 && tc.time_limit_s >= 0,
        "{}: fields train.eval_every, checkpoint_every, threads, time_limit_s must be >= 0",
        source);
  }
  root.reject_unknown();
  if (c.tokenizer.kind == "byte" && !(j.contains("model") && j["model"].contains("vocab_size")))
    c.model.vocab_size = 256;
  if (c.tokenizer.kind == "bpe") c.model.vocab_size = c.tokenizer.vocab_size;
  try {
    c.model.resolve();
  } catch (const Error& e) {
    throw Error(source + ": " + e.message(), "config");
  }
  MOE_CHECK(c.train.seq_len <= c.model.max_seq_len,
            "{}: field train.seq_len: got {}, expected <= model.max_seq_len = {}", source,
            c.train.seq_len, c.model.max_seq_len);
  return c;
}

json Config::to_json() const {
  json ov = json::object();
  for (auto& [l, f] : model.ffn_overrides) ov[std::to_string(l)] = ffn_to_json(f);
  json m = {{"vocab_size", model.vocab_size},
            {"d_model", model.d_model},
            {"n_layers", model.n_layers},
            {"n_heads", model.n_heads},
            {"n_kv_heads", model.n_kv_heads},
            {"head_dim", model.head_dim},
            {"max_seq_len", model.max_seq_len},
            {"rope_theta", model.rope_theta},
            {"norm_eps", model.norm_eps},
            {"qk_norm", model.qk_norm},
            {"tie_embeddings", model.tie_embeddings},
            {"init_std", model.init_std},
            {"ffn", ffn_to_json(model.ffn)}};
  if (!ov.empty()) m["ffn_overrides"] = ov;
  const TrainConfig& t = train;
  return {{"model", m},
          {"tokenizer", {{"kind", tokenizer.kind}, {"vocab_size", tokenizer.vocab_size}}},
          {"data", {{"dir", data.dir}}},
          {"train",
           {{"batch_size", t.batch_size},
            {"seq_len", t.seq_len},
            {"grad_accum", t.grad_accum},
            {"steps", t.steps},
            {"lr", t.lr},
            {"min_lr", t.min_lr},
            {"warmup_steps", t.warmup_steps},
            {"weight_decay", t.weight_decay},
            {"beta1", t.beta1},
            {"beta2", t.beta2},
            {"eps", t.eps},
            {"grad_clip", t.grad_clip},
            {"decay_embeddings", t.decay_embeddings},
            {"eval_every", t.eval_every},
            {"eval_batches", t.eval_batches},
            {"log_every", t.log_every},
            {"checkpoint_every", t.checkpoint_every},
            {"seed", t.seed},
            {"threads", t.threads},
            {"time_limit_s", t.time_limit_s},
            {"out_dir", t.out_dir},
            {"freeze", t.freeze},
            {"sparse_lr", t.sparse_lr}}}};
}

void apply_override(json& j, const std::string& assignment) {
  const auto eq = assignment.find('=');
  MOE_CHECK(eq != std::string::npos && eq > 0, "--set {}: expected key=value, e.g. train.lr=3e-4",
            assignment);
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  json* node = &j;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? dot : dot - start);
    MOE_CHECK(!part.empty(), "--set {}: empty component in key '{}'", assignment, key);
    if (!node->is_object()) *node = json::object();
    node = &(*node)[part];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  json v = json::parse(value, nullptr, /*allow_exceptions=*/false);
  *node = v.is_discarded() ? json(value) : v;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  json j;
  if (!path.empty()) {
    const std::string text = read_file(path);
    j = json::parse(text, nullptr, false);
    MOE_CHECK(!j.is_discarded(), "{}: not valid JSON", path);
  } else {
    j = json::object();
  }
  for (auto& o : overrides) apply_override(j, o);
  return config_from_json(j, path.empty() ? "<defaults>" : path);
}

}  // namespace moe
