// The bridge between HF checkpoints and the model features of branch wt-feat (see
// hf_internal.h). Today's model: whole-row QK-norm or none, no attention biases, rotate-half
// RoPE, shared experts as wide as the routed ones and ungated, no routed scaling.
#include "hf_internal.h"
#include "moe/core/error.h"

namespace moe::formats::hf {

namespace {

[[noreturn]] void needs_feature(const std::string& where, const std::string& what) {
  MOE_FAIL("{}: needs model feature {}, which this build does not have yet", where, what);
}

}  // namespace

QkNorm qk_norm_of(const ModelConfig& m) { return m.qk_norm ? QkNorm::kRow : QkNorm::kNone; }

void set_qk_norm(ModelConfig& m, QkNorm q, const std::string& where) {
  if (q == QkNorm::kHead) needs_feature(where, "model.qk_norm = \"head\" (per-head QK-norm)");
  m.qk_norm = q == QkNorm::kRow;
}

bool qkv_bias_of(const ModelConfig&) { return false; }

void set_qkv_bias(ModelConfig&, bool on, const std::string& where) {
  if (on) needs_feature(where, "model.qkv_bias (q/k/v projection biases)");
}

bool rope_half_of(const ModelConfig&) { return true; }

int shared_width_of(const FfnConfig& f) { return f.moe.d_expert; }

void set_shared_width(FfnConfig& f, int hs, const std::string& where) {
  if (hs != f.moe.d_expert)
    needs_feature(where, "ffn.shared_d_expert (shared experts of width " + std::to_string(hs) +
                             " beside routed experts of width " + std::to_string(f.moe.d_expert) +
                             ")");
}

bool shared_gate_of(const FfnConfig&) { return false; }

void set_shared_gate(FfnConfig&, bool on, const std::string& where) {
  if (on) needs_feature(where, "ffn.shared_gate (sigmoid gate on the shared expert)");
}

float routed_scaling_of(const FfnConfig&) { return 1.f; }

void set_routed_scaling(FfnConfig&, float s, const std::string& where) {
  if (s != 1.f) needs_feature(where, "ffn.router.routed_scaling_factor");
}

std::string attn_bias_name(int layer, char which) {
  return "layers." + std::to_string(layer) + ".attn.b" + std::string(1, which);
}

std::vector<int64_t> q_norm_shape(const ModelConfig& m) {
  if (qk_norm_of(m) == QkNorm::kHead) return {m.head_dim};
  return {int64_t(m.n_heads) * m.head_dim};
}

std::vector<int64_t> k_norm_shape(const ModelConfig& m) {
  if (qk_norm_of(m) == QkNorm::kHead) return {m.head_dim};
  return {int64_t(m.n_kv_heads) * m.head_dim};
}

}  // namespace moe::formats::hf
