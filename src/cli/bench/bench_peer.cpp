// moe bench peer: one PEER layer's training step, the layer bench/run_bench.sh puts side by side
// with PyTorch's nn.Embedding(sparse=True) + SparseAdam (bench/pytorch_peer.py), and the share of
// this machine's memory bandwidth the step reaches.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench.h"
#include "moe/core/arena.h"
#include "moe/core/error.h"
#include "moe/core/params.h"
#include "moe/core/rng.h"
#include "moe/ffn/peer/peer_layer.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/membw.h"
#include "moe/model/config.h"
#include "moe/train/optimizer.h"
#include "moe/train/train_config.h"

namespace moe::cli {

namespace {

struct PeerArgs {
  int d_model = 256, heads = 8, top_k = 16, d_key = 128, tokens = 2048, repeats = 5;
  int64_t experts = 1048576;
  bool json = false;
  // bf16: the query projection and the sub-key scores in bf16 (PeerLayer::enable_bf16), W_q
  // rounded and the sub-keys packed at the start of every step, as training does.
  Precision precision = Precision::kFp32;
};

struct PeerResult {
  double ms_per_step = 0;       // median of the timed steps
  std::size_t unique_rows = 0;  // distinct experts retrieved in the last step
  double bytes = 0;             // estimated bytes moved per step (fp32)
};

// Query Linear+bias, BatchNorm on batch statistics, sub-keys shared by the heads, GELU, per-head
// softmax; forward, backward, Adam (lr 1e-3) on the dense parameters and the row-lazy rule on
// u, v (applied in the backward); loss = mean(y²). One untimed step, then the median of repeats.
PeerResult measure_peer_step(const PeerArgs& a, const PeerSpec& sp) {
  const int S = sp.S, C = sp.C, D = sp.heads * sp.d_key, N = a.tokens;
  const int64_t E = sp.experts();
  ParamStore ps;
  Param* wq = ps.add("query.weight", {D, C}, Init::kNormal, 1.f / std::sqrt(float(C)), true);
  Param* bq = ps.add("query.bias", {D}, Init::kZeros, 0, false);
  Param* gm = ps.add("query_norm.weight", {D}, Init::kOnes, 0, false);
  Param* bt = ps.add("query_norm.bias", {D}, Init::kZeros, 0, false);
  Param* rm = ps.add("query_norm.running_mean", {D}, Init::kZeros, 0, false);
  Param* rv = ps.add("query_norm.running_var", {D}, Init::kOnes, 0, false);
  const float ks = std::sqrt(2.f / sp.d_key);
  Param* k1 = ps.add("keys1", {S, sp.d_key / 2}, Init::kNormal, ks, false);
  Param* k2 = ps.add("keys2", {S, sp.d_key / 2}, Init::kNormal, ks, false);
  Param* u = ps.add("u", {E, C}, Init::kNormal, 1.f / std::sqrt(float(C)), false);
  Param* v = ps.add("v", {E, C}, Init::kNormal, 0.02f, false);
  ps.allocate();
  ps.initialize(1);
  rm->trainable = rv->trainable = false;
  u->make_row_sparse();
  v->make_row_sparse();
  TrainConfig tc;
  tc.lr = tc.min_lr = 1e-3f;
  tc.warmup_steps = 0;
  tc.weight_decay = 0;
  tc.grad_clip = 0;
  AdamWOptimizer opt(ps, tc);
  PeerLayer<float> layer(sp);
  Arena m;
  layer.bind(m, N);
  Arena acts(m.used());
  layer.bind(acts, N);
  Arena low;
  if (a.precision == Precision::kBf16) low = layer.enable_bf16();
  std::vector<float> x(std::size_t(N) * C), y(x.size()), dy(x.size()), dx(x.size());
  {
    const Rng r(7, stream_id(kPurposeInit, 5));
#pragma omp parallel for schedule(static)
    for (std::ptrdiff_t i = 0; i < std::ptrdiff_t(x.size()); ++i) x[i] = r.normal(i);
  }
  PeerParams<float> p{wq->w, bq->w, gm->w, bt->w, k1->w, k2->w, u->w, v->w, rm->w, rv->w};
  // u->row_rule, v->row_rule: the optimizer's rule for this step (prepare() below), read when
  // the backward runs.
  PeerGrads<float> g{wq->g, bq->g, gm->g, bt->g, k1->g, k2->g, u->g, v->g};
  std::vector<double> times;
  std::size_t unique_rows = 0;
  for (int it = 0; it < a.repeats + 1; ++it) {
    auto t0 = BenchClock::now();
    ps.zero_grad();
    if (layer.bf16()) layer.refresh_bf16(p);
    layer.forward(y.data(), x.data(), p, N, true);
    u->touch_rows(layer.ids(), std::size_t(N) * sp.heads * sp.k);
    v->touch_rows(layer.ids(), std::size_t(N) * sp.heads * sp.k);
    const float sc = 2.f / (float(N) * C);
    for (std::size_t j = 0; j < y.size(); ++j) dy[j] = sc * y[j];
    std::fill(dx.begin(), dx.end(), 0.f);
    opt.prepare(it);  // no clipping here: u and v are updated in the backward, row by row
    g.u_rule = u->row_rule;
    g.v_rule = v->row_rule;
    layer.backward(dx.data(), g, dy.data(), x.data(), p);
    unique_rows = u->touched.size();
    opt.step(it);
    if (it > 0) times.push_back(seconds_since(t0));
  }
  // Bytes moved per step (estimate, fp32): each retrieval reads u_e and v_e in the forward and
  // again in the backward, and the grouped gradient pass reads x, dy rows; it forms du, dv of
  // a row in cache and updates the row at once, reading and writing w, m, v (two tables).
  const double A = double(N) * sp.heads * sp.k;
  const double bytes = 4.0 * C * (4 * A + 2 * A + 2 * 6.0 * double(unique_rows));
  return {median(times) * 1e3, unique_rows, bytes};
}

void print_peer(const PeerArgs& a, const PeerSpec& sp, const PeerResult& r, double bandwidth) {
  const int N = a.tokens;
  const double ms = r.ms_per_step;
  const double frac = r.bytes / (ms / 1e3) / bandwidth;
  if (a.json)
    fmt::print("{}\n", nlohmann::json({{"ms_per_step", ms},
                                       {"tokens_per_s", N / (ms / 1e3)},
                                       {"experts", sp.experts()},
                                       {"unique_rows_per_step", r.unique_rows},
                                       {"bytes_per_step", r.bytes},
                                       {"memory_bandwidth_bytes_per_s", bandwidth},
                                       {"bandwidth_fraction", frac},
                                       {"threads", omp_get_max_threads()},
                                       {"precision", enum_name(a.precision)}})
                           .dump());
  else
    fmt::print(
        "peer layer C={} experts={} h={} k={} d_key={} tokens={} {}: {:.1f} ms/step, {:.0f} "
        "tokens/s; {} distinct rows touched; ~{:.1f} MB moved per step = {:.1f}% of the "
        "measured {:.1f} GB/s\n  (defaults: sub-keys shared by the heads, query "
        "Linear+bias then BatchNorm on batch statistics, GELU, per-head softmax, Adam "
        "lr 1e-3 dense, lazy per-row Adam on u and v, loss = mean(y²))\n",
        sp.C, sp.experts(), sp.heads, sp.k, sp.d_key, N, enum_name(a.precision), ms, N / (ms / 1e3),
        r.unique_rows, r.bytes / 1e6, 100 * frac, bandwidth / 1e9);
}

}  // namespace

void register_bench_peer(CLI::App& bench) {
  auto pa = std::make_shared<PeerArgs>();
  CLI::App* pb = bench.add_subcommand(
      "peer",
      "One PEER layer training step: query Linear+bias, BatchNorm (batch statistics), "
      "shared sub-keys, GELU, per-head softmax; forward, backward, Adam (lr 1e-3) on the "
      "dense parameters and the row-lazy rule on u, v; loss = mean(y²)");
  pb->add_option("--d-model", pa->d_model)->check(CLI::PositiveNumber);
  pb->add_option("--experts", pa->experts, "S² (a perfect square)")->check(CLI::PositiveNumber);
  pb->add_option("--heads", pa->heads)->check(CLI::PositiveNumber);
  pb->add_option("--top-k", pa->top_k)->check(CLI::PositiveNumber);
  pb->add_option("--d-key", pa->d_key)->check(CLI::PositiveNumber);
  pb->add_option("--tokens", pa->tokens)->check(CLI::PositiveNumber);
  pb->add_option("--repeats", pa->repeats, "timed steps (median)")->check(CLI::PositiveNumber);
  pb->add_option("--precision", pa->precision,
                 "the query and sub-key products: fp32, or bf16 (bf16 operands, f32 "
                 "accumulation)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, Precision>{{"fp32", Precision::kFp32}, {"bf16", Precision::kBf16}},
          CLI::ignore_case));
  pb->add_flag("--json", pa->json, "print one JSON object");
  pb->callback([pa] {
    check_blas_is_openmp();
    const int S = int(std::lround(std::sqrt(double(pa->experts))));
    MOE_CHECK(int64_t(S) * S == pa->experts, "--experts {}: expected a perfect square",
              pa->experts);
    MOE_CHECK(pa->top_k <= S && pa->d_key % 2 == 0,
              "--top-k must be <= sqrt(experts) and "
              "--d-key even");
    PeerSpec sp;
    sp.C = pa->d_model;
    sp.S = S;
    sp.heads = pa->heads;
    sp.k = pa->top_k;
    sp.d_key = pa->d_key;
    const PeerResult r = measure_peer_step(*pa, sp);
    print_peer(*pa, sp, r, measure_triad_gbps() * 1e9);  // the triad `bench infer` uses
  });
}

}  // namespace moe::cli
