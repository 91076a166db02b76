// The bridge between HF checkpoints and the model features HF classes need (see
// hf_internal.h): q/k/v biases, whole-row or per-head QK-norm, the RoPE style, the shared
// experts' width and sigmoid gate, the routed scaling factor.
#include "hf_internal.h"
#include "moe/core/error.h"

namespace moe::formats::hf {

QkNorm qk_norm_of(const ModelConfig& m) { return m.qk_norm; }

void set_qk_norm(ModelConfig& m, QkNorm q, const std::string&) { m.qk_norm = q; }

bool qkv_bias_of(const ModelConfig& m) { return m.qkv_bias; }

void set_qkv_bias(ModelConfig& m, bool on, const std::string&) { m.qkv_bias = on; }

bool rope_half_of(const ModelConfig& m) { return m.rope_style == RopeStyle::kHalf; }

int shared_width_of(const FfnConfig& f) {
  return f.moe.shared_d_expert > 0 ? f.moe.shared_d_expert : f.moe.d_expert;
}

void set_shared_width(FfnConfig& f, int hs, const std::string&) {
  f.moe.shared_d_expert = hs == f.moe.d_expert ? 0 : hs;
}

bool shared_gate_of(const FfnConfig& f) { return f.moe.shared_gate; }

void set_shared_gate(FfnConfig& f, bool on, const std::string&) { f.moe.shared_gate = on; }

float routed_scaling_of(const FfnConfig& f) { return f.moe.router.routed_scaling_factor; }

void set_routed_scaling(FfnConfig& f, float s, const std::string&) {
  f.moe.router.routed_scaling_factor = s;
}

std::string attn_bias_name(int layer, char which) {
  return "layers." + std::to_string(layer) + ".attn.b" + std::string(1, which);
}

std::vector<int64_t> q_norm_shape(const ModelConfig& m) {
  if (m.qk_norm == QkNorm::kHead) return {m.head_dim};
  return {int64_t(m.n_heads) * m.head_dim};
}

std::vector<int64_t> k_norm_shape(const ModelConfig& m) {
  if (m.qk_norm == QkNorm::kHead) return {m.head_dim};
  return {int64_t(m.n_kv_heads) * m.head_dim};
}

}  // namespace moe::formats::hf
