#include "moe/model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/ffn/moe/moe_ffn.h"
#include "moe/kernels/attention_bf16.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/nn/attention.h"
#include "moe/nn/cross_entropy.h"
#include "moe/nn/embedding.h"
#include "moe/nn/linear.h"
#include "moe/nn/linear_bf16.h"
#include "moe/nn/rmsnorm.h"

namespace moe {

Transformer::Transformer(const ModelConfig& cfg, int max_batch, int max_seq)
    : Transformer(cfg, max_batch, max_seq, single_process_communicator()) {}

Transformer::Transformer(const ModelConfig& cfg, int max_batch, int max_seq, Communicator& comm)
    : cfg_(cfg),
      comm_(comm),
      max_batch_(max_batch),
      max_seq_(max_seq),
      max_tokens_(max_batch * max_seq) {
  cfg_.resolve();
  MOE_CHECK(max_batch > 0 && max_seq > 0 && max_seq <= cfg_.max_seq_len,
            "model built for batch {} × seq {}: expected positive sizes and seq <= max_seq_len {}",
            max_batch, max_seq, cfg_.max_seq_len);
  C_ = cfg_.d_model;
  V_ = cfg_.vocab_size;
  Hq_ = cfg_.n_heads;
  Hkv_ = cfg_.n_kv_heads;
  hd_ = cfg_.head_dim;
  Dq_ = Hq_ * hd_;
  Dkv_ = Hkv_ * hd_;
  const float std = cfg_.init_std, std_out = std / std::sqrt(2.f * cfg_.n_layers);
  // Registration order = checkpoint order = init stream order.
  embed_ = params_.add("embed.weight", {V_, C_}, Init::kNormal, std, false);
  embed_->is_embedding = true;
  layers_.resize(cfg_.n_layers);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    Layer& L = layers_[l];
    const std::string p = "layers." + std::to_string(l);
    L.attn_norm = params_.add(p + ".attn_norm.weight", {C_}, Init::kOnes, 0, false);
    L.wq = params_.add(p + ".attn.wq", {Dq_, C_}, Init::kNormal, std, true);
    L.wk = params_.add(p + ".attn.wk", {Dkv_, C_}, Init::kNormal, std, true);
    L.wv = params_.add(p + ".attn.wv", {Dkv_, C_}, Init::kNormal, std, true);
    L.wo = params_.add(p + ".attn.wo", {C_, Dq_}, Init::kNormal, std_out, true);
    if (cfg_.qk_norm != QkNorm::kNone) {
      // row: one weight per element of the q / k row; head: one [hd] weight shared by the heads.
      const bool row = cfg_.qk_norm == QkNorm::kRow;
      L.q_norm = params_.add(p + ".attn.q_norm", {row ? Dq_ : hd_}, Init::kOnes, 0, false);
      L.k_norm = params_.add(p + ".attn.k_norm", {row ? Dkv_ : hd_}, Init::kOnes, 0, false);
    }
    if (cfg_.qkv_bias) {
      L.bq = params_.add(p + ".attn.bq", {Dq_}, Init::kZeros, 0, false);
      L.bk = params_.add(p + ".attn.bk", {Dkv_}, Init::kZeros, 0, false);
      L.bv = params_.add(p + ".attn.bv", {Dkv_}, Init::kZeros, 0, false);
    }
    L.ffn_norm = params_.add(p + ".ffn_norm.weight", {C_}, Init::kOnes, 0, false);
    ffn_.push_back(make_feed_forward(cfg_.ffn_for(l), cfg_, params_, p + ".ffn", l, comm_));
  }
  share_relu_schedule(ffn_);  // ReMoE: one λ for all relu layers (moe_ffn.h)
  norm_ = params_.add("norm.weight", {C_}, Init::kOnes, 0, false);
  if (cfg_.tie_embeddings) {
    head_ = embed_;
  } else {
    head_ = params_.add("head.weight", {V_, C_}, Init::kNormal, std, true);
  }
  params_.allocate();
  ensure_positions(max_seq_);
  Arena measure;
  bind(measure);
  acts_ = Arena(measure.used());
  bind(acts_);
  allocate_attention_f32();
}

