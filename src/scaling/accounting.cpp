#include "moe/scaling/accounting.h"

#include <cmath>

#include "moe/core/error.h"

namespace moe {

ModelCount count_model(const ModelConfig& cfg, int seq_len) {
  ModelConfig m = cfg;
  m.resolve();
  ModelCount c;
  double ffn_matmul_active = 0;  // FFN matmul parameters a token uses (dense or experts)
  const int64_t C = m.d_model, V = m.vocab_size, L = m.n_layers;
  const int64_t Dq = int64_t(m.n_heads) * m.head_dim, Dkv = int64_t(m.n_kv_heads) * m.head_dim;
  c.embedding = V * C;
  c.head = m.tie_embeddings ? 0 : V * C;
  c.attention = L * (Dq * C + 2 * Dkv * C + C * Dq + (m.qkv_bias ? Dq + 2 * Dkv : 0));
  const int64_t qk_norm = m.qk_norm == QkNorm::kRow    ? Dq + Dkv
                          : m.qk_norm == QkNorm::kHead ? 2 * int64_t(m.head_dim)
                                                       : 0;
  c.norms = L * 2 * C + C + L * qk_norm;
  double router_flop_params = 0;  // Σ over MoE layers of C·E
  double peer_retrieval_fwd = 0;  // Σ over PEER layers of retrieval FLOPs per token
  for (int l = 0; l < L; ++l) {
    const FfnConfig& f = m.ffn_for(l);
    const int64_t mats = f.activation == Activation::kSwiGLU ? 3 : 2;
    using Kind = FfnConfig::Kind;
    if (f.kind == Kind::kDense) {
      c.ffn += mats * C * f.d_ff;
      c.ffn_active += mats * C * f.d_ff;
      ffn_matmul_active += double(mats * C * f.d_ff);
      continue;
    }
    if (f.kind == Kind::kPeer) {
      // Query network (+ norm affine and batch-norm running statistics), shared sub-keys,
      // expert tables u, v. Per token: the query network and keys all, 2·h·k·C expert weights.
      const PeerFfnConfig& p = f.peer;
      using QueryNorm = PeerFfnConfig::QueryNorm;
      const int64_t D = int64_t(p.heads) * p.d_key, E = p.num_experts;
      const int64_t S = std::llround(std::sqrt(double(E)));
      const int64_t norm = p.query_norm == QueryNorm::kBatchNorm   ? 4 * D
                           : p.query_norm == QueryNorm::kLayerNorm ? 2 * D
                                                                   : 0;
      const int64_t fixed = D * C + D + norm + S * p.d_key;
      c.ffn += fixed + 2 * E * C;
      c.ffn_active += fixed + 2 * int64_t(p.heads) * p.top_k * C;
      c.experts += 2 * E * C;
      ffn_matmul_active += 2.0 * p.heads * p.top_k * C;
      // Retrieval (REFERENCE §3): query network C·h·dk and sub-key scores h·S·dk multiply-adds.
      peer_retrieval_fwd += 2.0 * (double(C) * D + double(p.heads) * S * p.d_key);
      continue;
    }
    MOE_CHECK(f.kind == Kind::kMoe, "accounting: ffn kind '{}' is not known", enum_name(f.kind));
    const MoeFfnConfig& mo = f.moe;
    using Router = RouterConfig::Kind;
    const int64_t E = mo.num_experts, H = mo.d_expert, S = mo.shared_experts;
    const int64_t router =
        E * C * (mo.router.kind == Router::kNoisyTopK ? 2 : 1) + (mo.router.bias_balance ? E : 0);
    const int64_t expert = mats * C * H;
    // Shared experts: their own width, and Qwen2-MoE's sigmoid gate [C].
    const int64_t shared =
        S * mats * C * (mo.shared_d_expert ? mo.shared_d_expert : H) + (mo.shared_gate ? C : 0);
    // Experts a token uses: k for token choice; on average capacity_factor for expert choice.
    const double per_token =
        mo.router.kind == Router::kExpertChoice ? mo.capacity_factor : mo.top_k;
    c.router += router;
    c.experts += E * expert;
    c.shared += shared;
    c.ffn += router + E * expert + shared;
    c.ffn_active += router + int64_t(std::llround(per_token * expert)) + shared;
    router_flop_params += double(E) * C;
    ffn_matmul_active += per_token * expert + double(shared);
  }
  c.total = c.embedding + c.head + c.attention + c.norms + c.ffn;
  c.active = c.total - c.ffn + c.ffn_active;
  // Matmul parameters a token uses: attention, the FFN weights it passes through (router
  // excluded: it is counted with its own constant), and the LM head (the tied embedding matrix
  // is a matmul when it acts as the head; the input lookup is not).
  const double matmul = double(c.attention) + ffn_matmul_active + double(V * C);
  c.flops_matmul_fwd = 2 * matmul + 2 * router_flop_params + peer_retrieval_fwd;
  c.flops_attention_fwd = double(L) * 2 * 2 * double(Dq) * (seq_len + 1) / 2.0;
  c.flops_fwd = c.flops_matmul_fwd + c.flops_attention_fwd;
  c.flops_train =
      6 * matmul + 14 * router_flop_params + 3 * peer_retrieval_fwd + 3 * c.flops_attention_fwd;
  return c;
}

}  // namespace moe
