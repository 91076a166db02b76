// Decoder-only transformer LM with hand-written forward and backward (llm.c style):
//   tokens → embed → L × [ x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)) ] → RMSNorm → head → CE
// Attention (llama.cpp's order): q, k, v = x·Wᵀ (+ b: qkv_bias) → optional RMSNorm of q and k
// (qk_norm: over the whole row, or per head with one [hd] weight) → RoPE (rotate-half or
// interleaved pairs) → causal softmax(q·kᵀ/√hd)·v with grouped-query heads (q head h reads kv
// head h / (Hq/Hkv)). FFN: any kind behind ffn/feed_forward.h, chosen per block.
// Checkpoint names: see docs/FORMATS.md. All activations live in one arena sized at
// construction for max_batch × max_seq tokens; nothing is allocated during a step.
// Precision (train.precision, docs/KERNELS.md): f32 unless set_precision(kBf16) is called, after
// which the q/k/v/o projections, attention's QKᵀ and P·V (kernels/attention_bf16.h, which keeps
// softmax stats instead of the probabilities) and each FFN's products, as far as its kind has a
// bf16 path, take bf16 operands with f32 accumulation; the head, norms, softmax, losses and all
// gradients' accumulation stay f32.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "moe/core/arena.h"
#include "moe/core/params.h"
#include "moe/dist/communicator.h"
#include "moe/ffn/feed_forward.h"
#include "moe/model/config.h"
#include "moe/nn/rope.h"

namespace moe {

struct KVCache {
  int max_seq = 0;
  std::vector<float> k, v;  // [L, max_seq, Hkv·hd] each
};

class Transformer {
 public:
  // `comm`: the ranks this model trains with (data parallel statistics, expert-parallel shards:
  // MoE and PEER layers talk over it, checkpoints gather shards over it). A model that runs or
  // trains alone takes the first form.
  Transformer(const ModelConfig& cfg, int max_batch, int max_seq);
  Transformer(const ModelConfig& cfg, int max_batch, int max_seq, Communicator& comm);
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return params_; }
  Communicator& communicator() const { return comm_; }
  // The activation arenas: every precision's, and f32 attention's saved probabilities (absent
  // in bf16).
  std::size_t activation_bytes() const { return acts_.capacity() + attn_f32_.capacity(); }

  // tokens, targets [B·T] (targets may be null: logits only). Returns the mean loss (nats) or 0.
  // grad_scale > 0 prepares backward: dL/dlogits is scaled by grad_scale/(B·T) (1/grad_accum
  // for accumulation) and written over the logits.
  double forward(const int32_t* tokens, const int32_t* targets, int B, int T, const StepInfo& info,
                 float grad_scale);
  // Accumulates parameter gradients for the last forward (which must have had grad_scale > 0).
  void backward();
  const float* logits() const { return logits_; }        // [B·T, V] after a forward without grad
  const float* token_losses() const { return losses_; }  // [B·T] nats
  // Sum of the FFNs' auxiliary losses in the last forward.
  double aux_loss() const;

  // Incremental decoding with a KV cache: feeds `token` at position `pos` and returns logits [V].
  // Needs a model built with max_batch = max_seq = 1 or more.
  KVCache make_cache(int max_seq) const;
  const float* decode_step(int32_t token, int pos, KVCache& cache);

  const std::vector<std::unique_ptr<FeedForward>>& ffns() const { return ffn_; }

  // Chooses the operands of the matrix products for every later forward/backward (and decode).
  // kBf16 allocates a second arena: bf16 shadows of wq/wk/wv/wo, the saved bf16 copies of the
  // attention input and of the attention output, attention's softmax stats, one scratch for a
  // rounded output gradient; it is passed to every FeedForward, and the shadows are filled at
  // once (refresh_low_precision). It frees f32 attention's probabilities [B, Hq, T, T] per layer
  // and their backward scratch, which bf16 attention does not use (kFp32 allocates them again).
  // Call once, after construction and loading; kFp32 (the default) changes nothing.
  void set_precision(Precision p);
  Precision precision() const { return precision_; }
  // Rounds the f32 masters into the bf16 shadows (nearest even) here and in every FFN: call it
  // whenever the masters changed (once per optimizer step, before its first forward; after a
  // load). The shadows are a pure function of the masters, so a resumed run is bit-exact. No-op
  // in f32.
  void refresh_low_precision();
  // Bytes of the bf16 path (its arena and every FFN's; per-thread packing scratch excluded).
  std::size_t low_precision_bytes() const;