void Transformer::bind_attention_f32(Arena& a) {
  for (Layer& L : layers_)
    L.probs = a.take<float>(std::size_t(max_batch_) * Hq_ * max_seq_ * max_seq_);
  att_scratch_ = a.take<float>(attention_scratch_size(max_seq_));
}

void Transformer::allocate_attention_f32() {
  Arena measure;
  bind_attention_f32(measure);
  attn_f32_ = Arena(measure.used());
  bind_attention_f32(attn_f32_);
}

void Transformer::bind(Arena& a) {
  const std::size_t N = max_tokens_;
  const bool qkn = cfg_.qk_norm != QkNorm::kNone;
  // rstd per normalised row: one per token (row), one per (token, head) (head).
  const std::size_t q_rows = cfg_.qk_norm == QkNorm::kHead ? N * Hq_ : N;
  const std::size_t k_rows = cfg_.qk_norm == QkNorm::kHead ? N * Hkv_ : N;
  auto f = [&](std::size_t n) { return a.take<float>(n); };
  for (int l = 0; l < cfg_.n_layers; ++l) {
    Layer& L = layers_[l];
    L.res_in = f(N * C_);
    L.res_mid = f(N * C_);
    L.ln1 = f(N * C_);
    L.rstd1 = f(N);
    L.q_raw = qkn ? f(N * Dq_) : nullptr;
    L.q = f(N * Dq_);
    L.rstd_q = qkn ? f(q_rows) : nullptr;
    L.k_raw = qkn ? f(N * Dkv_) : nullptr;
    L.k = f(N * Dkv_);
    L.rstd_k = qkn ? f(k_rows) : nullptr;
    L.v = f(N * Dkv_);
    L.att = f(N * Dq_);
    L.ln2 = f(N * C_);
    L.rstd2 = f(N);
    ffn_[l]->bind(a, max_batch_, max_seq_);
  }
  res_final_ = f(N * C_);
  lnf_ = f(N * C_);
  rstdf_ = f(N);
  logits_ = f(N * V_);
  losses_ = f(N);
  ffn_out_ = f(N * C_);
  dres_ = f(N * C_);
  dln_ = f(N * C_);
  datt_ = f(N * Dq_);
  dq_ = f(N * Dq_);
  dk_ = f(N * Dkv_);
  dv_ = f(N * Dkv_);
  dq_raw_ = qkn ? f(N * Dq_) : nullptr;
  dk_raw_ = qkn ? f(N * Dkv_) : nullptr;
  tokens_ = a.take<int32_t>(N);
  rms_partial_ = f(std::max(rmsnorm_backward_scratch_size(int(N), std::max({C_, Dq_, Dkv_})),
                            rmsnorm_backward_scratch_size(int(q_rows), hd_)));
}

void Transformer::check_tokens(const int32_t* t, int n, const char* what) const {
  for (int i = 0; i < n; ++i)
    MOE_CHECK(t[i] >= 0 && t[i] < V_, "{} id {} at position {} is out of range [0, {})", what, t[i],
              i, V_);
}

namespace {

// y [N,D] (+=) the bias b [D] on every row.
void add_bias(float* y, const float* b, int N, int D) {
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < D; ++i) y[std::size_t(n) * D + i] += b[i];
}

// db [D] (+=) Σ_n dy[n, :], summed in token order (deterministic; N·D is small next to the GEMMs).
void bias_backward(float* db, const float* dy, int N, int D) {
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < D; ++i) db[i] += dy[std::size_t(n) * D + i];
}

}  // namespace

