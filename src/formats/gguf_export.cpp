// Export to GGUF: choose the llama.cpp architecture that computes our model, write its
// hyperparameters, the vocabulary and the tensors (one at a time).
#include <fmt/format.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "moe/core/error.h"
#include "moe/formats/gguf_model.h"
#include "moe/formats/gguf_tokenizer.h"
#include "moe/formats/tensor_names.h"

namespace moe::formats {

namespace {

[[noreturn]] void refuse(const std::string& what) {
  MOE_FAIL("cannot export to GGUF: {} (no llama.cpp architecture computes it)", what);
}

// The features no llama.cpp architecture computes, whatever the rest of the model is.
void refuse_unexportable_ffn(const FfnConfig& f, int layer) {
  const std::string at = fmt::format("block {}", layer);
  if (f.kind == FfnConfig::Kind::kPeer) refuse(at + ": a PEER layer");
  if (f.activation != Activation::kSwiGLU)
    refuse(at + ": a non-SwiGLU feed-forward (model.ffn.activation)");
  if (f.kind != FfnConfig::Kind::kMoe) return;
  const MoeFfnConfig& m = f.moe;
  using K = RouterConfig::Kind;
  if (m.router.kind == K::kExpertChoice) refuse(at + ": expert-choice routing");
  if (m.router.kind == K::kRelu) refuse(at + ": ReLU routing (ReMoE)");
  if (m.router.kind == K::kNoisyTopK) refuse(at + ": noisy top-k routing (learned noise)");
  if (m.router.kind == K::kGShard) refuse(at + ": GShard routing (random second expert)");
  if (m.router.score == RouterConfig::Score::kSigmoid) refuse(at + ": sigmoid router scores");
  if (m.router.bias_balance) refuse(at + ": the DeepSeek-V3 selection bias (router.bias_balance)");
  if (m.eval_capacity_factor > 0)
    refuse(at + ": an expert capacity at inference (model.ffn.eval_capacity_factor)");
}

bool same_moe_shape(const MoeFfnConfig& a, const MoeFfnConfig& b) {
  return a.num_experts == b.num_experts && a.top_k == b.top_k && a.d_expert == b.d_expert &&
         a.shared_experts == b.shared_experts && a.shared_d_expert == b.shared_d_expert &&
         a.shared_gate == b.shared_gate && a.router.normalize == b.router.normalize &&
         a.router.routed_scaling_factor == b.router.routed_scaling_factor &&
         a.router.n_group == b.router.n_group && a.router.topk_group == b.router.topk_group;
}

struct Layout {
  int leading_dense = 0;           // blocks [0, leading_dense) are dense, the rest MoE
  const FfnConfig* moe = nullptr;  // the MoE blocks' FFN (all alike), or null
  const FfnConfig* dense = nullptr;
};

Layout layout_of(const ModelConfig& c) {
  Layout lo;
  for (int l = 0; l < c.n_layers; ++l) {
    const FfnConfig& f = c.ffn_for(l);
    refuse_unexportable_ffn(f, l);
    if (f.kind == FfnConfig::Kind::kDense) {
      if (lo.moe) refuse(fmt::format("block {} is dense after MoE blocks", l));
      if (lo.dense && lo.dense->d_ff != f.d_ff) refuse("dense blocks of different widths");
      lo.dense = &f;
      ++lo.leading_dense;
    } else {
      if (lo.moe && !same_moe_shape(lo.moe->moe, f.moe)) refuse("MoE blocks that differ");
      lo.moe = &f;
    }
  }
  return lo;
}

}  // namespace

std::string gguf_architecture_for(const ModelConfig& c) {
  const Layout lo = layout_of(c);
  using Q = QkNorm;
  const bool half = c.rope_style == RopeStyle::kHalf;
  if (!lo.moe) {  // dense
    if (c.qk_norm == Q::kNone) return "llama";
    if (c.qk_norm == Q::kHead && half && !c.qkv_bias) return "qwen3";
    refuse("a dense model with whole-row QK-norm (or QK-norm with interleaved RoPE or biases)");
  }
  const MoeFfnConfig& m = lo.moe->moe;
  const bool plain = !m.router.normalize;
  const bool scaled = m.router.routed_scaling_factor != 1.f;
  if (lo.leading_dense > 0 || (m.shared_experts > 0 && !m.shared_gate)) {
    if (c.qk_norm != Q::kNone || c.qkv_bias || !plain || m.shared_gate)
      refuse(
          "leading dense blocks or ungated shared experts need the deepseek layout: plain "
          "top-k, no QK-norm, no q/k/v biases");
    if (m.shared_experts > 0) {
      const int64_t Hs = m.shared_d_expert > 0 ? m.shared_d_expert : m.d_expert;
      if ((int64_t(m.shared_experts) * Hs) % m.d_expert != 0)
        refuse("shared experts whose total width is not a multiple of the expert width");
    } else {
      refuse("the deepseek layout needs shared experts");
    }
    return "deepseek";
  }
  if (scaled) refuse("model.ffn.router.routed_scaling_factor without the deepseek layout");
  if (m.shared_experts > 0) {  // gated
    if (m.shared_experts != 1 || !plain || c.qk_norm != Q::kNone || !half)
      refuse(
          "a gated shared expert needs the qwen2moe layout: one shared expert, plain top-k, "
          "no QK-norm, rotate-half RoPE");
    return "qwen2moe";
  }
  if (c.qk_norm == Q::kNone && !plain) return "llama";
  if (c.qk_norm == Q::kRow && plain && half && !c.qkv_bias) return "olmoe";
  if (c.qk_norm == Q::kHead && !plain && half && !c.qkv_bias) return "qwen3moe";
  refuse(fmt::format("this combination of QK-norm ({}) and top-k weights ({})",
                     c.qk_norm == Q::kNone  ? "none"
                     : c.qk_norm == Q::kRow ? "row"
                                            : "head",
                     plain ? "plain" : "renormalised"));
}

void write_gguf_model(const ModelReader& src, const data::Tokenizer& tok, GgmlType dtype,
                      const std::string& path) {
  MOE_CHECK(dtype == GgmlType::kF32 || dtype == GgmlType::kF16 || dtype == GgmlType::kBF16 ||
                dtype == GgmlType::kQ8_0,
            "--dtype {}: GGUF export writes f32, f16, bf16 or q8_0", ggml_type_name(dtype));
  const ModelConfig& c = src.config();
  const std::string a = gguf_architecture_for(c);
  const Layout lo = layout_of(c);
  MOE_CHECK(tok.vocab_size() == c.vocab_size,
            "cannot export to GGUF: the tokenizer has {} tokens but the model's vocabulary is {}",
            tok.vocab_size(), c.vocab_size);
  GgufWriter w;
  w.add_string("general.architecture", a);
  w.add_string("general.name", "moe.cpp export");
  w.add_u32(a + ".context_length", uint32_t(c.max_seq_len));
  w.add_u32(a + ".embedding_length", uint32_t(c.d_model));
  w.add_u32(a + ".block_count", uint32_t(c.n_layers));
  w.add_u32(a + ".attention.head_count", uint32_t(c.n_heads));
  w.add_u32(a + ".attention.head_count_kv", uint32_t(c.n_kv_heads));
  w.add_u32(a + ".attention.key_length", uint32_t(c.head_dim));
  w.add_u32(a + ".attention.value_length", uint32_t(c.head_dim));
  w.add_u32(a + ".rope.dimension_count", uint32_t(c.head_dim));
  w.add_f32(a + ".rope.freq_base", c.rope_theta);
  w.add_f32(a + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  if (lo.moe) {
    const MoeFfnConfig& m = lo.moe->moe;
    w.add_u32(a + ".expert_count", uint32_t(m.num_experts));
    w.add_u32(a + ".expert_used_count", uint32_t(m.top_k));
    w.add_u32(a + ".feed_forward_length", uint32_t(lo.dense ? lo.dense->d_ff : m.d_expert));
    w.add_u32(a + ".expert_feed_forward_length", uint32_t(m.d_expert));
    if (m.router.n_group > 1) {  // llama.cpp routes by groups for any architecture
      w.add_u32(a + ".expert_group_count", uint32_t(m.router.n_group));
      w.add_u32(a + ".expert_group_used_count", uint32_t(m.router.topk_group));
    }
    const int64_t Hs = m.shared_d_expert > 0 ? m.shared_d_expert : m.d_expert;
    if (a == "qwen2moe") w.add_u32(a + ".expert_shared_feed_forward_length", uint32_t(Hs));
    if (a == "deepseek") {
      w.add_u32(a + ".leading_dense_block_count", uint32_t(lo.leading_dense));
      w.add_u32(a + ".expert_shared_count", uint32_t(m.shared_experts * Hs / m.d_expert));
      w.add_f32(a + ".expert_weights_scale", m.router.routed_scaling_factor);
    }
  } else {
    w.add_u32(a + ".feed_forward_length", uint32_t(lo.dense->d_ff));
  }
  // Our exact config: llama.cpp ignores the key; our import restores the model from it.
  {
    nlohmann::json j = model_config_fields().to_json(c);
    w.add_string("moe.config", j.dump());
  }
  write_vocab_to_gguf(tok, w);

  const bool permute = (a == "llama" || a == "deepseek") && c.rope_style == RopeStyle::kHalf;
  for (const auto& param : parameter_shapes(c)) {
    // Named references, not a structured binding: the lambda below captures them, which clang
    // before 16 (the fuzz build's compiler) does not allow for bindings.
    const std::string& name = param.first;
    const std::vector<int64_t>& shape = param.second;
    // Matrices take the chosen type; vectors (norms, biases, the shared gate) and the router
    // stay F32, as llama.cpp's converter keeps them. Q8_0 needs rows of a multiple of 32.
    const int64_t row = shape.back();
    GgmlType t = dtype;
    if (shape.size() < 2 || name.ends_with("router.weight")) t = GgmlType::kF32;
    if (t == GgmlType::kQ8_0 && row % 32 != 0) t = GgmlType::kF16;
    std::vector<int64_t> ne(shape.rbegin(), shape.rend());
    // One shared MLP [S·Hs] in the file for our S shared experts.
    const bool stack_shared = name.find(".ffn.shared.w_") != std::string::npos && shape[0] > 1;
    if (stack_shared) {
      ne.pop_back();
      if (name.ends_with("w_down"))
        ne[0] *= shape[0];
      else
        ne[1] *= shape[0];
    } else {
      if (name.find(".ffn.shared.w_") != std::string::npos) ne.pop_back();  // [1, Hs, C]
    }
    const ModelReader* r = &src;
    const int hd = c.head_dim;
    w.add_tensor(gguf_name_of(name), t, ne, [r, name, shape, t, permute, hd](uint8_t* dst) {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      std::vector<float> v(std::size_t(n), 0.f);
      r->read(name, shape, v.data());
      if (permute) permute_rope_param(name, shape, v.data(), hd, /*to_interleaved=*/true);
      if (name.ends_with(".ffn.shared.w_down") && shape[0] > 1) {
        // [S, C, Hs] → [C, S·Hs]: row c holds every shared expert's row c, side by side.
        const int64_t S = shape[0], C = shape[1], Hs = shape[2];
        std::vector<float> o(v.size());
        for (int64_t s = 0; s < S; ++s)
          for (int64_t ci = 0; ci < C; ++ci)
            std::memcpy(&o[(ci * S + s) * Hs], &v[(s * C + ci) * Hs], Hs * sizeof(float));
        v.swap(o);
      }
      quantize(t, v.data(), dst, n);
    });
  }
  // olmoe and qwen2moe have no tied form in llama.cpp: a tied model writes its embedding again as
  // the head (our import of our own export ties it back, from moe.config).
  if (c.tie_embeddings && (a == "olmoe" || a == "qwen2moe")) {
    const ModelReader* r = &src;
    const std::vector<int64_t> shape = {c.vocab_size, c.d_model};
    GgmlType t = dtype;
    if (t == GgmlType::kQ8_0 && c.d_model % 32 != 0) t = GgmlType::kF16;
    w.add_tensor("output.weight", t, {c.d_model, c.vocab_size}, [r, shape, t](uint8_t* dst) {
      std::vector<float> v(std::size_t(shape[0] * shape[1]));
      r->read("embed.weight", shape, v.data());
      quantize(t, v.data(), dst, int64_t(v.size()));
    });
  }
  w.write(path);
}

}  // namespace moe::formats
