// The inference engine: embeddings → L × [attention with a KV cache; FFN block] → norm → head,
// on weights in their stored dtype (kernels/qmatmul.h). See moe/infer/engine.h.
#include "moe/infer/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_internal.h"
#include "moe/core/error.h"
#include "moe/core/half.h"
#include "moe/core/threading.h"
#include "moe/kernels/softmax.h"
#include "moe/nn/rmsnorm.h"
#include "moe/nn/rope.h"

namespace moe::infer {

namespace {

using detail::FfnBlock;
using detail::matrix_bytes;
using detail::WeightLoader;

class EngineImpl final : public Engine {
 public:
  EngineImpl(const formats::ModelReader& r, const EngineOptions& opt);

  const ModelConfig& config() const override { return cfg_; }
  int context() const override { return ctx_; }
  int position() const override { return pos_; }
  void reset() override { pos_ = 0; }
  const float* feed(std::span<const int32_t> tokens) override;
  void feed_all(std::span<const int32_t> tokens, float* logits) override;
  uint64_t weight_bytes() const override { return stored_bytes_ + owned_bytes_; }
  uint64_t owned_bytes() const override { return owned_bytes_; }
  uint64_t kv_bytes() const override {
    return (kc_.size() + vc_.size()) * sizeof(float) +
           (kc16_.size() + vc16_.size()) * sizeof(uint16_t);
  }
  uint64_t active_weight_bytes_per_token() const override { return active_bytes_; }

 private:
  struct Layer {
    std::vector<float> attn_norm, ffn_norm, bq, bk, bv, q_norm, k_norm;
    WeightMatrix wq, wk, wv, wo;
    std::unique_ptr<FfnBlock> ffn;
  };
  void check(std::span<const int32_t> tokens) const;
  // Runs tokens [n ≤ max_batch] at positions pos_.. and advances pos_. logits: [n, V] for every
  // token, or (all = false) [V] for the last one only.
  void run(const int32_t* tokens, int n, float* logits, bool all);
  void attention_block(Layer& L, int l, int n);
  // Causal attention of the chunk's n queries (positions p0..p0+n−1) over the cache 0..p0+n−1.
  void attend(int l, int n, int p0);
  void qk_norm(float* x, const std::vector<float>& w, int n, int heads);
  // Writes the chunk's k_ and v_ [n, Dkv] into layer l's cache at positions p0..p0+n−1.
  void store_kv(int l, int n, int p0);
  detail::KvLayer kv_layer(int l) const;

