// The FFN blocks of the inference engine and the loader of their weights.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_internal.h"
#include "moe/core/arena.h"
#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/ffn/feed_forward.h"
#include "moe/ffn/moe/router.h"
#include "moe/kernels/group_by_key.h"
#include "moe/nn/activations.h"

namespace moe::infer::detail {

// ---- WeightLoader ------------------------------------------------------------------------------

std::vector<float> WeightLoader::vec(const std::string& name, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> v(static_cast<std::size_t>(n));
  r_.read(name, shape, v.data());
  owned_bytes += uint64_t(n) * sizeof(float);
  return v;
}

WeightMatrix WeightLoader::own(const std::string& name, const std::vector<int64_t>& shape,
                               int64_t rows, int64_t cols) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float>& buf = owned.emplace_back(std::size_t(n));
  r_.read(name, shape, buf.data());
  owned_bytes += uint64_t(n) * sizeof(float);
  return {WType::kF32, buf.data(), rows, cols, std::size_t(cols) * sizeof(float)};
}

// A stored tensor of our shape, possibly without the leading 1 of a single stacked matrix (GGUF
// keeps one shared expert [1, H, C] as [H, C]).
static bool same_shape(std::vector<int64_t> have, std::vector<int64_t> want) {
  while (!want.empty() && want.front() == 1 && want.size() > have.size()) want.erase(want.begin());
  return have == want;
}

WeightMatrix WeightLoader::matrix(const std::string& name, int64_t rows, int64_t cols) {
  const std::optional<formats::StoredTensor> st = r_.stored(name);
  if (st && same_shape(st->shape, {rows, cols})) {
    const WeightMatrix w = st->matrix(0);
    stored_bytes += matrix_bytes(w);
    return w;
  }
  return own(name, {rows, cols}, rows, cols);
}

std::vector<WeightMatrix> WeightLoader::stack(const std::string& name, int64_t E, int64_t rows,
                                              int64_t cols) {
  std::vector<WeightMatrix> out;
  const std::optional<formats::StoredTensor> st = r_.stored(name);
  if (st && same_shape(st->shape, {E, rows, cols})) {
    for (int64_t e = 0; e < E; ++e) {
      // A rank-2 stored tensor is the single matrix of a stack of one.
      out.push_back(st->shape.size() == 3 ? st->matrix(e) : st->matrix(0));
      stored_bytes += matrix_bytes(out.back());
    }
    return out;
  }
  const WeightMatrix all = own(name, {E, rows, cols}, E * rows, cols);
  for (int64_t e = 0; e < E; ++e)
    out.push_back({WType::kF32, static_cast<const float*>(all.data) + e * rows * cols, rows, cols,
                   all.row_bytes});
  return out;
}

namespace {

// h [n, H] (written; may alias u) = act(g, u): silu(g)·u for SwiGLU, gelu(u) for GELU (g unused),
// nn/activations.h's formulas. Dense and MoE FFNs are SwiGLU or GELU (model/config.cpp); ReLU is
// PEER's, which runs its own layer (TrainingFfnBlock).
void activate(float* h, const float* g, const float* u, std::size_t n, Activation act) {
  if (act == Activation::kSwiGLU)
    swiglu_forward_split(h, g, u, n);
  else
    gelu_forward(h, u, n);
}

// ---- Dense: [gate; up] → act → down ----------------------------------------------------------

class DenseBlock final : public FfnBlock {
 public:
  DenseBlock(const FfnConfig& f, const ModelConfig& m, const std::string& p, WeightLoader& w,
             int max_tokens, FfnScratch& sc)
      : act_(f.activation), C_(m.d_model), H_(f.d_ff), sc_(sc) {
    const bool glu = act_ == Activation::kSwiGLU;
    if (glu) gate_ = w.matrix(p + ".w_gate", H_, C_);
    up_ = w.matrix(p + ".w_up", H_, C_);
    down_ = w.matrix(p + ".w_down", C_, H_);
    sc_.g.reserve(std::size_t(max_tokens) * H_);
    sc_.u.reserve(std::size_t(max_tokens) * H_);
  }
  void forward(float* y, const float* x, int n) override {
    const bool glu = act_ == Activation::kSwiGLU;
    float *g = sc_.g.data(), *u = sc_.u.data();
    std::vector<QMatmulTask> t = {{u, H_, x, C_, n, up_}};
    if (glu) t.push_back({g, H_, x, C_, n, gate_});
    qmatmul_many(t);
    activate(u, g, u, std::size_t(n) * H_, act_);
    qmatmul(y, C_, u, H_, n, down_);
  }
  uint64_t active_bytes() const override {
    return matrix_bytes(gate_) + matrix_bytes(up_) + matrix_bytes(down_);
  }

