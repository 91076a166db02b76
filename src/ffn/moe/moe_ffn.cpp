#include "moe/ffn/moe/moe_ffn.h"

#include <fmt/format.h>

#include <cmath>

#include "moe/core/error.h"
#include "moe/ffn/dense.h"
#include "moe/ffn/moe/routing_rules.h"
#include "moe/ffn/peer/peer_ffn.h"

namespace moe {

MoeFfn::MoeFfn(const FfnConfig& f, const ModelConfig& model, ParamStore& ps,
               const std::string& prefix, int layer, Communicator& comm)
    : comm_(comm),
      spec_(MoeSpec::from_config(f, model.d_model)),
      layer_index_(layer),
      router_kind_(enum_name(f.moe.router.kind)),
      layer_(spec_) {
  const int E = spec_.E, C = spec_.C, H = spec_.H, S = spec_.n_shared;
  const bool glu = spec_.act == Activation::kSwiGLU;
  // Router: small uniform init U(±1/√C) (REFERENCE §1: a zero router would send every token to
  // experts 0..k−1). The noise projection starts at zero as in Shazeer et al.
  router_ =
      ps.add(prefix + ".router.weight", {E, C}, Init::kUniform, 1.f / std::sqrt(float(C)), false);
  if (spec_.kind == RouterKind::kNoisyTopK)
    w_noise_ = ps.add(prefix + ".router.w_noise", {E, C}, Init::kZeros, 0, false);
  if (spec_.bias_balance) {
    bias_ = ps.add(prefix + ".router.bias", {E}, Init::kZeros, 0, false);
    bias_->trainable = false;
  }
  if (spec_.kind == RouterKind::kRelu) {
    // ReMoE's λ as its exponent (starts at 0: λ = λ_0), state saved with the weights.
    l1_exponent_ = ps.add(prefix + ".router.l1_exponent", {1}, Init::kZeros, 0, false);
    l1_exponent_->trainable = false;
    const RouterConfig& r = f.moe.router;
    relu_schedule_ = std::make_shared<ReluL1Schedule>(r.relu_l1_init, r.relu_l1_rate, spec_.k, E);
    relu_schedule_->add_layer(l1_exponent_);
  }
  // Parallel training: routing statistics over the global batch whenever there are several
  // ranks; with expert parallelism this rank holds only its block of E/P experts.
  Communicator& w = comm_;
  const bool ep = model.expert_parallel > 1;
  MOE_CHECK(!ep || model.expert_parallel == w.size(),
            "expert_parallel {}: expected 1 (off) or the number of MPI ranks ({})",
            model.expert_parallel, w.size());
  layer_.set_parallel(w.size() > 1 ? &w : nullptr, ep);
  const int El = layer_.local_experts(), e0 = layer_.first_local_expert();
  // Experts initialised like the dense FFN; the down projection also gets the depth scaling.
  const float std_in = model.init_std, std_out = model.init_std / std::sqrt(2.f * model.n_layers);
  auto shard = [&](Param* p) {
    if (ep) {
      p->global_rows = E;
      p->shard_first = e0;
    }
    return p;
  };
  if (glu)
    w_gate_ = shard(ps.add(prefix + ".experts.w_gate", {El, H, C}, Init::kNormal, std_in, true));
  w_up_ = shard(ps.add(prefix + ".experts.w_up", {El, H, C}, Init::kNormal, std_in, true));
  w_down_ = shard(ps.add(prefix + ".experts.w_down", {El, C, H}, Init::kNormal, std_out, true));
  if (S > 0) {
    const int Hs = spec_.shared_H();
    if (glu) s_gate_ = ps.add(prefix + ".shared.w_gate", {S, Hs, C}, Init::kNormal, std_in, true);
    s_up_ = ps.add(prefix + ".shared.w_up", {S, Hs, C}, Init::kNormal, std_in, true);
    s_down_ = ps.add(prefix + ".shared.w_down", {S, C, Hs}, Init::kNormal, std_out, true);
    // Qwen2-MoE's shared gate starts at zero: σ(0) = 1/2 on every token.
    if (spec_.shared_gate) s_router_ = ps.add(prefix + ".shared.gate", {C}, Init::kZeros, 0, false);
  }
  acc_tokens_.assign(E, 0);
  step_loads_.assign(E, 0.0);
}

void MoeFfn::bind(Arena& acts, int max_batch, int max_seq) {
  layer_.bind(acts, max_batch, max_seq);
}

static const float* w_of(const Param* p) { return p ? p->w : nullptr; }
static float* g_of(const Param* p) { return p ? p->g : nullptr; }

MoeParams<float> MoeFfn::params() const {
  return {w_of(router_), w_of(w_noise_), w_of(bias_), w_of(w_gate_), w_of(w_up_),
          w_of(w_down_), w_of(s_gate_),  w_of(s_up_), w_of(s_down_), w_of(s_router_)};
}

MoeGrads<float> MoeFfn::grads() const {
  return {g_of(router_), g_of(w_noise_), g_of(w_gate_), g_of(w_up_),    g_of(w_down_),
          g_of(s_gate_), g_of(s_up_),    g_of(s_down_), g_of(s_router_)};
}

void MoeFfn::forward(float* out, const float* x, int N, const StepInfo& info) {
  MOE_CHECK(N == info.batch * info.seq_len, "MoE forward: {} tokens but batch {} × seq {}", N,
            info.batch, info.seq_len);
  MoeStep<float> step;
  step.batch = info.batch;
  step.seq_len = info.seq_len;
  step.training = info.training;
  step.seed = info.seed;
  step.step = info.step;
  step.layer = layer_index_;
  step.loss_scale = info.loss_scale;
  step.count_pass = info.count_pass && info.training;
  if (relu_schedule_) step.relu_l1 = relu_schedule_->layer_coefficient();
  layer_.forward(out, x, params(), step);
  // A counting forward only fed the router's step counts: no loads, no metrics, no sparsity.
  if (step.count_pass) return;
  if (relu_schedule_ && info.training) relu_schedule_->add_sparsity(layer_.stats().sparsity);
  // DeepSeek-V3: the loads of the step's forwards, for the bias update in end_step.
  if (bias_ && info.training) {
    layer_.add_selections(step_loads_.data());
    ++step_forwards_;
  }
  const MoeStats& st = layer_.stats();
  for (std::size_t e = 0; e < acc_tokens_.size(); ++e) acc_tokens_[e] += st.tokens_per_expert[e];
  acc_assign_ += st.assignments;
  acc_dropped_ += st.dropped;
  acc_entropy_ += st.router_entropy;
  acc_aux_ += st.aux_loss;
  acc_z_ += st.z_loss;
  acc_active_ += st.active_per_token;
  acc_sparsity_ += st.sparsity;
  ++acc_forwards_;
}

bool MoeFfn::needs_count_pass() const {
  // Expert choice has no balancing loss; relu (ReMoE) applies none (its L1 loss takes f_e from
  // the forward's own selections).
  return spec_.aux_scope == AuxLossScope::kGlobalBatch && spec_.alpha > 0 &&
         spec_.kind != RouterKind::kExpertChoice && spec_.kind != RouterKind::kRelu;
}

void MoeFfn::end_step() {
  // Once per optimizer step, from the loads of all its micro-batches; each forward's loads are
  // already summed over the ranks (Router::apply_capacity), so every rank updates alike.
  // relu: each forward's sparsity is over the global batch, so every rank's λ moves alike.
  if (relu_schedule_) relu_schedule_->end_step();
  if (!bias_ || step_forwards_ == 0) return;
  update_selection_bias(bias_->w, step_loads_.data(), spec_.E, spec_.bias_rate, spec_.bias_update);
  std::fill(step_loads_.begin(), step_loads_.end(), 0.0);
  step_forwards_ = 0;
}

void MoeFfn::backward(float* dx, const float* dout, const float* x, int N) {
  layer_.backward(dx, grads(), dout, x, params());
}

std::string MoeFfn::describe() const {
  return fmt::format(
      "moe {} E={} k={} H={}{}{}{}", router_kind_, spec_.E, spec_.k, spec_.H,
      spec_.n_shared ? fmt::format(" shared={}{}{}", spec_.n_shared,
                                   spec_.Hs > 0 ? fmt::format("×{}", spec_.Hs) : "",
                                   spec_.shared_gate ? " gated" : "")
                     : "",
      spec_.capacity_factor > 0 ? fmt::format(" cf={}", spec_.capacity_factor) : " dropless",
      layer_.bf16() ? " bf16" : "");
}

nlohmann::json MoeFfn::metrics() const {
  if (acc_forwards_ == 0) return nullptr;
  nlohmann::json j = metrics_common();
  if (layer_.local_experts() < spec_.E) {
    // Expert parallelism: this rank's all-to-all traffic since the last reset.
    j["a2a_s"] = layer_.comm_stats().seconds;
    j["a2a_bytes"] = layer_.comm_stats().bytes;
  }
  return j;
}

nlohmann::json MoeFfn::metrics_common() const {
  int64_t total = 0, mx = 0;
  int unused = 0;
  for (int64_t c : acc_tokens_) {
    total += c;
    mx = std::max(mx, c);
    unused += c == 0;
  }
  const double mean = double(total) / acc_tokens_.size();
  nlohmann::json j = {{"layer", layer_index_},
                      {"tokens_per_expert", acc_tokens_},
                      {"dropped_pct", acc_assign_ ? 100.0 * acc_dropped_ / acc_assign_ : 0.0},
                      {"router_entropy", acc_entropy_ / acc_forwards_},
                      {"unused_experts", unused},
                      {"max_over_mean_load", mean > 0 ? mx / mean : 0.0},
                      {"aux_loss", acc_aux_ / acc_forwards_},
                      {"z_loss", acc_z_ / acc_forwards_}};
  if (relu_schedule_) {
    // ReMoE: mean active experts per token and sparsity over the forwards, the current λ.
    j["active_experts"] = acc_active_ / acc_forwards_;
    j["sparsity"] = acc_sparsity_ / acc_forwards_;
    j["relu_l1_coef"] = relu_schedule_->lambda();
  }
  return j;
}

void MoeFfn::reset_metrics() {
  layer_.reset_comm_stats();
  std::fill(acc_tokens_.begin(), acc_tokens_.end(), 0);
  acc_assign_ = acc_dropped_ = acc_forwards_ = 0;
  acc_entropy_ = acc_aux_ = acc_z_ = 0;
  acc_active_ = acc_sparsity_ = 0;
}

void share_relu_schedule(const std::vector<std::unique_ptr<FeedForward>>& ffns) {
  std::shared_ptr<ReluL1Schedule> shared;
  for (const auto& f : ffns) {
    auto* m = dynamic_cast<MoeFfn*>(f.get());
    if (!m || !m->relu_schedule_) continue;
    if (!shared) {
      shared = m->relu_schedule_;
      continue;
    }
    MOE_CHECK(shared->same_settings(*m->relu_schedule_),
              "model.ffn (layer {}): the relu layers share one L1 coefficient, so top_k, "
              "num_experts, router.relu_l1_init and router.relu_l1_rate must be equal in all",
              m->layer_index_);
    shared->add_layer(m->l1_exponent_);
    m->relu_schedule_ = shared;
  }
}

std::vector<int32_t> MoeFfn::last_choices(int* per_token) const {
  std::vector<int32_t> v = layer_.selected_experts();
  *per_token = v.empty() ? 0 : layer_.experts_per_token();
  return v;
}

std::unique_ptr<FeedForward> make_feed_forward(const FfnConfig& ffn, const ModelConfig& model,
                                               ParamStore& params, const std::string& prefix,
                                               int layer, Communicator& comm) {
  using Kind = FfnConfig::Kind;
  if (ffn.kind == Kind::kDense) return std::make_unique<DenseFfn>(ffn, model, params, prefix);
  if (ffn.kind == Kind::kMoe)
    return std::make_unique<MoeFfn>(ffn, model, params, prefix, layer, comm);
  if (ffn.kind == Kind::kPeer)
    return std::make_unique<PeerFfn>(ffn, model, params, prefix, layer, comm);
  MOE_FAIL("ffn kind '{}' is not available (known: dense, moe, peer)", enum_name(ffn.kind));
}

}  // namespace moe