 private:
  struct Layer {
    Param *attn_norm, *wq, *wk, *wv, *wo, *q_norm = nullptr, *k_norm = nullptr, *ffn_norm;
    Param *bq = nullptr, *bk = nullptr, *bv = nullptr;  // qkv_bias
    // activations (fp32 attention saves its probabilities, in attn_f32_; bf16 attention their
    // stats, in low_: the backward recomputes them; kernels/attention_bf16.h)
    float *res_in, *res_mid, *ln1, *rstd1, *q_raw, *q, *rstd_q, *k_raw, *k, *rstd_k, *v, *att, *ln2,
        *rstd2;
    float* probs = nullptr;
    float* att_stats = nullptr;
  };
  void bind(Arena& a);
  // f32 attention's probabilities [B, Hq, T, T] per layer and its backward scratch, in their own
  // arena (attn_f32_) so that bf16 does not hold O(T²) memory per layer it never touches.
  void bind_attention_f32(Arena& a);
  void allocate_attention_f32();
  // q [N, Hq·hd], k and v [N, Hkv·hd] (written) from s.ln1 with layer w's weights: projections,
  // biases, q/k norm (saving s.q_raw, s.k_raw, s.rstd_q, s.rstd_k). RoPE is the caller's.
  // In bf16 s.ln1 is first rounded into ln1_b (the shared input of the three products) and the
  // products use layer `l`'s shadows; `w` must be layers_[l].
  void qkv_forward(int l, const Layer& w, Layer& s, uint16_t* ln1_b, float* q, float* k, float* v,
                   int N);
  void qk_norm_forward(float* out, float* rstd, const float* in, const Param* w, int N, int heads);
  // din (+=), w->g (+=).
  void qk_norm_backward(float* din, Param* w, const float* dout, const float* in, const float* rstd,
                        int N, int heads);
  void check_tokens(const int32_t* tokens, int n, const char* what) const;

  ModelConfig cfg_;
  Communicator& comm_;
  int max_batch_, max_seq_, max_tokens_;
  int C_, V_, Hq_, Hkv_, hd_, Dq_, Dkv_;
  ParamStore params_;
  Param *embed_, *norm_, *head_;  // head_ == embed_ when tied
  std::vector<Layer> layers_;
  std::vector<std::unique_ptr<FeedForward>> ffn_;
  // RoPE angles and decoding scores for the positions in use: max_seq at construction, grown by
  // make_cache to the cache's length (sizing them by max_seq_len made a checkpoint claiming a
  // context of 1e8 allocate 6.7 GB before anything ran). Values depend on the position only.
  mutable RopeTable<float> rope_;
  mutable std::vector<float> decode_scores_;
  void ensure_positions(int positions) const;
  Arena acts_;
  Arena attn_f32_;  // bind_attention_f32's; empty in bf16
  // top-level activations and backward scratch
  float *res_final_, *lnf_, *rstdf_, *logits_, *losses_, *ffn_out_;
  float *dres_, *dln_, *datt_, *dq_, *dk_, *dv_, *dq_raw_, *dk_raw_, *att_scratch_;
  int32_t* tokens_;
  float* rms_partial_;  // rmsnorm_backward's per-chunk dw sums, shared by every norm
  int cur_B_ = 0, cur_T_ = 0;
  bool have_grad_ = false;
  // bf16 (set_precision): per layer, the shadows [rows, C] / [C, Dq] and the saved operands
  // ln1_b [N, C] (the q/k/v input), att_b [N, Dq] (the wo input) and attention's rounded q, k, v
  // (kernels/attention_bf16.h's AttnBf16Saved); one scratch dout_b for the rounded output
  // gradient of a backward product [N, max(C, Dq, Dkv)].
  struct LowPrecision {
    uint16_t *wq, *wk, *wv, *wo, *ln1, *att, *q, *k, *v;
  };
  Precision precision_ = Precision::kFp32;
  Arena low_;
  std::vector<LowPrecision> lp_;
  uint16_t* dout_b_ = nullptr;
  void bind_low_precision(Arena& a);
  // x [N,C] (+=) att [N,Dq]·Woᵀ with layer l's weights; in bf16 att is first rounded into att_b
  // (saved for the backward: lp_[l].att in training, layer 0's as scratch when decoding).
  void wo_forward(int l, float* x, const float* att, uint16_t* att_b, int N);
  // dst [N, n_heads·hd] bf16 (written) = x [N, n_heads·hd] rotated by RoPE (positions n % T) and
  // rounded, row by row in L1 (nn/linear_bf16.h's rounded_rows): bf16 attention's Q̂ and K̂
  // without writing the rotated f32 q and k (the same bits as rope_apply then
  // attention_round_bf16; hd is even, so the saved rows need no padding).
  void rope_rounded(uint16_t* dst, const float* x, int N, int T, int n_heads) const;
};

}  // namespace moe