  ModelConfig cfg_;
  int ctx_ = 0, max_batch_ = 0, pos_ = 0;
  int64_t C_, V_, Hq_, Hkv_, hd_, Dq_, Dkv_;
  WeightLoader w_;
  detail::FfnScratch ffn_scratch_;
  WeightMatrix embed_, head_;
  std::vector<float> norm_;
  std::vector<Layer> layers_;
  RopeTable<float> rope_;
  KvType kv_type_;
  std::vector<float> kc_, vc_;         // [L, ctx, Dkv] when kv_type_ is f32 (else empty)
  std::vector<uint16_t> kc16_, vc16_;  // [L, ctx, Dkv] bf16 bits when kv_type_ is bf16
  // Activations of one chunk: [max_batch, ·].
  std::vector<float> x_, ln_, q_, k_, v_, att_, tmp_, rstd_, scores_, logits_;
  uint64_t stored_bytes_ = 0, owned_bytes_ = 0, active_bytes_ = 0;
};

EngineImpl::EngineImpl(const formats::ModelReader& r, const EngineOptions& opt)
    : cfg_(r.config()), w_(r), kv_type_(opt.kv_type) {
  const ModelConfig& c = cfg_;
  C_ = c.d_model;
  V_ = c.vocab_size;
  Hq_ = c.n_heads;
  Hkv_ = c.n_kv_heads;
  hd_ = c.head_dim;
  Dq_ = Hq_ * hd_;
  Dkv_ = Hkv_ * hd_;
  ctx_ = opt.context > 0 ? opt.context : c.max_seq_len;
  MOE_CHECK(ctx_ <= c.max_seq_len, "{}: context of {} positions exceeds the model's max_seq_len {}",
            r.path(), ctx_, c.max_seq_len);
  MOE_CHECK(opt.max_batch > 0, "engine: max_batch {}: expected > 0", opt.max_batch);
  max_batch_ = std::min(opt.max_batch, ctx_);
  MOE_CHECK(c.expert_parallel == 1, "engine: an expert-parallel model runs with moe train only");

  embed_ = w_.matrix("embed.weight", V_, C_);
  layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    Layer& L = layers_[l];
    const std::string p = fmt::format("layers.{}.", l);
    L.attn_norm = w_.vec(p + "attn_norm.weight", {C_});
    L.wq = w_.matrix(p + "attn.wq", Dq_, C_);
    L.wk = w_.matrix(p + "attn.wk", Dkv_, C_);
    L.wv = w_.matrix(p + "attn.wv", Dkv_, C_);
    L.wo = w_.matrix(p + "attn.wo", C_, Dq_);
    if (c.qk_norm != QkNorm::kNone) {
      const bool row = c.qk_norm == QkNorm::kRow;
      L.q_norm = w_.vec(p + "attn.q_norm", {row ? Dq_ : hd_});
      L.k_norm = w_.vec(p + "attn.k_norm", {row ? Dkv_ : hd_});
    }
    if (c.qkv_bias) {
      L.bq = w_.vec(p + "attn.bq", {Dq_});
      L.bk = w_.vec(p + "attn.bk", {Dkv_});
      L.bv = w_.vec(p + "attn.bv", {Dkv_});
    }
    L.ffn_norm = w_.vec(p + "ffn_norm.weight", {C_});
    L.ffn = detail::make_ffn_block(c, l, w_, max_batch_, ffn_scratch_);
    active_bytes_ += matrix_bytes(L.wq) + matrix_bytes(L.wk) + matrix_bytes(L.wv) +
                     matrix_bytes(L.wo) + L.ffn->active_bytes();
  }
  norm_ = w_.vec("norm.weight", {C_});
  head_ = c.tie_embeddings ? embed_ : w_.matrix("head.weight", V_, C_);
  active_bytes_ += matrix_bytes(head_) + embed_.row_bytes;
  stored_bytes_ = w_.stored_bytes;
  owned_bytes_ = w_.owned_bytes;

  rope_ = RopeTable<float>(ctx_, int(hd_), c.rope_theta, c.rope_style == RopeStyle::kInterleaved);
  const std::size_t L = c.n_layers, B = max_batch_;
  if (kv_type_ == KvType::kF32) {
    kc_.assign(L * ctx_ * Dkv_, 0.f);
    vc_.assign(L * ctx_ * Dkv_, 0.f);
  } else {
    kc16_.assign(L * ctx_ * Dkv_, 0);
    vc16_.assign(L * ctx_ * Dkv_, 0);
  }
  x_.resize(B * C_);
  ln_.resize(B * C_);
  q_.resize(B * Dq_);
  k_.resize(B * Dkv_);
  v_.resize(B * Dkv_);
  att_.resize(B * Dq_);
  tmp_.resize(B * C_);
  rstd_.resize(B * std::max<int64_t>(Hq_, 1));
  logits_.resize(V_);
}

void EngineImpl::check(std::span<const int32_t> tokens) const {
  MOE_CHECK(!tokens.empty(), "engine: feed of no tokens");
  MOE_CHECK(int64_t(pos_) + int64_t(tokens.size()) <= ctx_,
            "{} tokens at position {} exceed the context of {} positions", tokens.size(), pos_,
            ctx_);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    MOE_CHECK(tokens[i] >= 0 && tokens[i] < V_,
              "token id {} at position {} is out of range [0, {})", tokens[i], i, V_);
}

const float* EngineImpl::feed(std::span<const int32_t> tokens) {
  check(tokens);
  for (std::size_t i = 0; i < tokens.size(); i += max_batch_) {
    const int n = int(std::min<std::size_t>(max_batch_, tokens.size() - i));
    run(tokens.data() + i, n, logits_.data(), /*all=*/false);
  }
  return logits_.data();
}

void EngineImpl::feed_all(std::span<const int32_t> tokens, float* logits) {
  check(tokens);
  for (std::size_t i = 0; i < tokens.size(); i += max_batch_) {
    const int n = int(std::min<std::size_t>(max_batch_, tokens.size() - i));
    run(tokens.data() + i, n, logits + i * V_, /*all=*/true);
  }
}

void EngineImpl::run(const int32_t* tokens, int n, float* logits, bool all) {
  const float eps = cfg_.norm_eps;
  float* x = x_.data();
#pragma omp parallel for schedule(static) if (n > 16)
  for (int i = 0; i < n; ++i) dequantize_row(x + std::size_t(i) * C_, embed_, tokens[i]);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    Layer& L = layers_[l];
    attention_block(L, l, n);
    rmsnorm_forward(ln_.data(), rstd_.data(), x, L.ffn_norm.data(), n, int(C_), eps);
    L.ffn->forward(tmp_.data(), ln_.data(), n);
    for (std::size_t i = 0; i < std::size_t(n) * C_; ++i) x[i] += tmp_[i];
  }
  pos_ += n;
  // The head reads every row only when every token's logits are wanted.
  const int first = all ? 0 : n - 1, rows = n - first;
  rmsnorm_forward(ln_.data(), rstd_.data(), x + std::size_t(first) * C_, norm_.data(), rows,
                  int(C_), eps);
  qmatmul(logits, V_, ln_.data(), C_, rows, head_);
}