 private:
  Activation act_;
  int64_t C_, H_;
  WeightMatrix gate_, up_, down_;
  FfnScratch& sc_;
};

// ---- MoE: the training router (fp32, dropless), experts grouped, fixed-order combine -----------

class MoeBlock final : public FfnBlock {
 public:
  MoeBlock(const FfnConfig& f, const ModelConfig& m, int layer, const std::string& p,
           WeightLoader& w, int max_tokens, FfnScratch& sc)
      : spec_(inference_spec(f, m.d_model)),
        router_(spec_),
        layer_(layer),
        max_tokens_(max_tokens),
        sc_(sc) {
    const int64_t C = spec_.C, E = spec_.E, H = spec_.H;
    const bool glu = spec_.act == Activation::kSwiGLU;
    router_w_ = w.vec(p + ".router.weight", {E, C});
    if (spec_.bias_balance) bias_ = w.vec(p + ".router.bias", {E});
    if (spec_.kind == RouterKind::kNoisyTopK) noise_w_ = w.vec(p + ".router.w_noise", {E, C});
    if (glu) gate_ = w.stack(p + ".experts.w_gate", E, H, C);
    up_ = w.stack(p + ".experts.w_up", E, H, C);
    down_ = w.stack(p + ".experts.w_down", E, C, H);
    const int64_t S = spec_.n_shared, Hs = spec_.shared_H();
    if (S > 0) {
      if (glu) s_gate_ = w.stack(p + ".shared.w_gate", S, Hs, C);
      s_up_ = w.stack(p + ".shared.w_up", S, Hs, C);
      s_down_ = w.stack(p + ".shared.w_down", S, C, Hs);
      if (spec_.shared_gate) s_router_ = w.vec(p + ".shared.gate", {C});
    }
    // Router state for up to max_tokens tokens of one sequence and all their assignments.
    // relu (ReMoE): any number of experts per token, up to E.
    const int slots = spec_.kind == RouterKind::kRelu
                          ? int(E)
                          : std::max(spec_.k, int(std::lround(spec_.eval_capacity_factor)));
    max_assign_ = int64_t(max_tokens) * std::min<int64_t>(E, std::max(1, slots));
    bind_router();
    const std::size_t A = std::size_t(max_assign_), N = std::size_t(max_tokens);
    sc_.xg.reserve(A * C);
    sc_.g.reserve(std::max(A * H, N * Hs));
    sc_.u.reserve(std::max(A * H, N * Hs));
    sc_.ye.reserve(A * C);
    sc_.sy.reserve(N * C);
    sc_.tmp.reserve(N * C);
    row_.resize(A);
    count_.resize(E + 1);
    for (auto* v : {&kept_, &kept_expert_, &sorted_, &group_expert_}) v->resize(A);
    group_off_.resize(A + 1);
    sort_kv_.resize(2 * A);
    (void)glu;
  }

  void forward(float* y, const float* x, int n) override {
    // The router keeps per-thread scratch for the threads it was bound with; a caller may have
    // raised the thread count since (omp_set_num_threads), so bind again for the new count.
    if (max_threads() > bound_threads_) bind_router();
    MoeParams<float> p;
    p.router = router_w_.data();
    p.bias = bias_.empty() ? nullptr : bias_.data();
    p.w_noise = noise_w_.empty() ? nullptr : noise_w_.data();
    MoeStep<float> st;
    st.batch = 1;
    st.seq_len = n;
    st.training = false;
    st.layer = layer_;
    router_.forward(x, p, st);
    const Assignments<float>& a = router_.assignments();
    group_by_expert(a, x);
    run_experts();
    combine(y, a, n);
    if (spec_.n_shared > 0) shared(y, x, n);
  }

  uint64_t active_bytes() const override {
    // The k chosen experts' three matrices (all experts have the same size), the router and the
    // shared experts.
    uint64_t expert = matrix_bytes(up_[0]) + matrix_bytes(down_[0]);
    if (!gate_.empty()) expert += matrix_bytes(gate_[0]);
    // k as a decode step routes it (router.cpp: token choice k, expert choice at B = 1
    // top-round(cf)); router_.experts_per_token() is set only once a forward has run.
    const int k = spec_.kind == RouterKind::kExpertChoice
                      ? std::clamp(int(std::lround(spec_.eval_capacity_factor)), 1, int(spec_.E))
                      : spec_.k;
    uint64_t b = uint64_t(k) * expert + router_w_.size() * 4;
    for (std::size_t s = 0; s < s_up_.size(); ++s) {
      b += matrix_bytes(s_up_[s]) + matrix_bytes(s_down_[s]);
      if (!s_gate_.empty()) b += matrix_bytes(s_gate_[s]);
    }
    return b;
  }