void Transformer::qkv_forward(int l, const Layer& w, Layer& s, uint16_t* ln1_b, float* q, float* k,
                              float* v, int N) {
  // Projections (+ biases) into q/k or, with a q/k norm, into q_raw/k_raw normalised into q/k.
  // llama.cpp's order (build_qkv, then the model's norm): x·Wᵀ + b → RMSNorm → RoPE (after this).
  const bool qkn = cfg_.qk_norm != QkNorm::kNone;
  float* qp = qkn ? s.q_raw : q;
  float* kp = qkn ? s.k_raw : k;
  if (precision_ == Precision::kBf16) {
    // One rounding of the shared input, three products on it: [N,C]·[D,C]ᵀ.
    const LowPrecision& lw = lp_[l];
    round_to_bf16(ln1_b, s.ln1, std::size_t(N) * C_);
    gemm_bf16(false, true, N, Dq_, C_, 1.f, ln1_b, C_, lw.wq, C_, 0.f, qp, Dq_);
    gemm_bf16(false, true, N, Dkv_, C_, 1.f, ln1_b, C_, lw.wk, C_, 0.f, kp, Dkv_);
    gemm_bf16(false, true, N, Dkv_, C_, 1.f, ln1_b, C_, lw.wv, C_, 0.f, v, Dkv_);
  } else {
    linear_forward(qp, s.ln1, w.wq->w, N, C_, Dq_);
    linear_forward(kp, s.ln1, w.wk->w, N, C_, Dkv_);
    linear_forward(v, s.ln1, w.wv->w, N, C_, Dkv_);
  }
  if (cfg_.qkv_bias) {
    add_bias(qp, w.bq->w, N, Dq_);
    add_bias(kp, w.bk->w, N, Dkv_);
    add_bias(v, w.bv->w, N, Dkv_);
  }
  if (qkn) {
    qk_norm_forward(q, s.rstd_q, qp, w.q_norm, N, Hq_);
    qk_norm_forward(k, s.rstd_k, kp, w.k_norm, N, Hkv_);
  }
}

void Transformer::wo_forward(int l, float* x, const float* att, uint16_t* att_b, int N) {
  if (precision_ == Precision::kBf16) {
    round_to_bf16(att_b, att, std::size_t(N) * Dq_);
    gemm_bf16(false, true, N, C_, Dq_, 1.f, att_b, Dq_, lp_[l].wo, Dq_, 1.f, x, C_);
  } else {
    gemm<float>(false, true, N, C_, Dq_, 1.f, att, Dq_, layers_[l].wo->w, Dq_, 1.f, x, C_);
  }
}

void Transformer::qk_norm_forward(float* out, float* rstd, const float* in, const Param* w, int N,
                                  int heads) {
  // row: each token's [heads·hd] row is one RMSNorm row; head: each head's [hd] (llama.cpp
  // normalises Qwen3's q/k after reshaping to [hd, heads, tokens], so ne[0] = hd). Same eps.
  if (cfg_.qk_norm == QkNorm::kRow)
    rmsnorm_forward(out, rstd, in, w->w, N, heads * hd_, cfg_.norm_eps);
  else
    rmsnorm_forward(out, rstd, in, w->w, N * heads, hd_, cfg_.norm_eps);
}

void Transformer::qk_norm_backward(float* din, Param* w, const float* dout, const float* in,
                                   const float* rstd, int N, int heads) {
  if (cfg_.qk_norm == QkNorm::kRow)
    rmsnorm_backward(din, w->g, rms_partial_, dout, in, w->w, rstd, N, heads * hd_);
  else
    rmsnorm_backward(din, w->g, rms_partial_, dout, in, w->w, rstd, N * heads, hd_);
}