void EngineImpl::qk_norm(float* x, const std::vector<float>& w, int n, int heads) {
  // row: one RMSNorm row per token; head: one per (token, head) of hd values (model/transformer).
  const float eps = cfg_.norm_eps;
  if (cfg_.qk_norm == QkNorm::kRow)
    rmsnorm_forward(x, rstd_.data(), x, w.data(), n, int(heads * hd_), eps);
  else
    rmsnorm_forward(x, rstd_.data(), x, w.data(), n * heads, int(hd_), eps);
}

void EngineImpl::attention_block(Layer& L, int l, int n) {
  const int p0 = pos_;
  float* x = x_.data();
  rmsnorm_forward(ln_.data(), rstd_.data(), x, L.attn_norm.data(), n, int(C_), cfg_.norm_eps);
  const QMatmulTask t[3] = {{q_.data(), Dq_, ln_.data(), C_, n, L.wq},
                            {k_.data(), Dkv_, ln_.data(), C_, n, L.wk},
                            {v_.data(), Dkv_, ln_.data(), C_, n, L.wv}};
  qmatmul_many(t);
  if (cfg_.qkv_bias) {
    for (int i = 0; i < n; ++i) {
      for (int64_t d = 0; d < Dq_; ++d) q_[i * Dq_ + d] += L.bq[d];
      for (int64_t d = 0; d < Dkv_; ++d) k_[i * Dkv_ + d] += L.bk[d];
      for (int64_t d = 0; d < Dkv_; ++d) v_[i * Dkv_ + d] += L.bv[d];
    }
  }
  if (cfg_.qk_norm != QkNorm::kNone) {
    qk_norm(q_.data(), L.q_norm, n, int(Hq_));
    qk_norm(k_.data(), L.k_norm, n, int(Hkv_));
  }
  rope_apply(q_.data(), rope_, n, n, p0, int(Hq_), false);
  rope_apply(k_.data(), rope_, n, n, p0, int(Hkv_), false);
  store_kv(l, n, p0);
  attend(l, n, p0);
  qmatmul(tmp_.data(), C_, att_.data(), Dq_, n, L.wo);
  for (std::size_t i = 0; i < std::size_t(n) * C_; ++i) x[i] += tmp_[i];
}