 private:
  // The layer's spec with capacity off for token choice: generation decodes token by token, and
  // a token alone never overflows an expert, so prefill must not drop either. Expert choice keeps
  // its eval factor: one sequence routes each token to round(cf) experts (router.h).
  static MoeSpec inference_spec(const FfnConfig& f, int C) {
    MoeSpec s = MoeSpec::from_config(f, C);
    if (s.kind != RouterKind::kExpertChoice) s.eval_capacity_factor = 0;
    s.validate();
    return s;
  }

  void bind_router() {
    Arena measure;
    router_.bind(measure, 1, max_tokens_, int(max_assign_));
    arena_ = Arena(measure.used());
    router_.bind(arena_, 1, max_tokens_, int(max_assign_));
    bound_threads_ = max_threads();
    sort_counters_.resize(group_by_key_counter_ints(spec_.E, bound_threads_));
  }

  // Kept assignments grouped by expert (kernels/group_by_key.h: stable, so within an expert in
  // assignment order, and the same for any thread count); each one's row in the grouped buffers
  // is row_[a], expert e's rows are count_[e] .. count_[e+1]; x's rows gathered into xg.
  void group_by_expert(const Assignments<float>& a, const float* x) {
    const int E = spec_.E;
    const int64_t C = spec_.C;
    MOE_CHECK(a.count <= max_assign_, "MoE block {}: {} assignments, sized for {}", layer_, a.count,
              max_assign_);
    int kept = 0;
    for (int i = 0; i < a.count; ++i) {
      row_[i] = -1;
      if (a.fate[i] != AssignmentFate::kKept) continue;
      kept_[kept] = i;
      kept_expert_[kept++] = a.expert[i];
    }
    const int groups =
        group_by_key(kept_expert_.data(), kept, E, sort_kv_.data(), sort_counters_.data(),
                     sorted_.data(), group_expert_.data(), group_off_.data());
    std::fill(count_.begin(), count_.end(), 0);
    for (int g = 0; g < groups; ++g)
      count_[group_expert_[g] + 1] = group_off_[g + 1] - group_off_[g];
    for (int e = 0; e < E; ++e) count_[e + 1] += count_[e];
    for (int r = 0; r < kept; ++r) {
      const int i = kept_[sorted_[r]];
      row_[i] = r;
      std::memcpy(sc_.xg.data() + std::size_t(r) * C, x + std::size_t(a.token[i]) * C,
                  sizeof(float) * C);
    }
  }

  void run_experts() {
    const int E = spec_.E;
    const int64_t C = spec_.C, H = spec_.H;
    const bool glu = spec_.act == Activation::kSwiGLU;
    float *xg = sc_.xg.data(), *g = sc_.g.data(), *u = sc_.u.data(), *ye = sc_.ye.data();
    tasks_.clear();
    for (int e = 0; e < E; ++e) {
      const int64_t r0 = count_[e], m = count_[e + 1] - r0;
      if (m == 0) continue;
      tasks_.push_back({u + r0 * H, H, xg + r0 * C, C, m, up_[e]});
      if (glu) tasks_.push_back({g + r0 * H, H, xg + r0 * C, C, m, gate_[e]});
    }
    qmatmul_many(tasks_);
    const std::size_t rows = std::size_t(count_[E]);
    activate(u, g, u, rows * H, spec_.act);
    tasks_.clear();
    for (int e = 0; e < E; ++e) {
      const int64_t r0 = count_[e], m = count_[e + 1] - r0;
      if (m > 0) tasks_.push_back({ye + r0 * C, C, u + r0 * H, H, m, down_[e]});
    }
    qmatmul_many(tasks_);
  }

  // y [n, C] = Σ over each token's kept assignments, in assignment order, of gate · expert row.
  void combine(float* y, const Assignments<float>& a, int n) {
    const int64_t C = spec_.C;
    std::memset(y, 0, sizeof(float) * n * C);
    for (int i = 0; i < a.count; ++i) {
      if (row_[i] < 0) continue;
      float* yn = y + std::size_t(a.token[i]) * C;
      const float* r = sc_.ye.data() + std::size_t(row_[i]) * C;
      const float g = a.gate[i];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yn[c] += g * r[c];
    }
  }