double Transformer::forward(const int32_t* tokens, const int32_t* targets, int B, int T,
                            const StepInfo& info, float grad_scale) {
  MOE_CHECK(B > 0 && T > 0 && B <= max_batch_ && T <= max_seq_,
            "forward with batch {} × seq {}, but the model was built for at most {} × {}", B, T,
            max_batch_, max_seq_);
  const int N = B * T;
  check_tokens(tokens, N, "token");
  if (targets) check_tokens(targets, N, "target");
  std::memcpy(tokens_, tokens, sizeof(int32_t) * N);
  cur_B_ = B;
  cur_T_ = T;
  StepInfo si = info;
  si.batch = B;
  si.seq_len = T;
  si.loss_scale = targets && grad_scale > 0 ? grad_scale : 0.f;
  const float eps = cfg_.norm_eps;

  embedding_forward(layers_.empty() ? res_final_ : layers_[0].res_in, tokens, embed_->w, N, C_);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    Layer& L = layers_[l];
    float* out = l + 1 < cfg_.n_layers ? layers_[l + 1].res_in : res_final_;
    rmsnorm_forward(L.ln1, L.rstd1, L.res_in, L.attn_norm->w, N, C_, eps);
    qkv_forward(l, L, L, lp_.empty() ? nullptr : lp_[l].ln1, L.q, L.k, L.v, N);
    if (precision_ == Precision::kBf16) {
      // bf16 attention reads only the rounded operands: q and k go from RoPE straight into them.
      const LowPrecision& p = lp_[l];
      rope_rounded(p.q, L.q, N, T, Hq_);
      rope_rounded(p.k, L.k, N, T, Hkv_);
      attention_round_bf16(p.v, L.v, N, Hkv_, hd_);
      attention_forward_bf16(L.att, L.att_stats, nullptr, {p.q, p.k, p.v}, B, T, Hq_, Hkv_, hd_);
    } else {
      rope_apply(L.q, rope_, N, T, 0, Hq_, false);
      rope_apply(L.k, rope_, N, T, 0, Hkv_, false);
      attention_forward(L.att, L.probs, L.q, L.k, L.v, B, T, Hq_, Hkv_, hd_);
    }
    // res_mid = res_in + att·Woᵀ
    std::memcpy(L.res_mid, L.res_in, sizeof(float) * N * C_);
    wo_forward(l, L.res_mid, L.att, lp_.empty() ? nullptr : lp_[l].att, N);
    rmsnorm_forward(L.ln2, L.rstd2, L.res_mid, L.ffn_norm->w, N, C_, eps);
    ffn_[l]->forward(ffn_out_, L.ln2, N, si);
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < std::size_t(N) * C_; ++i) out[i] = L.res_mid[i] + ffn_out_[i];
  }
  rmsnorm_forward(lnf_, rstdf_, res_final_, norm_->w, N, C_, eps);
  linear_forward(logits_, lnf_, head_->w, N, C_, V_);
  have_grad_ = false;
  if (!targets) return 0;
  const bool grad = grad_scale > 0;
  cross_entropy_forward_backward(losses_, grad ? logits_ : nullptr, logits_, targets, N, V_,
                                 grad_scale / float(N));
  have_grad_ = grad;
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += losses_[i];
  return sum / N;
}

void Transformer::rope_rounded(uint16_t* dst, const float* x, int N, int T, int n_heads) const {
  // RoPE rotates pairs: the config requires an even head width, so the saved rows are unpadded.
  MOE_CHECK(attention_bf16_head_width(hd_) == hd_, "rope_rounded: odd head width {}", hd_);
  const int half = rope_.half, w = n_heads * hd_;
  rounded_rows(dst, N, w, [&](float* row, int n) {
    const std::size_t pos = std::size_t(n % T) * half;
    rope_row(row, x + std::size_t(n) * w, rope_.cos.data() + pos, rope_.sin.data() + pos, n_heads,
             half, rope_.interleaved, false);
  });
}

double Transformer::aux_loss() const {
  double a = 0;
  for (auto& f : ffn_) a += f->aux_loss();
  return a;
}

