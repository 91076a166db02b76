#include "moe/formats/tensor_names.h"

#include <fmt/format.h>

#include <array>
#include <cstring>
#include <string_view>

#include "moe/core/error.h"

namespace moe::formats {

namespace {

// Per-block names: ours after "layers.L." and GGUF's after "blk.L.".
constexpr std::array<std::pair<std::string_view, std::string_view>, 20> kBlockNames = {{
    {"attn_norm.weight", "attn_norm.weight"},
    {"attn.wq", "attn_q.weight"},
    {"attn.wk", "attn_k.weight"},
    {"attn.wv", "attn_v.weight"},
    {"attn.wo", "attn_output.weight"},
    {"attn.bq", "attn_q.bias"},
    {"attn.bk", "attn_k.bias"},
    {"attn.bv", "attn_v.bias"},
    {"attn.q_norm", "attn_q_norm.weight"},
    {"attn.k_norm", "attn_k_norm.weight"},
    {"ffn_norm.weight", "ffn_norm.weight"},
    {"ffn.router.weight", "ffn_gate_inp.weight"},
    {"ffn.experts.w_gate", "ffn_gate_exps.weight"},
    {"ffn.experts.w_up", "ffn_up_exps.weight"},
    {"ffn.experts.w_down", "ffn_down_exps.weight"},
    {"ffn.shared.w_gate", "ffn_gate_shexp.weight"},
    {"ffn.shared.w_up", "ffn_up_shexp.weight"},
    {"ffn.shared.w_down", "ffn_down_shexp.weight"},
    {"ffn.shared.gate", "ffn_gate_inp_shexp.weight"},
    {"ffn.w_gate", "ffn_gate.weight"},
}};
constexpr std::array<std::pair<std::string_view, std::string_view>, 2> kDenseTail = {{
    {"ffn.w_up", "ffn_up.weight"},
    {"ffn.w_down", "ffn_down.weight"},
}};

template <class F>
void for_each_block_name(F&& f) {
  for (const auto& p : kBlockNames) f(p);
  for (const auto& p : kDenseTail) f(p);
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelConfig& cfg) {
  using Shape = std::vector<int64_t>;
  std::vector<std::pair<std::string, Shape>> out;
  const int64_t C = cfg.d_model, V = cfg.vocab_size, hd = cfg.head_dim;
  const int64_t Dq = cfg.n_heads * hd, Dkv = cfg.n_kv_heads * hd;
  out.push_back({"embed.weight", {V, C}});
  for (int l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    out.push_back({p + "attn_norm.weight", {C}});
    out.push_back({p + "attn.wq", {Dq, C}});
    out.push_back({p + "attn.wk", {Dkv, C}});
    out.push_back({p + "attn.wv", {Dkv, C}});
    out.push_back({p + "attn.wo", {C, Dq}});
    if (cfg.qkv_bias) {
      out.push_back({p + "attn.bq", {Dq}});
      out.push_back({p + "attn.bk", {Dkv}});
      out.push_back({p + "attn.bv", {Dkv}});
    }
    if (cfg.qk_norm == QkNorm::kRow) {
      out.push_back({p + "attn.q_norm", {Dq}});
      out.push_back({p + "attn.k_norm", {Dkv}});
    } else if (cfg.qk_norm == QkNorm::kHead) {
      out.push_back({p + "attn.q_norm", {hd}});
      out.push_back({p + "attn.k_norm", {hd}});
    }
    out.push_back({p + "ffn_norm.weight", {C}});
    const FfnConfig& f = cfg.ffn_for(l);
    const bool glu = f.activation == Activation::kSwiGLU;
    if (f.kind == FfnConfig::Kind::kDense) {
      const int64_t H = f.d_ff;
      if (glu) out.push_back({p + "ffn.w_gate", {H, C}});
      out.push_back({p + "ffn.w_up", {H, C}});
      out.push_back({p + "ffn.w_down", {C, H}});
      continue;
    }
    MOE_CHECK(f.kind == FfnConfig::Kind::kMoe,
              "block {}: a PEER layer has no counterpart in GGUF or Hugging Face files", l);
    const MoeFfnConfig& m = f.moe;
    const int64_t E = m.num_experts, H = m.d_expert;
    out.push_back({p + "ffn.router.weight", {E, C}});
    if (m.router.kind == RouterConfig::Kind::kNoisyTopK)
      out.push_back({p + "ffn.router.w_noise", {E, C}});
    if (m.router.bias_balance) out.push_back({p + "ffn.router.bias", {E}});
    if (m.router.kind == RouterConfig::Kind::kRelu)
      out.push_back({p + "ffn.router.l1_exponent", {1}});
    if (glu) out.push_back({p + "ffn.experts.w_gate", {E, H, C}});
    out.push_back({p + "ffn.experts.w_up", {E, H, C}});
    out.push_back({p + "ffn.experts.w_down", {E, C, H}});
    if (m.shared_experts > 0) {
      const int64_t S = m.shared_experts, Hs = m.shared_d_expert > 0 ? m.shared_d_expert : H;
      if (glu) out.push_back({p + "ffn.shared.w_gate", {S, Hs, C}});
      out.push_back({p + "ffn.shared.w_up", {S, Hs, C}});
      out.push_back({p + "ffn.shared.w_down", {S, C, Hs}});
      if (m.shared_gate) out.push_back({p + "ffn.shared.gate", {C}});
    }
  }
  out.push_back({"norm.weight", {C}});
  if (!cfg.tie_embeddings) out.push_back({"head.weight", {V, C}});
  return out;
}

std::vector<std::string> parameter_names(const ModelConfig& cfg) {
  std::vector<std::string> names;
  for (auto& [n, s] : parameter_shapes(cfg)) names.push_back(n);
  return names;
}

std::string gguf_name_of(const std::string& our) {
  if (our == "embed.weight") return "token_embd.weight";
  if (our == "head.weight") return "output.weight";
  if (our == "norm.weight") return "output_norm.weight";
  if (our.starts_with("layers.")) {
    const std::size_t dot = our.find('.', 7);
    if (dot != std::string::npos) {
      const std::string_view layer(our.data() + 7, dot - 7), rest(our.data() + dot + 1);
      std::string found;
      for_each_block_name([&](const auto& p) {
        if (p.first == rest) found = fmt::format("blk.{}.{}", layer, p.second);
      });
      if (!found.empty()) return found;
    }
  }
  MOE_FAIL("parameter '{}' has no GGUF counterpart", our);
}

void permute_rope_rows(float* w, int64_t rows, int64_t cols, int hd, bool to_interleaved) {
  std::vector<float> tmp(std::size_t(hd) * cols);
  for (int64_t h0 = 0; h0 < rows; h0 += hd) {
    float* head = w + h0 * cols;
    std::memcpy(tmp.data(), head, tmp.size() * sizeof(float));
    for (int i = 0; i < hd / 2; ++i)
      for (int s = 0; s < 2; ++s) {
        const int64_t inter = 2 * i + s, half = s * (hd / 2) + i;
        const int64_t dst = to_interleaved ? inter : half, src = to_interleaved ? half : inter;
        std::memcpy(head + dst * cols, tmp.data() + src * cols, cols * sizeof(float));
      }
  }
}

bool is_rope_param(const std::string& our_name) {
  return our_name.ends_with(".attn.wq") || our_name.ends_with(".attn.wk") ||
         our_name.ends_with(".attn.bq") || our_name.ends_with(".attn.bk");
}

void permute_rope_param(const std::string& our_name, const std::vector<int64_t>& shape, float* w,
                        int hd, bool to_interleaved) {
  if (!is_rope_param(our_name)) return;
  permute_rope_rows(w, shape[0], shape.size() > 1 ? shape[1] : 1, hd, to_interleaved);
}

}  // namespace moe::formats