  // y (+=) the shared experts on every token, summed; × σ(x·w_sg) per token with shared_gate.
  void shared(float* y, const float* x, int n) {
    const int64_t C = spec_.C, Hs = spec_.shared_H();
    const bool glu = spec_.act == Activation::kSwiGLU;
    // The routed experts are done with g and u: the shared experts reuse them.
    float *g = sc_.g.data(), *u = sc_.u.data(), *sy = sc_.sy.data(), *tmp = sc_.tmp.data();
    const std::size_t nc = std::size_t(n) * C;
    std::fill(sy, sy + nc, 0.f);
    for (std::size_t s = 0; s < s_up_.size(); ++s) {
      std::vector<QMatmulTask> t = {{u, Hs, x, C, n, s_up_[s]}};
      if (glu) t.push_back({g, Hs, x, C, n, s_gate_[s]});
      qmatmul_many(t);
      activate(u, g, u, std::size_t(n) * Hs, spec_.act);
      qmatmul(tmp, C, u, Hs, n, s_down_[s]);
      for (std::size_t i = 0; i < nc; ++i) sy[i] += tmp[i];
    }
    for (int t = 0; t < n; ++t) {
      const float* xn = x + std::size_t(t) * C;
      float sg = 1.f;
      if (spec_.shared_gate) {
        float z = 0;
        for (int64_t c = 0; c < C; ++c) z += xn[c] * s_router_[c];
        sg = 1.f / (1.f + std::exp(-z));
      }
      float* yn = y + std::size_t(t) * C;
      const float* o = sy + std::size_t(t) * C;
      for (int64_t c = 0; c < C; ++c) yn[c] += sg * o[c];
    }
  }

  MoeSpec spec_;
  Router<float> router_;
  Arena arena_;
  int layer_, max_tokens_;
  int64_t max_assign_ = 0;
  int bound_threads_ = 0;
  std::vector<float> router_w_, bias_, noise_w_, s_router_;
  std::vector<WeightMatrix> gate_, up_, down_, s_gate_, s_up_, s_down_;
  FfnScratch& sc_;
  std::vector<int64_t> row_, count_;  // [max_assign] row of each assignment, [E + 1] offsets
  // group_by_key's input (the kept assignments and their experts), output and scratch.
  std::vector<int32_t> kept_, kept_expert_, sorted_, group_expert_, group_off_;
  std::vector<uint64_t> sort_kv_;
  std::vector<int> sort_counters_;
  std::vector<QMatmulTask> tasks_;
};

// ---- PEER (and any other kind): the training layer itself, in fp32, evaluation mode ----------

class TrainingFfnBlock final : public FfnBlock {
 public:
  TrainingFfnBlock(const FfnConfig& f, const ModelConfig& m, int layer, const std::string& p,
                   WeightLoader& w, int max_tokens) {
    ffn_ = make_feed_forward(f, m, params_, p, layer, single_process_communicator());
    params_.allocate();
    for (Param& q : params_.all()) {
      w.reader().read(q.name, q.shape, q.w);
      bytes_ += uint64_t(q.numel) * sizeof(float);
    }
    w.owned_bytes += bytes_;
    max_tokens_ = max_tokens;
    bind();
  }
  void forward(float* y, const float* x, int n) override {
    // Per-thread scratch is sized at bind: bind again if the thread count has grown since.
    if (max_threads() > bound_threads_) bind();
    StepInfo si;
    si.training = false;
    si.batch = 1;
    si.seq_len = n;
    si.loss_scale = 0;
    ffn_->forward(y, x, n, si);
  }
  uint64_t active_bytes() const override { return bytes_; }  // an upper bound: PEER reads rows

 private:
  void bind() {
    Arena measure;
    ffn_->bind(measure, 1, max_tokens_);
    acts_ = Arena(measure.used());
    ffn_->bind(acts_, 1, max_tokens_);
    bound_threads_ = max_threads();
  }

  int max_tokens_ = 0, bound_threads_ = 0;
  ParamStore params_;
  std::unique_ptr<FeedForward> ffn_;
  Arena acts_;
  uint64_t bytes_ = 0;
};

}  // namespace

std::unique_ptr<FfnBlock> make_ffn_block(const ModelConfig& cfg, int layer, WeightLoader& w,
                                         int max_tokens, FfnScratch& scratch) {
  const FfnConfig& f = cfg.ffn_for(layer);
  const std::string p = fmt::format("layers.{}.ffn", layer);
  switch (f.kind) {
    case FfnConfig::Kind::kDense:
      return std::make_unique<DenseBlock>(f, cfg, p, w, max_tokens, scratch);
    case FfnConfig::Kind::kMoe:
      return std::make_unique<MoeBlock>(f, cfg, layer, p, w, max_tokens, scratch);
    default:
      return std::make_unique<TrainingFfnBlock>(f, cfg, layer, p, w, max_tokens);
  }
}

}  // namespace moe::infer::detail
