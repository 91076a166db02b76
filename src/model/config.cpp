#include "moe/model/config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/core/error.h"
#include "moe/core/json_util.h"

namespace moe {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Enum spellings: the one place each enum's JSON names are written.

std::span<const EnumSpelling<Activation>> spellings(Activation) {
  static constexpr EnumSpelling<Activation> k[] = {
      {Activation::kSwiGLU, "swiglu"}, {Activation::kGELU, "gelu"}, {Activation::kReLU, "relu"}};
  return k;
}

std::span<const EnumSpelling<RouterConfig::Kind>> spellings(RouterConfig::Kind) {
  using K = RouterConfig::Kind;
  static constexpr EnumSpelling<K> k[] = {{K::kTopK, "topk"},
                                          {K::kNoisyTopK, "noisy_topk"},
                                          {K::kGShard, "gshard"},
                                          {K::kExpertChoice, "expert_choice"},
                                          {K::kRelu, "relu"}};
  return k;
}

std::span<const EnumSpelling<RouterConfig::Score>> spellings(RouterConfig::Score) {
  using S = RouterConfig::Score;
  static constexpr EnumSpelling<S> k[] = {{S::kSoftmax, "softmax"}, {S::kSigmoid, "sigmoid"}};
  return k;
}

std::span<const EnumSpelling<RouterConfig::BiasUpdate>> spellings(RouterConfig::BiasUpdate) {
  using U = RouterConfig::BiasUpdate;
  static constexpr EnumSpelling<U> k[] = {{U::kSign, "sign"}, {U::kSignCentred, "sign_centred"}};
  return k;
}

std::span<const EnumSpelling<Precision>> spellings(Precision) {
  static constexpr EnumSpelling<Precision> k[] = {{Precision::kFp32, "fp32"},
                                                  {Precision::kBf16, "bf16"}};
  return k;
}

std::span<const EnumSpelling<MoeFfnConfig::AuxLossScope>> spellings(MoeFfnConfig::AuxLossScope) {
  using A = MoeFfnConfig::AuxLossScope;
  static constexpr EnumSpelling<A> k[] = {{A::kMicroBatch, "micro_batch"},
                                          {A::kSequence, "sequence"},
                                          {A::kGlobalBatch, "global_batch"}};
  return k;
}

std::span<const EnumSpelling<MoeFfnConfig::ExpertGemm>> spellings(MoeFfnConfig::ExpertGemm) {
  using G = MoeFfnConfig::ExpertGemm;
  static constexpr EnumSpelling<G> k[] = {
      {G::kAuto, "auto"}, {G::kBlas, "blas"}, {G::kPanel, "panel"}};
  return k;
}

std::span<const EnumSpelling<PeerFfnConfig::QueryNorm>> spellings(PeerFfnConfig::QueryNorm) {
  using Q = PeerFfnConfig::QueryNorm;
  static constexpr EnumSpelling<Q> k[] = {
      {Q::kBatchNorm, "batchnorm"}, {Q::kLayerNorm, "layernorm"}, {Q::kNone, "none"}};
  return k;
}

std::span<const EnumSpelling<QkNorm>> spellings(QkNorm) {
  static constexpr EnumSpelling<QkNorm> k[] = {
      {QkNorm::kNone, "none"}, {QkNorm::kRow, "row"}, {QkNorm::kHead, "head"}};
  return k;
}

std::span<const EnumSpelling<RopeStyle>> spellings(RopeStyle) {
  static constexpr EnumSpelling<RopeStyle> k[] = {{RopeStyle::kHalf, "half"},
                                                  {RopeStyle::kInterleaved, "interleaved"}};
  return k;
}

std::span<const EnumSpelling<FfnConfig::Kind>> spellings(FfnConfig::Kind) {
  using K = FfnConfig::Kind;
  static constexpr EnumSpelling<K> k[] = {
      {K::kDense, "dense"}, {K::kMoe, "moe"}, {K::kPeer, "peer"}};
  return k;
}

// ---------------------------------------------------------------------------------------------
// Declarations

namespace {

const FieldTable<RouterConfig>& router_config_fields() {
  static const FieldTable<RouterConfig> t = [] {
    using R = RouterConfig;
    FieldTable<R> t;
    t.add("kind", &R::kind,
          "`topk`, `noisy_topk`, `gshard` (top-2, random second expert), "
          "`expert_choice`, `relu` (ReMoE: ReLU gates, adaptive L1; top_k = target active)");
    t.add("normalize", &R::normalize,
          "topk: renormalise the k gates to sum 1 (Mixtral); false = Switch (relu: must be false)",
          [](bool b, const R& r) -> std::optional<std::string> {
            if (!b || r.kind != R::Kind::kRelu) return std::nullopt;
            return "false (relu gates are the ReLU outputs themselves, never renormalised)";
          });
    t.add("score", &R::score, "`softmax` or `sigmoid` (topk only)",
          [](R::Score s, const R& r) -> std::optional<std::string> {
            if (s == R::Score::kSoftmax || r.kind == R::Kind::kTopK) return std::nullopt;
            return "softmax (sigmoid scores are only for the topk router)";
          });
    t.add("jitter", &R::jitter,
          "multiplicative router-input jitter x·U(1−j, 1+j) in training (topk)",
          rule::half_open(0.f, 1.f));
    t.add("bias_balance", &R::bias_balance,
          "DeepSeek-V3 aux-loss-free selection bias (token-choice routers)",
          [](bool b, const R& r) -> std::optional<std::string> {
            if (!b || r.kind != R::Kind::kExpertChoice) {
              if (!b || r.kind != R::Kind::kRelu) return std::nullopt;
              return "false (relu balances with its load-weighted L1 loss)";
            }
            return "false (expert choice balances by construction; bias_balance is for "
                   "token-choice routers)";
          });
    t.add("bias_rate", &R::bias_rate, "γ of the bias update b_e += γ·sign(mean load − load_e)");
    t.add("bias_update", &R::bias_update,
          "`sign`: b_e += γ·sign(mean load − load_e) once per optimizer step, loads summed over "
          "its micro-batches and ranks (DeepSeek-V3); `sign_centred`: then subtract the mean b");
    t.add("n_group", &R::n_group,
          "topk: DeepSeek-V3 group-limited routing over n_group groups of num_experts/n_group "
          "experts (1 = off)",
          [](int g, const R& r) -> std::optional<std::string> {
            if (g == 1 || (g > 1 && r.kind == R::Kind::kTopK)) return std::nullopt;
            return g < 1 ? ">= 1" : "1 (group-limited routing is for the topk router)";
          });
    t.add("topk_group", &R::topk_group,
          "groups a token may route to: those with the largest sums of their two best "
          "selection scores (1..n_group)",
          [](int g, const R& r) -> std::optional<std::string> {
            if (g >= 1 && g <= r.n_group) return std::nullopt;
            return fmt::format("1..n_group = {}", r.n_group);
          });
    t.add("routed_scaling_factor", &R::routed_scaling_factor,
          "topk: multiplies the routed experts' combine weights after the optional "
          "renormalisation (DeepSeek; llama.cpp's expert_weights_scale)",
          [](float f, const R& r) -> std::optional<std::string> {
            if (f == 1.f || (r.kind == R::Kind::kTopK && f > 0 && std::isfinite(f)))
              return std::nullopt;
            return r.kind == R::Kind::kTopK ? "> 0" : "1 (the factor is for the topk router)";
          });
    t.add("relu_l1_init", &R::relu_l1_init,
          "relu: λ_0, the initial coefficient of ReMoE's L1 loss (paper: 1e-8)",
          [](double v, const R&) -> std::optional<std::string> {
            if (v > 0 && std::isfinite(v)) return std::nullopt;
            return "> 0 and finite";
          });
    t.add("relu_l1_rate", &R::relu_l1_rate,
          "relu: α, λ is multiplied (sparsity below 1 − top_k/num_experts) or divided (above) by "
          "it once per optimizer step (paper: 1.2)",
          [](double v, const R&) -> std::optional<std::string> {
            if (v > 1 && std::isfinite(v)) return std::nullopt;
            return "> 1 and finite";
          });
    return t;
  }();
  return t;
}

const FieldTable<MoeFfnConfig>& moe_ffn_config_fields() {
  static const FieldTable<MoeFfnConfig> t = [] {
    using M = MoeFfnConfig;
    const auto nonneg = rule::at_least(0);
    const auto nonneg_f = rule::at_least(0.f);
    const auto nonneg_d = rule::at_least(0.0);
    FieldTable<M> t;
    t.add("num_experts", &M::num_experts, "E routed experts (or set granularity and expansion)",
          nonneg);
    t.add("top_k", &M::top_k, "experts per token k; 0 = 1 (gshard: 2; fine-grained: G·k_base)",
          nonneg);
    t.add("d_expert", &M::d_expert, "width H of one expert; 0 = d_ff (fine-grained: d_ff/G)",
          nonneg);
    t.add("granularity", &M::granularity,
          "fine-grained sizing (Krajewski et al.): G > 0 gives E·G experts of width d_ff/G",
          nonneg);
    t.add("expansion", &M::expansion, "fine-grained sizing: expansion rate E", nonneg);
    t.add("k_base", &M::k_base, "fine-grained sizing: top-k = G·k_base", rule::at_least(1));
    t.add("shared_experts", &M::shared_experts, "dense experts every token passes through", nonneg);
    t.add("shared_d_expert", &M::shared_d_expert, "width of one shared expert; 0 = d_expert",
          nonneg);
    t.add("shared_gate", &M::shared_gate,
          "Qwen2-MoE: the shared experts' output × σ(x·w) per token (param `shared.gate` [C])",
          [](bool g, const M& m) -> std::optional<std::string> {
            if (!g || m.shared_experts > 0) return std::nullopt;
            return "false (the gate needs shared_experts >= 1)";
          });
    t.add("capacity_factor", &M::capacity_factor,
          "training capacity ⌈cf·N·k/E⌉ per expert (0 = dropless); expert choice: mean experts "
          "per token (0 = top_k)",
          nonneg_f);
    t.add("eval_capacity_factor", &M::eval_capacity_factor,
          "the same at evaluation and generation (0 = dropless; expert choice: capacity_factor)",
          nonneg_f);
    t.add("aux_loss_coef", &M::aux_loss_coef, "α of the Switch load-balancing loss", nonneg_d);
    t.add("aux_loss_scope", &M::aux_loss_scope,
          "`micro_batch`: f_e and P_e over the forward's (global) batch; `sequence`: per "
          "sequence, the losses averaged (DeepSeek-V2/V3); `global_batch`: f_e over the "
          "optimizer step's whole batch, all micro-batches and ranks (Qwen; one extra forward "
          "per micro-batch when grad_accum > 1)");
    t.add("z_loss_coef", &M::z_loss_coef, "β of the router z-loss", nonneg_d);
    t.add("expert_dropout", &M::expert_dropout,
          "dropout on expert hidden units (training; for fine-tuning)", rule::half_open(0.f, 1.f));
    t.add("expert_gemm", &M::expert_gemm,
          "the experts' matrix products: `blas` (OpenBLAS), `panel` (moe.cpp's AVX-512 GEMM, in "
          "AVX-512 builds) or `auto` (panel where d_expert·d_model ≤ 128K); they differ in the "
          "last bits");
    t.add_group("router", &M::router, router_config_fields());
    return t;
  }();
  return t;
}

const FieldTable<PeerFfnConfig>& peer_ffn_config_fields() {
  static const FieldTable<PeerFfnConfig> t = [] {
    using P = PeerFfnConfig;
    FieldTable<P> t;
    t.add("num_experts", &P::num_experts,
          "S², a perfect square (S sub-keys per half), e.g. 16384 or 1048576", rule::at_least(0));
    t.add("heads", &P::heads, "query heads sharing the expert pool", rule::at_least(1));
    t.add("top_k", &P::top_k, "experts retrieved per head; 0 = min(16, S)", rule::at_least(0));
    t.add("d_key", &P::d_key, "query/key width", [](int d, const P&) -> std::optional<std::string> {
      if (d >= 2 && d % 2 == 0) return std::nullopt;
      return "an even number >= 2";
    });
    t.add("query_norm", &P::query_norm,
          "`batchnorm` (batch statistics in training, running ones at eval), `layernorm`, "
          "`none`");
    return t;
  }();
  return t;
}

// The FFN's kind: a value different from the inherited one starts from that kind's defaults,
// not from the inherited FFN's fields (a PEER block's ReLU must not leak into a dense block).
void read_ffn_kind(const Field<FfnConfig>& plain, const json& v, FfnConfig& f,
                   const std::string& source, const std::string& where) {
  const FfnConfig::Kind inherited = f.kind;
  plain.read(v, f, source, where);
  if (f.kind == inherited) return;
  const FfnConfig::Kind kind = f.kind;
  f = FfnConfig{};
  f.kind = kind;
  if (kind == FfnConfig::Kind::kPeer) f.activation = Activation::kGELU;
}

}  // namespace

const FieldTable<FfnConfig>& ffn_config_fields() {
  static const FieldTable<FfnConfig> t = [] {
    using F = FfnConfig;
    FieldTable<F> t;
    t.add("kind", &F::kind, "FFN kind: `dense`, `moe` or `peer`");
    t.last().read = [plain = t.last()](const json& v, F& f, const std::string& source,
                                       const std::string& where) {
      read_ffn_kind(plain, v, f, source, where);
    };
    t.add("activation", &F::activation,
          "`swiglu` or `gelu` (exact erf form); peer: `gelu` (its default) or `relu`",
          [](Activation a, const F& f) -> std::optional<std::string> {
            const bool peer = f.kind == F::Kind::kPeer;
            if (peer ? a != Activation::kSwiGLU : a != Activation::kReLU) return std::nullopt;
            return peer ? "one of: gelu, relu" : "one of: swiglu, gelu";
          });
    t.add("d_ff", &F::d_ff,
          "hidden width; 0 = auto: 4·C for GELU, 8C/3 rounded up to 64 for SwiGLU",
          rule::at_least(0));
    t.add_group(
        "", &F::moe, moe_ffn_config_fields(), [](const F& f) { return f.kind == F::Kind::kMoe; },
        "`model.ffn` for `kind: \"moe\"` (details in `docs/MOE.md`; presets in `configs/moe/`)");
    t.add_group(
        "", &F::peer, peer_ffn_config_fields(), [](const F& f) { return f.kind == F::Kind::kPeer; },
        "`model.ffn` for `kind: \"peer\"` (`docs/PEER.md`; `configs/peer.json` puts it in the "
        "middle block)");
    return t;
  }();
  return t;
}

namespace {

// A key of model.ffn_overrides: a block index ("2"), a comma list ("0,3"), or a Python-style
// slice "start:stop[:step]" with the ends optional: "1::2" = every other block from 1, "1:" = all
// but the first, ":2" = the first two.
std::vector<int> parse_block_set(const std::string& key, int n_layers, const std::string& source) {
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
  // Well formed but naming a block the model lacks: say so, not "expected a block index".
  for (int l : out)
    MOE_CHECK(l < n_layers,
              "{}: field model.ffn_overrides.\"{}\": block {} does not exist (the model has {} "
              "block{}: 0..{})",
              source, key, l, n_layers, n_layers == 1 ? "" : "s", n_layers - 1);
  return out;
}

// model.ffn_overrides: {"<blocks>": {ffn fields}}, each read over a copy of model.ffn (so the
// fields not given inherit it), which is therefore read and checked first.
Field<ModelConfig> ffn_overrides_field() {
  Field<ModelConfig> f;
  f.path = "ffn_overrides";
  f.doc =
      "per-block FFN, e.g. `{\"0\": {\"d_ff\": 1024}}`, `{\"1::2\": {\"kind\": \"moe\"}}` (every "
      "other block; keys: index, list \"0,2\" or slice \"start:stop:step\"); fields not given "
      "inherit `ffn`";
  f.read = [](const json& v, ModelConfig& mc, const std::string& source, const std::string& where) {
    MOE_CHECK(v.is_object(), "{}: field {}: expected an object {{\"<block>\": {{ffn}}}}, got {}",
              source, where, json_excerpt(v));
    ffn_config_fields().check(mc.ffn, source, "model.ffn");
    for (auto& [key, ffn] : v.items()) {
      const std::vector<int> blocks = parse_block_set(key, mc.n_layers, source);
      FfnConfig fc = mc.ffn;
      ffn_config_fields().parse(ffn, fc, source, where + "." + key);
      for (int layer : blocks) {
        for (auto& [l, unused] : mc.ffn_overrides)
          MOE_CHECK(l != layer, "{}: field {}: block {} is given twice", source, where, layer);
        mc.ffn_overrides.push_back({layer, fc});
      }
    }
  };
  f.write = [](const ModelConfig& mc) {
    json ov = json::object();
    for (auto& [l, ffn] : mc.ffn_overrides)
      ov[std::to_string(l)] = ffn_config_fields().to_json(ffn);
    return ov;
  };
  f.show = [](const ModelConfig& mc) { return mc.ffn_overrides.empty() ? "{}" : "{...}"; };
  f.written = [](const ModelConfig& mc) { return !mc.ffn_overrides.empty(); };
  return f;
}

}  // namespace

const FieldTable<ModelConfig>& model_config_fields() {
  static const FieldTable<ModelConfig> t = [] {
    using M = ModelConfig;
    const auto positive = rule::at_least(1);
    const auto above0 = rule::above(0.f);
    FieldTable<M> t;
    t.section("`model`");
    t.add("vocab_size", &M::vocab_size, "vocabulary; set from the tokenizer for `bpe`", positive);
    t.add("d_model", &M::d_model, "model width C", positive);
    t.add("n_layers", &M::n_layers, "transformer blocks", positive);
    t.add("n_heads", &M::n_heads, "query heads", positive);
    t.add("n_kv_heads", &M::n_kv_heads,
          "key/value heads (grouped-query attention), a divisor of n_heads; 0 = n_heads",
          rule::at_least(0));
    t.add("head_dim", &M::head_dim,
          "per-head width (even: RoPE rotates pairs); 0 = d_model / n_heads", rule::at_least(0));
    t.add("max_seq_len", &M::max_seq_len, "longest context (RoPE table, KV cache)", positive);
    t.add("rope_theta", &M::rope_theta, "RoPE base θ: pair i turns by pos·θ^(−2i/head_dim)",
          above0);
    t.add("rope_style", &M::rope_style,
          "`half` (pairs (i, i+hd/2): NeoX, Qwen, OLMoE) or `interleaved` (pairs (2i, 2i+1): "
          "llama.cpp's `llama`, `deepseek`)");
    t.add("norm_eps", &M::norm_eps, "RMSNorm epsilon (every norm, q/k norms included)", above0);
    t.add("qk_norm", &M::qk_norm,
          "RMSNorm of q and k before RoPE: `none`, `row` (whole q / k row, OLMoE) or `head` "
          "(each head, one [head_dim] weight, Qwen3); false / true mean none / row");
    // Older configs and checkpoints wrote a boolean: false = none, true = row.
    t.last().read = [plain = t.last()](const json& v, M& m, const std::string& source,
                                       const std::string& where) {
      if (v.is_boolean()) {
        m.qk_norm = v.get<bool>() ? QkNorm::kRow : QkNorm::kNone;
        return;
      }
      plain.read(v, m, source, where);
    };
    t.add("qkv_bias", &M::qkv_bias, "biases on the q, k, v projections (Qwen2)");
    t.add("tie_embeddings", &M::tie_embeddings, "LM head shares the embedding matrix");
    t.add("init_std", &M::init_std, "normal init std; output projections get std/√(2·n_layers)",
          above0);
    t.add_group("ffn", &M::ffn, ffn_config_fields());
    t.add(ffn_overrides_field());
    return t;
  }();
  return t;
}

// ---------------------------------------------------------------------------------------------
// Resolution: the 0 = auto fields, and the rules that join several fields.

const FfnConfig& ModelConfig::ffn_for(int layer) const {
  for (auto& [l, f] : ffn_overrides)
    if (l == layer) return f;
  return ffn;
}

namespace {

void resolve_peer(PeerFfnConfig& p, const std::string& where) {
  const int S = int(std::lround(std::sqrt(double(p.num_experts))));
  MOE_CHECK(p.num_experts > 0 && int64_t(S) * S == p.num_experts,
            "config: field {}.num_experts: got {}, PEER needs a perfect square S² (S sub-keys "
            "per half), e.g. 16384 or 1048576",
            where, p.num_experts);
  if (p.top_k == 0) p.top_k = std::min(16, S);
  MOE_CHECK(p.top_k >= 1 && p.top_k <= S,
            "config: field {}.top_k: got {}, expected 1..S = {} (the top-k per half)", where,
            p.top_k, S);
}

void resolve_moe(MoeFfnConfig& m, int d_ff, const std::string& where) {
  using Kind = RouterConfig::Kind;
  if (m.granularity > 0) {
    // Krajewski et al.: E·G experts of width d_ff/G, each token to G·k_base of them, so the
    // active parameters stay those of the dense FFN (times k_base) whatever G is.
    MOE_CHECK(m.expansion > 0,
              "config: field {}.expansion: got {}, the fine-grained form (granularity > 0) needs "
              "an expansion rate >= 1",
              where, m.expansion);
    MOE_CHECK(d_ff % m.granularity == 0,
              "config: field {}.granularity: d_ff = {} is not divisible by G = {}", where, d_ff,
              m.granularity);
    MOE_CHECK(m.num_experts == 0 || m.num_experts == m.expansion * m.granularity,
              "config: field {}.num_experts: got {}, but expansion·granularity = {}; set one form",
              where, m.num_experts, m.expansion * m.granularity);
    m.num_experts = m.expansion * m.granularity;
    m.d_expert = d_ff / m.granularity;
    if (m.top_k == 0) m.top_k = m.granularity * m.k_base;
  }
  if (m.d_expert == 0) m.d_expert = d_ff;
  MOE_CHECK(m.num_experts >= 1,
            "config: field {}.num_experts: got {}, an MoE FFN needs at least 1 expert (or "
            "granularity + expansion)",
            where, m.num_experts);
  if (m.top_k == 0) m.top_k = m.router.kind == Kind::kGShard ? 2 : 1;
  MOE_CHECK(m.top_k <= m.num_experts,
            "config: field {}.top_k: got {}, expected 1..num_experts = {}", where, m.top_k,
            m.num_experts);
  if (m.router.kind == Kind::kGShard)
    MOE_CHECK(m.top_k == 2, "config: field {}.top_k: got {}, the gshard router is top-2", where,
              m.top_k);
  if (m.router.kind == Kind::kRelu) {
    // ReMoE is dropless: a token goes to every expert whose ReLU gate is positive.
    MOE_CHECK(m.capacity_factor == 0 && m.eval_capacity_factor == 0,
              "config: field {}.capacity_factor: got {} (eval {}), the relu router is dropless "
              "(expected 0)",
              where, m.capacity_factor, m.eval_capacity_factor);
  }
  if (m.router.kind == Kind::kExpertChoice) {
    // Here the capacity factor is the mean number of experts per token; default: top_k.
    if (m.capacity_factor == 0) m.capacity_factor = float(m.top_k);
    if (m.eval_capacity_factor == 0) m.eval_capacity_factor = m.capacity_factor;
  }
}

void resolve_ffn(FfnConfig& f, int d_model, const std::string& where) {
  if (f.d_ff == 0) {
    // GELU: the classic 4·C. SwiGLU has three matrices, so 2/3 of that width keeps the parameter
    // count equal (LLaMA's rule), rounded up to a multiple of 64 for the GEMMs. In 64 bits: a
    // d_model near 2^31 used to overflow here (undefined behaviour, then "d_ff = -64").
    const int64_t C = d_model;
    const int64_t d_ff = f.activation == Activation::kGELU ? 4 * C : (8 * C / 3 + 63) / 64 * 64;
    MOE_CHECK(d_ff <= std::numeric_limits<int>::max(),
              "config: field {}.d_ff: the default width for d_model = {} would be {}, more than "
              "{}; set a smaller model.d_model or an explicit {}.d_ff",
              where, d_model, d_ff, std::numeric_limits<int>::max(), where);
    f.d_ff = int(d_ff);
  }
  if (f.kind == FfnConfig::Kind::kPeer) resolve_peer(f.peer, where);
  if (f.kind == FfnConfig::Kind::kMoe) resolve_moe(f.moe, f.d_ff, where);
}

}  // namespace

void ModelConfig::resolve() {
  // The declared rules first: a config built in code is held to the same rules as one read
  // from JSON.
  model_config_fields().check(*this, "config", "model");
  for (auto& [l, f] : ffn_overrides)
    ffn_config_fields().check(f, "config", "model.ffn_overrides." + std::to_string(l));
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
  // The attention widths n_heads·head_dim are ints in the model; refuse what does not fit.
  MOE_CHECK(int64_t(n_heads) * head_dim <= std::numeric_limits<int>::max(),
            "config: field model.head_dim: n_heads = {} × head_dim = {} is more than {}", n_heads,
            head_dim, std::numeric_limits<int>::max());
  MOE_CHECK(head_dim > 0 && head_dim % 2 == 0,
            "config: field model.head_dim: got {}, expected a positive even number (RoPE rotates "
            "pairs)",
            head_dim);
  resolve_ffn(ffn, d_model, "model.ffn");
  for (auto& [l, f] : ffn_overrides) {
    MOE_CHECK(l >= 0 && l < n_layers,
              "config: field model.ffn_overrides: block {} does not exist (n_layers = {})", l,
              n_layers);
    resolve_ffn(f, d_model, "model.ffn_overrides." + std::to_string(l));
  }
}

}  // namespace moe
