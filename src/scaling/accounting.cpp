#include "moe/scaling/accounting.h"

#include <cmath>

#include "moe/core/checked_math.h"
#include "moe/core/error.h"

namespace moe {

namespace {

// Parameter counts are int64: a config can ask for more (d_model near 2^31 with a million layers
// used to print negative counts, the signed overflow being undefined behaviour). Every product
// and sum below is checked; what does not fit is refused naming the fields that drive the size.
struct Checked {
  const ModelConfig& m;
  [[noreturn]] void refuse() const {
    MOE_FAIL(
        "config: the model has more than 2^63 - 1 parameters (model.d_model = {}, n_layers = {}, "
        "vocab_size = {}, n_heads = {}, head_dim = {}, ffn.d_ff = {}): counts do not fit in 64 "
        "bits",
        m.d_model, m.n_layers, m.vocab_size, m.n_heads, m.head_dim, m.ffn.d_ff);
  }
  int64_t mul(int64_t a, int64_t b) const {
    int64_t r = 0;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) refuse();
    return r;
  }
  int64_t mul(int64_t a, int64_t b, int64_t c) const { return mul(mul(a, b), c); }
  int64_t add(int64_t a, int64_t b) const {
    int64_t r = 0;
    if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) refuse();
    return r;
  }
  int64_t add(int64_t a, int64_t b, int64_t c) const { return add(add(a, b), c); }
};

}  // namespace

ModelCount count_model(const ModelConfig& cfg, int seq_len) {
  ModelConfig m = cfg;
  m.resolve();
  const Checked k{m};
  ModelCount c;
  double ffn_matmul_active = 0;  // FFN matmul parameters a token uses (dense or experts)
  const int64_t C = m.d_model, V = m.vocab_size, L = m.n_layers;
  const int64_t Dq = int64_t(m.n_heads) * m.head_dim, Dkv = int64_t(m.n_kv_heads) * m.head_dim;
  c.embedding = k.mul(V, C);
  c.head = m.tie_embeddings ? 0 : c.embedding;
  // Dq, Dkv and C are ints (resolve checks n_heads·head_dim), so the sums below fit before L.
  c.attention = k.mul(L, k.add(k.mul(2, Dq, C), k.mul(2, Dkv, C), m.qkv_bias ? Dq + 2 * Dkv : 0));
  const int64_t qk_norm = m.qk_norm == QkNorm::kRow    ? Dq + Dkv
                          : m.qk_norm == QkNorm::kHead ? 2 * int64_t(m.head_dim)
                                                       : 0;
  c.norms = k.add(k.mul(L, 2 * C), C, k.mul(L, qk_norm));
  double router_flop_params = 0;  // Σ over MoE layers of C·E
  double peer_retrieval_fwd = 0;  // Σ over PEER layers of retrieval FLOPs per token
  for (int l = 0; l < L; ++l) {
    const FfnConfig& f = m.ffn_for(l);
    const int64_t mats = f.activation == Activation::kSwiGLU ? 3 : 2;
    using Kind = FfnConfig::Kind;
    if (f.kind == Kind::kDense) {
      const int64_t w = k.mul(mats, C, f.d_ff);
      c.ffn = k.add(c.ffn, w);
      c.ffn_active = k.add(c.ffn_active, w);
      ffn_matmul_active += double(w);
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
      const int64_t fixed = k.add(k.mul(D, C), D + norm, k.mul(S, p.d_key));
      const int64_t experts = k.mul(2, E, C);
      c.ffn = k.add(c.ffn, fixed, experts);
      c.ffn_active = k.add(c.ffn_active, fixed, k.mul(2 * int64_t(p.heads), p.top_k, C));
      c.experts = k.add(c.experts, experts);
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
        k.add(k.mul(E, C, mo.router.kind == Router::kNoisyTopK ? 2 : 1),
              k.add(mo.router.bias_balance ? E : 0, mo.router.kind == Router::kRelu ? 1 : 0));
    const int64_t expert = k.mul(mats, C, H);
    // Shared experts: their own width, and Qwen2-MoE's sigmoid gate [C].
    const int64_t shared =
        k.add(k.mul(k.mul(S, mats), C, mo.shared_d_expert ? mo.shared_d_expert : H),
              mo.shared_gate ? C : 0);
    const int64_t experts = k.mul(E, expert);
    // Experts a token uses: k for token choice; on average capacity_factor for expert choice;
    // relu (ReMoE): its target k, which its L1 schedule holds the mean at (docs/MOE.md). Its
    // router costs what top-k's does (one [E, C] product; ReLU for softmax + top-k).
    const double per_token =
        mo.router.kind == Router::kExpertChoice ? mo.capacity_factor : mo.top_k;
    // per_token ≤ E (top_k and the capacity factor are bounded by the expert count).
    const double used = std::round(per_token * double(expert));
    if (!(used < 9.2e18)) k.refuse();
    c.router = k.add(c.router, router);
    c.experts = k.add(c.experts, experts);
    c.shared = k.add(c.shared, shared);
    c.ffn = k.add(c.ffn, k.add(router, experts, shared));
    c.ffn_active = k.add(c.ffn_active, k.add(router, int64_t(used), shared));
    router_flop_params += double(E) * C;
    ffn_matmul_active += per_token * expert + double(shared);
  }
  c.total = k.add(k.add(c.embedding, c.head, c.attention), c.norms, c.ffn);
  c.active = k.add(c.total - c.ffn, c.ffn_active);
  // Matmul parameters a token uses: attention, the FFN weights it passes through (router
  // excluded: it is counted with its own constant), and the LM head (the tied embedding matrix
  // is a matmul when it acts as the head; the input lookup is not).
  const double matmul = double(c.attention) + ffn_matmul_active + double(c.embedding);
  c.flops_matmul_fwd = 2 * matmul + 2 * router_flop_params + peer_retrieval_fwd;
  c.flops_attention_fwd = double(L) * 2 * 2 * double(Dq) * (seq_len + 1) / 2.0;
  c.flops_fwd = c.flops_matmul_fwd + c.flops_attention_fwd;
  c.flops_train =
      6 * matmul + 14 * router_flop_params + 3 * peer_retrieval_fwd + 3 * c.flops_attention_fwd;
  return c;
}

}  // namespace moe