void Transformer::backward() {
  MOE_CHECK(have_grad_, "backward() without a preceding forward(..., grad_scale > 0)");
  have_grad_ = false;
  const int B = cur_B_, T = cur_T_, N = B * T;
  const float* dlogits = logits_;
  // Head: dlnf = dlogits·W_head, dW_head += dlogitsᵀ·lnf (into embed's grad when tied).
  linear_backward(dln_, head_->g, dlogits, lnf_, head_->w, N, C_, V_, false);
  std::memset(dres_, 0, sizeof(float) * N * C_);
  rmsnorm_backward(dres_, norm_->g, rms_partial_, dln_, res_final_, norm_->w, rstdf_, N, C_);
  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    Layer& L = layers_[l];
    // FFN sublayer: dres is d(res_out); it passes through the residual unchanged.
    std::memset(dln_, 0, sizeof(float) * N * C_);
    ffn_[l]->backward(dln_, dres_, L.ln2, N);
    rmsnorm_backward(dres_, L.ffn_norm->g, rms_partial_, dln_, L.res_mid, L.ffn_norm->w, L.rstd2, N,
                     C_);
    // Attention sublayer: dres is now d(res_mid).
    const bool low = precision_ == Precision::kBf16;
    if (low)
      linear_backward_bf16(datt_, L.wo->g, dout_b_, dres_, lp_[l].att, lp_[l].wo, N, Dq_, C_,
                           false);
    else
      linear_backward(datt_, L.wo->g, dres_, L.att, L.wo->w, N, Dq_, C_, false);
    if (low)
      attention_backward_bf16(dq_, dk_, dv_, datt_, L.att_stats, {lp_[l].q, lp_[l].k, lp_[l].v}, B,
                              T, Hq_, Hkv_, hd_);
    else
      attention_backward(dq_, dk_, dv_, att_scratch_, datt_, L.probs, L.q, L.k, L.v, B, T, Hq_,
                         Hkv_, hd_);
    rope_apply(dq_, rope_, N, T, 0, Hq_, true);
    rope_apply(dk_, rope_, N, T, 0, Hkv_, true);
    float* dq = dq_;
    float* dk = dk_;
    if (cfg_.qk_norm != QkNorm::kNone) {
      std::memset(dq_raw_, 0, sizeof(float) * N * Dq_);
      std::memset(dk_raw_, 0, sizeof(float) * N * Dkv_);
      qk_norm_backward(dq_raw_, L.q_norm, dq_, L.q_raw, L.rstd_q, N, Hq_);
      qk_norm_backward(dk_raw_, L.k_norm, dk_, L.k_raw, L.rstd_k, N, Hkv_);
      dq = dq_raw_;
      dk = dk_raw_;
    }
    if (cfg_.qkv_bias) {
      bias_backward(L.bq->g, dq, N, Dq_);
      bias_backward(L.bk->g, dk, N, Dkv_);
      bias_backward(L.bv->g, dv_, N, Dkv_);
    }
    if (low) {
      const LowPrecision& lw = lp_[l];
      const std::size_t nq = std::size_t(Dq_) * C_, nkv = std::size_t(Dkv_) * C_;
      if (lw.wk == lw.wq + nq && lw.wv == lw.wk + nkv && L.wk->g == L.wq->g + nq &&
          L.wv->g == L.wk->g + nkv) {
        // The bf16 shadows and the gradients of wq, wk, wv lie stacked as one [Dq + 2·Dkv, C]
        // (bind order): one product pair on [dq | dk | dv] rounded row by row, so ln1's rounded
        // rows are packed for one weight gradient instead of three and dln is written once.
        const int D3 = Dq_ + 2 * Dkv_;
        parallel_for_if(N, true, [&](int n) {
          uint16_t* d = dout_b_ + std::size_t(n) * D3;
          round_to_bf16(d, dq + std::size_t(n) * Dq_, std::size_t(Dq_));
          round_to_bf16(d + Dq_, dk + std::size_t(n) * Dkv_, std::size_t(Dkv_));
          round_to_bf16(d + Dq_ + Dkv_, dv_ + std::size_t(n) * Dkv_, std::size_t(Dkv_));
        });
        linear_backward_bf16_rounded(dln_, L.wq->g, dout_b_, lw.ln1, lw.wq, N, C_, D3, false);
      } else {
        linear_backward_bf16(dln_, L.wq->g, dout_b_, dq, lw.ln1, lw.wq, N, C_, Dq_, false);
        linear_backward_bf16(dln_, L.wk->g, dout_b_, dk, lw.ln1, lw.wk, N, C_, Dkv_, true);
        linear_backward_bf16(dln_, L.wv->g, dout_b_, dv_, lw.ln1, lw.wv, N, C_, Dkv_, true);
      }
    } else {
      linear_backward(dln_, L.wq->g, dq, L.ln1, L.wq->w, N, C_, Dq_, false);
      linear_backward(dln_, L.wk->g, dk, L.ln1, L.wk->w, N, C_, Dkv_, true);
      linear_backward(dln_, L.wv->g, dv_, L.ln1, L.wv->w, N, C_, Dkv_, true);
    }
    rmsnorm_backward(dres_, L.attn_norm->g, rms_partial_, dln_, L.res_in, L.attn_norm->w, L.rstd1,
                     N, C_);
  }
  embedding_backward(embed_->g, dres_, tokens_, N, C_);
}

