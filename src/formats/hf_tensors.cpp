// Our parameters ↔ Hugging Face tensor names (transformers' modeling_*.py, and llama.cpp's
// gguf-py tensor_mapping.py for the same names). Matrices are [out, in] on both sides.
//   embed.weight                 model.embed_tokens.weight
//   layers.L.attn_norm.weight    model.layers.L.input_layernorm.weight
//   layers.L.attn.wq|wk|wv|wo    model.layers.L.self_attn.{q,k,v,o}_proj.weight
//   layers.L.attn.bq|bk|bv       model.layers.L.self_attn.{q,k,v}_proj.bias   (Qwen2-MoE)
//   layers.L.attn.q_norm|k_norm  model.layers.L.self_attn.{q,k}_norm.weight   (OLMoE, Qwen3)
//   layers.L.ffn_norm.weight     model.layers.L.post_attention_layernorm.weight
//   layers.L.ffn.w_gate|w_up|w_down          model.layers.L.mlp.{gate,up,down}_proj.weight
//   layers.L.ffn.router.weight   mlp.gate.weight (Mixtral: block_sparse_moe.gate.weight)
//   layers.L.ffn.experts.w_gate  mlp.experts.e.gate_proj.weight, e = 0..E−1, stacked
//                                (Mixtral: block_sparse_moe.experts.e.w1.weight; w_up = w3,
//                                w_down = w2)
//   layers.L.ffn.shared.*        mlp.shared_expert.*_proj.weight (Qwen2-MoE, one expert of
//                                width S·Hs) or mlp.shared_experts.*_proj.weight (DeepSeek)
//   layers.L.ffn.shared.gate     mlp.shared_expert_gate.weight [1, C] (Qwen2-MoE)
//   norm.weight                  model.norm.weight
//   head.weight                  lm_head.weight (untied only)
#include <fmt/format.h>

#include "hf_internal.h"
#include "moe/core/checked_math.h"
#include "moe/core/error.h"