void EngineImpl::store_kv(int l, int n, int p0) {
  const std::size_t at = (std::size_t(l) * ctx_ + p0) * Dkv_, count = std::size_t(n) * Dkv_;
  if (kv_type_ == KvType::kF32) {
    std::memcpy(&kc_[at], k_.data(), sizeof(float) * count);
    std::memcpy(&vc_[at], v_.data(), sizeof(float) * count);
    return;
  }
  uint16_t *kc = &kc16_[at], *vc = &vc16_[at];
#pragma omp simd
  for (std::size_t i = 0; i < count; ++i) {
    kc[i] = f32_to_bf16(k_[i]);
    vc[i] = f32_to_bf16(v_[i]);
  }
}

detail::KvLayer EngineImpl::kv_layer(int l) const {
  const std::size_t at = std::size_t(l) * ctx_ * Dkv_;
  if (kv_type_ == KvType::kF32) return {kv_type_, &kc_[at], &vc_[at], Dkv_};
  return {kv_type_, &kc16_[at], &vc16_[at], Dkv_};
}

void EngineImpl::attend(int l, int n, int p0) {
  // One (query, head) per task; each task is one thread's in a fixed order, so the thread count
  // does not change the bits. Work grows with the position, hence the dynamic schedule.
  const detail::KvLayer kv = kv_layer(l);
  const int threads = max_threads();
  if (scores_.size() < std::size_t(threads) * ctx_) scores_.resize(std::size_t(threads) * ctx_);
  const float scale = 1.f / std::sqrt(float(hd_));
  const int64_t group = Hq_ / Hkv_, hd = hd_;
  const int64_t tasks = int64_t(n) * Hq_;
#pragma omp parallel for schedule(dynamic, 4) if (tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int i = int(task / Hq_), h = int(task % Hq_);
    detail::attend_head(&att_[std::size_t(i) * Dq_ + h * hd],
                        &scores_[std::size_t(thread_index()) * ctx_],
                        &q_[std::size_t(i) * Dq_ + h * hd], kv, h / group, hd, p0 + i + 1, scale);
  }
}

// The cache's element read as f32: widening bf16 is exact (a shift), so it vectorizes as well as
// an f32 load.
inline float kv_load(const float* p, int64_t e) { return p[e]; }
inline float kv_load(const uint16_t* p, int64_t e) { return bf16_to_f32(p[e]); }

template <typename T>
void attend_head_typed(float* o, float* s, const float* q, const T* kc, const T* vc, int64_t row,
                       int64_t kh, int64_t hd, int64_t len, float scale) {
  for (int64_t j = 0; j < len; ++j) {
    const T* kj = kc + j * row + kh * hd;
    float d = 0;
#pragma omp simd reduction(+ : d)
    for (int64_t e = 0; e < hd; ++e) d += q[e] * kv_load(kj, e);
    s[j] = d * scale;
  }
  softmax_row(s, s, int(len), SoftmaxExp::kLibm);
  std::memset(o, 0, sizeof(float) * hd);
  for (int64_t j = 0; j < len; ++j) {
    const float pj = s[j];
    const T* vj = vc + j * row + kh * hd;
#pragma omp simd
    for (int64_t e = 0; e < hd; ++e) o[e] += pj * kv_load(vj, e);
  }
}

}  // namespace

namespace detail {

void attend_head(float* o, float* s, const float* q, const KvLayer& kv, int64_t kh, int64_t hd,
                 int64_t len, float scale) {
  if (kv.type == KvType::kF32)
    attend_head_typed(o, s, q, static_cast<const float*>(kv.k), static_cast<const float*>(kv.v),
                      kv.row, kh, hd, len, scale);
  else
    attend_head_typed(o, s, q, static_cast<const uint16_t*>(kv.k),
                      static_cast<const uint16_t*>(kv.v), kv.row, kh, hd, len, scale);
}

}  // namespace detail

const char* kv_type_name(KvType t) { return t == KvType::kF32 ? "f32" : "bf16"; }

KvType parse_kv_type(const std::string& s, const std::string& what) {
  if (s == "f32") return KvType::kF32;
  if (s == "bf16") return KvType::kBF16;
  MOE_FAIL("{} '{}': expected f32 or bf16", what, s);
}

std::unique_ptr<Engine> Engine::open(const formats::ModelReader& reader, const EngineOptions& opt) {
  return std::make_unique<EngineImpl>(reader, opt);
}

}  // namespace moe::infer