void Transformer::bind_low_precision(Arena& a) {
  const std::size_t N = max_tokens_;
  auto h = [&](std::size_t n) { return a.take<uint16_t>(n); };
  lp_.resize(cfg_.n_layers);
  for (LowPrecision& p : lp_) {
    p.wq = h(std::size_t(Dq_) * C_);
    p.wk = h(std::size_t(Dkv_) * C_);
    p.wv = h(std::size_t(Dkv_) * C_);
    p.wo = h(std::size_t(C_) * Dq_);
    p.ln1 = h(N * C_);
    p.att = h(N * Dq_);
    const std::size_t hdp = std::size_t(attention_bf16_head_width(hd_));
    p.q = h(N * Hq_ * hdp);
    p.k = h(N * Hkv_ * hdp);
    p.v = h(N * Hkv_ * hdp);
  }
  for (Layer& L : layers_)
    L.att_stats = a.take<float>(attention_stats_size(max_batch_, max_seq_, Hq_));
  dout_b_ = h(N * std::max(C_, Dq_ + 2 * Dkv_));  // up to [dq | dk | dv]
}

void Transformer::set_precision(Precision p) {
  precision_ = p;
  for (auto& f : ffn_) f->set_precision(p);
  if (p == Precision::kFp32) {
    lp_.clear();
    low_ = Arena();
    dout_b_ = nullptr;
    for (Layer& L : layers_) L.att_stats = nullptr;
    if (attn_f32_.capacity() == 0) allocate_attention_f32();
    return;
  }
  attn_f32_ = Arena();
  for (Layer& L : layers_) L.probs = nullptr;
  att_scratch_ = nullptr;
  Arena measure;
  bind_low_precision(measure);
  low_ = Arena(measure.used());
  bind_low_precision(low_);
  refresh_low_precision();
}

std::size_t Transformer::low_precision_bytes() const {
  std::size_t n = low_.capacity();
  for (const auto& f : ffn_) n += f->low_precision_bytes();
  return n;
}

void Transformer::refresh_low_precision() {
  if (precision_ == Precision::kFp32) return;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const Layer& L = layers_[l];
    const LowPrecision& p = lp_[l];
    round_to_bf16(p.wq, L.wq->w, L.wq->numel);
    round_to_bf16(p.wk, L.wk->w, L.wk->numel);
    round_to_bf16(p.wv, L.wv->w, L.wv->numel);
    round_to_bf16(p.wo, L.wo->w, L.wo->numel);
  }
  for (auto& f : ffn_) f->refresh_low_precision();
}

