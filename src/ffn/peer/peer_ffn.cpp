#include "moe/ffn/peer/peer_ffn.h"

#include <fmt/format.h>

#include <cmath>

#include "moe/core/error.h"

namespace moe {

namespace {

// The one place that reads the FFN config's PEER fields.
PeerSpec peer_spec(const FfnConfig& f, const ModelConfig& model) {
  PeerSpec s;
  s.C = model.d_model;
  s.S = int(std::lround(std::sqrt(double(f.peer.num_experts))));
  s.heads = f.peer.heads;
  s.k = f.peer.top_k;
  s.d_key = f.peer.d_key;
  s.gelu = f.activation != Activation::kReLU;
  s.qnorm = f.peer.query_norm == PeerFfnConfig::QueryNorm::kBatchNorm   ? QueryNorm::kBatch
            : f.peer.query_norm == PeerFfnConfig::QueryNorm::kLayerNorm ? QueryNorm::kLayer
                                                                        : QueryNorm::kNone;
  return s;
}

}  // namespace

PeerFfn::PeerFfn(const FfnConfig& f, const ModelConfig& model, ParamStore& ps,
                 const std::string& prefix, int layer, Communicator& comm)
    : comm_(comm), spec_(peer_spec(f, model)), layer_index_(layer), layer_(spec_) {
  const PeerSpec& s = spec_;
  const int D = s.heads * s.d_key, C = s.C;
  const int64_t E = s.experts();
  query_weight_ =
      ps.add(prefix + ".query.weight", {D, C}, Init::kNormal, 1.f / std::sqrt(float(C)), true);
  query_bias_ = ps.add(prefix + ".query.bias", {D}, Init::kZeros, 0, false);
  if (s.qnorm != QueryNorm::kNone) {
    norm_weight_ = ps.add(prefix + ".query_norm.weight", {D}, Init::kOnes, 0, false);
    norm_bias_ = ps.add(prefix + ".query_norm.bias", {D}, Init::kZeros, 0, false);
  }
  if (s.qnorm == QueryNorm::kBatch) {
    running_mean_ = ps.add(prefix + ".query_norm.running_mean", {D}, Init::kZeros, 0, false);
    running_var_ = ps.add(prefix + ".query_norm.running_var", {D}, Init::kOnes, 0, false);
    running_mean_->trainable = running_var_->trainable = false;
  }
  // Sub-keys ~ N(0, 2/dk) so each half-score is O(1) for unit-variance queries.
  const float key_std = std::sqrt(2.f / s.d_key);
  keys1_ = ps.add(prefix + ".keys1", {s.S, s.d_key / 2}, Init::kNormal, key_std, false);
  keys2_ = ps.add(prefix + ".keys2", {s.S, s.d_key / 2}, Init::kNormal, key_std, false);
  u_ = ps.add(prefix + ".u", {E, C}, Init::kNormal, 1.f / std::sqrt(float(C)), false);
  v_ = ps.add(prefix + ".v", {E, C}, Init::kNormal, model.init_std, false);
  u_->make_row_sparse();
  v_->make_row_sparse();
  usage_.assign(s.heads, std::vector<double>(E, 0.0));
  if (comm_.size() > 1) layer_.set_parallel(&comm_);
}

void PeerFfn::bind(Arena& acts, int max_batch, int max_seq) {
  layer_.bind(acts, max_batch * max_seq);
}

void PeerFfn::set_precision(Precision p) {
  precision_ = p;
  layer_.disable_bf16();
  low_ = Arena();
  if (p == Precision::kFp32) return;
  low_ = layer_.enable_bf16();
  refresh_low_precision();
}

void PeerFfn::refresh_low_precision() {
  if (precision_ == Precision::kBf16) layer_.refresh_bf16(params());
}

PeerParams<float> PeerFfn::params() const {
  auto w = [](const Param* p) { return p ? p->w : nullptr; };
  return {query_weight_->w, query_bias_->w, w(norm_weight_), w(norm_bias_),    keys1_->w,
          keys2_->w,        u_->w,          v_->w,           w(running_mean_), w(running_var_)};
}

void PeerFfn::forward(float* out, const float* x, int N, const StepInfo& info) {
  // A training forward may update the query batch norm's running statistics and does count
  // usage: a second forward of the same micro-batch would change what the step computes.
  MOE_CHECK(!info.count_pass,
            "model.ffn.aux_loss_scope global_batch with train.grad_accum > 1 runs a counting "
            "forward of every micro-batch, which PEER layers cannot take: use grad_accum 1 (more "
            "ranks or a larger batch_size) or another aux_loss_scope");
  layer_.forward(out, x, params(), N, info.training);
  // Only the retrieved rows of u and v will get gradients: tell the store and the optimizer.
  if (info.training && info.loss_scale > 0) {
    const std::size_t A = std::size_t(N) * spec_.heads * spec_.k;
    u_->touch_rows(layer_.ids(), A);
    v_->touch_rows(layer_.ids(), A);
  }
  // Usage: accumulate router weights per expert and head. One thread per head's histogram, in
  // token order, so the sums do not depend on the thread count (at 2^20 experts these are 8 MiB
  // per head, added to at random: 2048 tokens, h = 8, k = 16 took ~2.5 ms on one thread, ~0.8 ms
  // on two, in a micro-benchmark of this loop).
  const int h = spec_.heads, k = spec_.k;
  const int32_t* ids = layer_.ids();
  const float* wts = layer_.weights();
#pragma omp parallel for schedule(static) if (std::int64_t(N) * k >= 4096)
  for (int j = 0; j < h; ++j) {
    double* z = usage_[j].data();
    for (int n = 0; n < N; ++n)
      for (int s = 0; s < k; ++s) {
        const int a = (n * h + j) * k + s;
        z[ids[a]] += wts[a];
      }
  }
  ++forwards_;
  // Distributed training: each rank saw its slice; metrics() sums the histograms over ranks.
  if (info.training && comm_.size() > 1) dist_acc_ = true;
}

void PeerFfn::backward(float* dx, const float* dout, const float* x, int N) {
  auto g = [](const Param* p) { return p ? p->g : nullptr; };
  // u_->row_rule / v_->row_rule: set when the optimizer updates the tables in this backward.
  layer_.backward(dx,
                  {query_weight_->g, query_bias_->g, g(norm_weight_), g(norm_bias_), keys1_->g,
                   keys2_->g, u_->g, v_->g, u_->row_rule, v_->row_rule},
                  dout, x, params());
}

std::string PeerFfn::describe() const {
  return fmt::format("peer {} experts h={} k={} d_key={} {}{}", spec_.experts(), spec_.heads,
                     spec_.k, spec_.d_key,
                     spec_.qnorm == QueryNorm::kBatch   ? "query-BN"
                     : spec_.qnorm == QueryNorm::kLayer ? "query-LN"
                                                        : "no query norm",
                     precision_ == Precision::kBf16 ? " bf16 query and sub-key products" : "");
}

nlohmann::json PeerFfn::metrics() const {
  if (forwards_ == 0) return nullptr;
  std::vector<double> all(spec_.experts(), 0.0);
  nlohmann::json heads = nlohmann::json::array();
  std::vector<std::vector<double>> global;
  if (dist_acc_) {  // a collective: every rank logs at the same steps
    global = usage_;
    for (auto& z : global) comm_.allreduce_sum(z.data(), z.size());
  }
  for (auto& z : dist_acc_ ? global : usage_) {
    for (std::size_t e = 0; e < z.size(); ++e) all[e] += z[e];
    const UsageStats u = usage_stats(z);
    heads.push_back({{"usage", u.usage}, {"kl", u.kl}, {"effective", u.effective}});
  }
  const UsageStats u = usage_stats(all);
  return {{"layer", layer_index_}, {"kind", "peer"}, {"experts", spec_.experts()},
          {"usage", u.usage},      {"kl", u.kl},     {"effective", u.effective},
          {"per_head", heads}};
}

void PeerFfn::reset_metrics() {
  for (auto& z : usage_) std::fill(z.begin(), z.end(), 0.0);
  forwards_ = 0;
  dist_acc_ = false;
}

}  // namespace moe