namespace moe::formats::hf {

namespace {

using Shape = std::vector<int64_t>;

HfTensor copy(const std::string& ours, Shape shape, const std::string& theirs) {
  return {ours, shape, HfLayout::kCopy, {{theirs, shape}}};
}

// Expert e of `stack` ([E, …]) is HF tensor fmt(e).
HfTensor stack(const std::string& ours, Shape shape, const std::string& prefix,
               const std::string& suffix) {
  HfTensor t{ours, shape, HfLayout::kStack, {}};
  const Shape piece(shape.begin() + 1, shape.end());
  for (int64_t e = 0; e < shape[0]; ++e)
    t.pieces.push_back({fmt::format("{}{}{}", prefix, e, suffix), piece});
  return t;
}

void attention(std::vector<HfTensor>& out, const ModelConfig& m, int l) {
  const std::string p = fmt::format("layers.{}.", l), h = fmt::format("model.layers.{}.", l);
  const int64_t C = m.d_model, Dq = int64_t(m.n_heads) * m.head_dim,
                Dkv = int64_t(m.n_kv_heads) * m.head_dim;
  out.push_back(copy(p + "attn_norm.weight", {C}, h + "input_layernorm.weight"));
  out.push_back(copy(p + "attn.wq", {Dq, C}, h + "self_attn.q_proj.weight"));
  out.push_back(copy(p + "attn.wk", {Dkv, C}, h + "self_attn.k_proj.weight"));
  out.push_back(copy(p + "attn.wv", {Dkv, C}, h + "self_attn.v_proj.weight"));
  out.push_back(copy(p + "attn.wo", {C, Dq}, h + "self_attn.o_proj.weight"));
  if (qkv_bias_of(m)) {
    out.push_back(copy(attn_bias_name(l, 'q'), {Dq}, h + "self_attn.q_proj.bias"));
    out.push_back(copy(attn_bias_name(l, 'k'), {Dkv}, h + "self_attn.k_proj.bias"));
    out.push_back(copy(attn_bias_name(l, 'v'), {Dkv}, h + "self_attn.v_proj.bias"));
  }
  if (qk_norm_of(m) != QkNorm::kNone) {
    out.push_back(copy(p + "attn.q_norm", q_norm_shape(m), h + "self_attn.q_norm.weight"));
    out.push_back(copy(p + "attn.k_norm", k_norm_shape(m), h + "self_attn.k_norm.weight"));
  }
  out.push_back(copy(p + "ffn_norm.weight", {C}, h + "post_attention_layernorm.weight"));
}

void dense_ffn(std::vector<HfTensor>& out, const ModelConfig& m, const FfnConfig& f, int l) {
  const std::string p = fmt::format("layers.{}.ffn.", l),
                    h = fmt::format("model.layers.{}.mlp.", l);
  const int64_t C = m.d_model, H = f.d_ff;
  out.push_back(copy(p + "w_gate", {H, C}, h + "gate_proj.weight"));
  out.push_back(copy(p + "w_up", {H, C}, h + "up_proj.weight"));
  out.push_back(copy(p + "w_down", {C, H}, h + "down_proj.weight"));
}

void moe_ffn(std::vector<HfTensor>& out, const ModelConfig& m, const FfnConfig& f, int l,
             HfArch arch) {
  const std::string p = fmt::format("layers.{}.ffn.", l);
  const int64_t C = m.d_model, E = f.moe.num_experts, H = f.moe.d_expert;
  const bool mixtral = arch == HfArch::kMixtral;
  const std::string h = fmt::format("model.layers.{}.{}.", l, mixtral ? "block_sparse_moe" : "mlp");
  out.push_back(copy(p + "router.weight", {E, C}, h + "gate.weight"));
  const std::string ex = h + "experts.";
  out.push_back(
      stack(p + "experts.w_gate", {E, H, C}, ex, mixtral ? ".w1.weight" : ".gate_proj.weight"));
  out.push_back(
      stack(p + "experts.w_up", {E, H, C}, ex, mixtral ? ".w3.weight" : ".up_proj.weight"));
  out.push_back(
      stack(p + "experts.w_down", {E, C, H}, ex, mixtral ? ".w2.weight" : ".down_proj.weight"));
  const int64_t S = f.moe.shared_experts;
  if (S == 0) return;
  // Both classes keep the shared experts as one MLP of width S·Hs: its gate/up rows are our
  // [S, Hs, C] flattened; its down columns interleave ours (kSharedDown).
  const int64_t Hs = shared_width_of(f), SH = checked_mul(S, Hs, "shared expert width");
  const std::string sh = h + (arch == HfArch::kQwen2Moe ? "shared_expert." : "shared_experts.");
  out.push_back(
      {p + "shared.w_gate", {S, Hs, C}, HfLayout::kCopy, {{sh + "gate_proj.weight", {SH, C}}}});
  out.push_back(
      {p + "shared.w_up", {S, Hs, C}, HfLayout::kCopy, {{sh + "up_proj.weight", {SH, C}}}});
  out.push_back({p + "shared.w_down",
                 {S, C, Hs},
                 S == 1 ? HfLayout::kCopy : HfLayout::kSharedDown,
                 {{sh + "down_proj.weight", {C, SH}}}});
  if (shared_gate_of(f))
    out.push_back(
        {p + "shared.gate", {C}, HfLayout::kCopy, {{h + "shared_expert_gate.weight", {1, C}}}});
}

}  // namespace

std::vector<HfTensor> tensor_map(const ModelConfig& m, HfArch arch) {
  const int64_t V = m.vocab_size, C = m.d_model;
  checked_mul(V, C, "vocab_size × d_model");
  std::vector<HfTensor> out;
  out.push_back(copy("embed.weight", {V, C}, "model.embed_tokens.weight"));
  for (int l = 0; l < m.n_layers; ++l) {
    attention(out, m, l);
    const FfnConfig& f = m.ffn_for(l);
    if (f.kind == FfnConfig::Kind::kMoe)
      moe_ffn(out, m, f, l, arch);
    else
      dense_ffn(out, m, f, l);
  }
  out.push_back(copy("norm.weight", {C}, "model.norm.weight"));
  if (!m.tie_embeddings) out.push_back(copy("head.weight", {V, C}, "lm_head.weight"));
  return out;
}

void use_fused_experts(std::vector<HfTensor>& map,
                       const std::function<bool(const std::string&)>& has) {
  const auto fused = [&](const std::string& base) -> std::string {
    if (has(base)) return base;
    if (has(base + ".weight")) return base + ".weight";
    return "";
  };
  for (HfTensor& t : map) {
    if (t.layout != HfLayout::kStack || has(t.pieces[0].name)) continue;
    const std::size_t at = t.pieces[0].name.find("experts.0.");
    if (at == std::string::npos) continue;
    const std::string block = t.pieces[0].name.substr(0, at) + "experts.";
    const int64_t E = t.our_shape[0], A = t.our_shape[1], B = t.our_shape[2];
    const bool down = t.our_name.ends_with(".w_down");
    const std::string name = fused(block + (down ? "down_proj" : "gate_up_proj"));
    if (name.empty()) continue;
    if (down) {
      t = {t.our_name, t.our_shape, HfLayout::kCopy, {{name, {E, A, B}}}};
    } else {
      const int half = t.our_name.ends_with(".w_up") ? 1 : 0;
      t = {t.our_name, t.our_shape, HfLayout::kFusedHalf, {{name, {E, 2 * A, B}}}, half};
    }
  }
}

bool ignorable_hf_tensor(const std::string& name) {
  const std::string suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace moe::formats::hf