void Transformer::ensure_positions(int positions) const {
  if (int(decode_scores_.size()) >= positions) return;
  rope_ =
      RopeTable<float>(positions, hd_, cfg_.rope_theta, cfg_.rope_style == RopeStyle::kInterleaved);
  decode_scores_.assign(std::size_t(positions), 0.f);
}

KVCache Transformer::make_cache(int max_seq) const {
  MOE_CHECK(max_seq > 0 && max_seq <= cfg_.max_seq_len,
            "KV cache of {} positions: expected 1..max_seq_len = {}", max_seq, cfg_.max_seq_len);
  ensure_positions(max_seq);
  KVCache c;
  c.max_seq = max_seq;
  c.k.assign(std::size_t(cfg_.n_layers) * max_seq * Dkv_, 0.f);
  c.v.assign(std::size_t(cfg_.n_layers) * max_seq * Dkv_, 0.f);
  return c;
}

const float* Transformer::decode_step(int32_t token, int pos, KVCache& cache) {
  MOE_CHECK(pos >= 0 && pos < cache.max_seq, "decode position {} outside the KV cache (size {})",
            pos, cache.max_seq);
  check_tokens(&token, 1, "token");
  StepInfo si;
  si.training = false;
  si.loss_scale = 0;
  const float eps = cfg_.norm_eps;
  // One token: every layer uses layer 0's buffers as scratch (there is no backward to feed).
  Layer& S = layers_[0];
  float* x = res_final_;
  embedding_forward(x, &token, embed_->w, 1, C_);
  const float scale = 1.f / std::sqrt(float(hd_));
  const int group = Hq_ / Hkv_;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    Layer& L = layers_[l];
    rmsnorm_forward(S.ln1, S.rstd1, x, L.attn_norm->w, 1, C_, eps);
    float* kc = cache.k.data() + (std::size_t(l) * cache.max_seq) * Dkv_;
    float* vc = cache.v.data() + (std::size_t(l) * cache.max_seq) * Dkv_;
    float* q = S.q;
    float* k = kc + std::size_t(pos) * Dkv_;
    float* v = vc + std::size_t(pos) * Dkv_;
    qkv_forward(l, L, S, lp_.empty() ? nullptr : lp_[0].ln1, q, k, v, 1);
    rope_apply(q, rope_, 1, 1, pos, Hq_, false);
    rope_apply(k, rope_, 1, 1, pos, Hkv_, false);
    float* scores = decode_scores_.data();
    for (int h = 0; h < Hq_; ++h) {
      const int kh = h / group;
      const float* qh = q + h * hd_;
      for (int j = 0; j <= pos; ++j) {
        const float* kj = kc + std::size_t(j) * Dkv_ + kh * hd_;
        float s = 0;
        for (int d = 0; d < hd_; ++d) s += qh[d] * kj[d];
        scores[j] = s * scale;
      }
      softmax_row(scores, scores, pos + 1, SoftmaxExp::kLibm);
      float* o = S.att + h * hd_;
      std::memset(o, 0, sizeof(float) * hd_);
      for (int j = 0; j <= pos; ++j) {
        const float p = scores[j];
        const float* vj = vc + std::size_t(j) * Dkv_ + kh * hd_;
        for (int d = 0; d < hd_; ++d) o[d] += p * vj[d];
      }
    }
    wo_forward(l, x, S.att, lp_.empty() ? nullptr : lp_[0].att, 1);
    rmsnorm_forward(S.ln2, S.rstd2, x, L.ffn_norm->w, 1, C_, eps);
    ffn_[l]->forward(ffn_out_, S.ln2, 1, si);
    for (int i = 0; i < C_; ++i) x[i] += ffn_out_[i];
  }
  rmsnorm_forward(lnf_, rstdf_, x, norm_->w, 1, C_, eps);
  linear_forward(logits_, lnf_, head_->w, 1, C_, V_);
  return logits_;
}

}  // namespace moe
