#include "moe/scaling/accounting.h"

#include "moe/core/error.h"

namespace moe {

ModelCount count_model(const ModelConfig& cfg, int seq_len) {
  ModelConfig m = cfg;
  m.resolve();
  ModelCount c;
  const int64_t C = m.d_model, V = m.vocab_size, L = m.n_layers;
  const int64_t Dq = int64_t(m.n_heads) * m.head_dim, Dkv = int64_t(m.n_kv_heads) * m.head_dim;
  c.embedding = V * C;
  c.head = m.tie_embeddings ? 0 : V * C;
  c.attention = L * (Dq * C + 2 * Dkv * C + C * Dq);
  c.norms = L * 2 * C + C + (m.qk_norm ? L * (Dq + Dkv) : 0);
  for (int l = 0; l < L; ++l) {
    const FfnConfig& f = m.ffn_for(l);
    MOE_CHECK(f.kind == "dense", "accounting: ffn kind '{}' is not known", f.kind);
    const int64_t mats = f.activation == Activation::kSwiGLU ? 3 : 2;
    c.ffn += mats * C * f.d_ff;
    c.ffn_active += mats * C * f.d_ff;
  }
  c.total = c.embedding + c.head + c.attention + c.norms + c.ffn;
  c.active = c.total - c.ffn + c.ffn_active;
  // Matmul parameters a token uses: attention, active FFN, the LM head (the tied embedding
  // matrix is a matmul when it acts as the head; the input lookup is not).
  const double matmul = double(c.attention + c.ffn_active + V * C);
  c.flops_matmul_fwd = 2 * matmul;
  c.flops_attention_fwd = double(L) * 2 * 2 * double(Dq) * (seq_len + 1) / 2.0;
  c.flops_fwd = c.flops_matmul_fwd + c.flops_attention_fwd;
  c.flops_train = 3 * c.flops_fwd;
  return c;
}

}  // namespace moe
