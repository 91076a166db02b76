// moe bench sgemm | train: measurements that bench/run_bench.sh puts side by side with PyTorch.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "commands.h"
#include "moe/core/error.h"
#include "moe/core/params.h"
#include "moe/core/rng.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/ffn/peer/peer_layer.h"
#include "moe/kernels/gemm.h"
#include "moe/model/transformer.h"
#include "moe/train/config.h"
#include "moe/train/optimizer.h"

namespace moe::cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

void register_bench(CLI::App& app) {
  CLI::App* b = app.add_subcommand("bench", "Benchmarks (see bench/ for the side-by-side runs)");
  b->require_subcommand(1);

  struct SgemmArgs {
    int size = 2048, repeats = 5;
    bool json = false;
  };
  auto s = std::make_shared<SgemmArgs>();
  CLI::App* sg = b->add_subcommand("sgemm", "OpenBLAS sgemm throughput: the compute ceiling");
  sg->add_option("--size", s->size, "M = N = K")->check(CLI::PositiveNumber);
  sg->add_option("--repeats", s->repeats, "timed repeats (median)")->check(CLI::PositiveNumber);
  sg->add_flag("--json", s->json, "print one JSON object");
  sg->callback([s] {
    check_blas_is_openmp();
    const int n = s->size;
    std::vector<float> A(std::size_t(n) * n), B(A.size()), C(A.size());
    Rng r(1, 1);
    for (std::size_t i = 0; i < A.size(); ++i) {
      A[i] = r.uniform(2 * i) - 0.5f;
      B[i] = r.uniform(2 * i + 1) - 0.5f;
    }
    gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);  // warm
    std::vector<double> t;
    for (int i = 0; i < s->repeats; ++i) {
      auto t0 = Clock::now();
      gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);
      t.push_back(seconds_since(t0));
    }
    const double gf = 2.0 * n * n * n / median(t) / 1e9;
    if (s->json)
      fmt::print("{}\n", nlohmann::json({{"size", n},
                                         {"gflops", gf},
                                         {"threads", omp_get_max_threads()},
                                         {"blas", blas_info()}})
                             .dump());
    else
      fmt::print("sgemm {}³: {:.1f} GFLOP/s ({} threads; {})\n", n, gf, omp_get_max_threads(),
                 blas_info());
  });

  struct TrainArgs {
    std::string config;
    std::vector<std::string> sets;
    int steps = 10, warmup = 2;
    bool json = false;
  };
  auto t = std::make_shared<TrainArgs>();
  CLI::App* tr = b->add_subcommand(
      "train", "Training throughput of a config on random tokens (forward, backward, AdamW)");
  tr->add_option("--config", t->config, "config file")->required();
  tr->add_option("--set", t->sets, "override a config field (repeatable)");
  tr->add_option("--steps", t->steps, "timed steps (median)")->check(CLI::PositiveNumber);
  tr->add_option("--warmup", t->warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  tr->add_flag("--json", t->json, "print one JSON object");
  tr->callback([t] {
    check_blas_is_openmp();
    Config cfg = load_config(t->config, t->sets);
    if (cfg.train.threads > 0) omp_set_num_threads(cfg.train.threads);
    const int B = cfg.train.batch_size, T = cfg.train.seq_len, V = cfg.model.vocab_size;
    Transformer model(cfg.model, B, T);
    model.params().initialize(cfg.train.seed);
    AdamWOptimizer opt(model.params(), cfg.train);
    std::vector<int32_t> x(std::size_t(B) * T), y(x.size());
    Rng r(cfg.train.seed, stream_id(kPurposeData, 7));
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = int32_t(r.u32(2 * i) % V);
      y[i] = int32_t(r.u32(2 * i + 1) % V);
    }
    std::vector<double> times;
    double loss = 0;
    for (int i = 0; i < t->warmup + t->steps; ++i) {
      auto t0 = Clock::now();
      model.params().zero_grad();
      StepInfo info;
      info.step = i;
      loss = model.forward(x.data(), y.data(), B, T, info, 1.f);
      model.backward();
      opt.step(i);
      if (i >= t->warmup) times.push_back(seconds_since(t0));
    }
    const double ms = median(times) * 1e3;
    const double tps = double(B) * T / (ms / 1e3);
    if (t->json)
      fmt::print("{}\n", nlohmann::json({{"ms_per_step", ms},
                                         {"tokens_per_s", tps},
                                         {"batch", B},
                                         {"seq_len", T},
                                         {"threads", omp_get_max_threads()},
                                         {"loss", loss}})
                             .dump());
    else
      fmt::print("train step: {:.1f} ms/step, {:.0f} tokens/s (batch {} × {}, {} threads)\n", ms,
                 tps, B, T, omp_get_max_threads());
  });

  struct MoeArgs {
    int d_model = 512, experts = 8, top_k = 2, d_expert = 1024, tokens = 4096, repeats = 5;
    bool json = false;
  };
  auto m = std::make_shared<MoeArgs>();
  CLI::App* mb = b->add_subcommand(
      "moe",
      "One MoE layer forward+backward: SwiGLU experts, softmax top-k renormalised, "
      "dropless, Switch aux loss 0.01, loss = mean(y²) + aux");
  mb->add_option("--d-model", m->d_model)->check(CLI::PositiveNumber);
  mb->add_option("--experts", m->experts)->check(CLI::PositiveNumber);
  mb->add_option("--top-k", m->top_k)->check(CLI::PositiveNumber);
  mb->add_option("--d-expert", m->d_expert)->check(CLI::PositiveNumber);
  mb->add_option("--tokens", m->tokens)->check(CLI::PositiveNumber);
  mb->add_option("--repeats", m->repeats, "timed repeats (median)")->check(CLI::PositiveNumber);
  mb->add_flag("--json", m->json, "print one JSON object");
  mb->callback([m] {
    check_blas_is_openmp();
    MOE_CHECK(m->top_k <= m->experts, "--top-k {} exceeds --experts {}", m->top_k, m->experts);
    FfnConfig f;
    f.kind = FfnConfig::Kind::kMoe;
    f.moe.num_experts = m->experts;
    f.moe.top_k = m->top_k;
    f.moe.d_expert = m->d_expert;
    f.moe.aux_loss_coef = 0.01;
    f.moe.z_loss_coef = 0;
    const int C = m->d_model, E = m->experts, H = m->d_expert, N = m->tokens;
    MoeSpec spec = MoeSpec::from_config(f, C);
    MoeLayer<float> layer(spec);
    Arena measure;
    layer.bind(measure, 1, N);
    Arena acts(measure.used());
    layer.bind(acts, 1, N);
    // x ~ N(0,1), router U(±1/√C), experts N(0, 0.02²), as the PyTorch side does.
    // The tensors live in one arena, as a model's parameters, gradients and activations do in
    // training (ParamStore, Transformer): at these sizes on huge pages.
    const std::size_t wsz = std::size_t(E) * H * C, xsz = std::size_t(N) * C,
                      rsz = std::size_t(E) * C;
    Arena store(sizeof(float) * (4 * xsz + 2 * rsz + 6 * wsz) + 16 * kAlign);
    float *x = store.take<float>(xsz), *y = store.take<float>(xsz), *dy = store.take<float>(xsz),
          *dx = store.take<float>(xsz), *router = store.take<float>(rsz),
          *wg = store.take<float>(wsz), *wu = store.take<float>(wsz), *wd = store.take<float>(wsz),
          *grouter = store.take<float>(rsz), *gg = store.take<float>(wsz),
          *gu = store.take<float>(wsz), *gd = store.take<float>(wsz);
    const float bound = 1.f / std::sqrt(float(C));
    auto fill = [](float* v, std::size_t size, uint32_t stream, auto&& draw) {
      const Rng r(1, stream_id(kPurposeInit, 99, stream));
      const std::ptrdiff_t n = std::ptrdiff_t(size);
#pragma omp parallel for schedule(static)
      for (std::ptrdiff_t j = 0; j < n; ++j) v[j] = draw(r, j);
    };
    auto normal = [](float s) {
      return [s](const Rng& r, std::ptrdiff_t j) { return s * r.normal(j); };
    };
    fill(x, xsz, 0, normal(1.f));
    fill(router, rsz, 1,
         [bound](const Rng& r, std::ptrdiff_t j) { return bound * (2 * r.uniform(j) - 1); });
    fill(wg, wsz, 2, normal(0.02f));
    fill(wu, wsz, 3, normal(0.02f));
    fill(wd, wsz, 4, normal(0.02f));
    MoeParams<float> p{router, nullptr, nullptr, wg, wu, wd};
    MoeGrads<float> g{grouter, nullptr, gg, gu, gd};
    std::vector<double> times;
    for (int it = 0; it < m->repeats + 1; ++it) {
      auto t0 = Clock::now();
      layer.forward(y, x, p, 1, N, true, 1, it, 0, 1.f);
      // loss = mean(y²) + aux: dL/dy = 2y / (N·C).
      const float sc = 2.f / (float(N) * C);
      for (std::size_t j = 0; j < xsz; ++j) dy[j] = sc * y[j];
      std::fill(dx, dx + xsz, 0.f);
      layer.backward(dx, g, dy, x, p);
      if (it > 0) times.push_back(seconds_since(t0));  // the first run warms caches and pages
    }
    const double ms = median(times) * 1e3;
    const double gflops = 6.0 * N * m->top_k * 3.0 * C * H / (ms / 1e3) / 1e9;
    const MoeStats& st = layer.stats();
    if (m->json)
      fmt::print("{}\n", nlohmann::json({{"ms_per_step", ms},
                                         {"tokens_per_s", N / (ms / 1e3)},
                                         {"gflops", gflops},
                                         {"max_over_mean_load", st.max_over_mean_load},
                                         {"aux_loss", st.aux_loss},
                                         {"threads", omp_get_max_threads()}})
                             .dump());
    else
      fmt::print(
          "moe layer C={} E={} k={} H={} tokens={}: {:.1f} ms/step, {:.0f} tokens/s, "
          "{:.1f} GFLOP/s expert compute, max/mean expert load {:.2f}\n",
          C, E, m->top_k, H, N, ms, N / (ms / 1e3), gflops, st.max_over_mean_load);
  });

  struct PeerArgs {
    int d_model = 256, heads = 8, top_k = 16, d_key = 128, tokens = 2048, repeats = 5;
    int64_t experts = 1048576;
    bool json = false;
  };
  auto pa = std::make_shared<PeerArgs>();
  CLI::App* pb = b->add_subcommand(
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
    const int C = sp.C, D = sp.heads * sp.d_key, N = pa->tokens;
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
    for (int it = 0; it < pa->repeats + 1; ++it) {
      auto t0 = Clock::now();
      ps.zero_grad();
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
    const double ms = median(times) * 1e3;
    // Bytes moved per step (estimate, fp32): each retrieval reads u_e and v_e in the forward and
    // again in the backward, and the grouped gradient pass reads x, dy rows; it forms du, dv of
    // a row in cache and updates the row at once, reading and writing w, m, v (two tables).
    const double A = double(N) * sp.heads * sp.k;
    const double bytes = 4.0 * C * (4 * A + 2 * A + 2 * 6.0 * double(unique_rows));
    // This machine's memory bandwidth, measured now: a streaming triad over 256 MiB arrays.
    const std::size_t M = std::size_t(64) << 20;
    std::vector<float> ba(M, 1.f), bb(M, 2.f), bc(M, 0.f);
    std::vector<double> bw;
    for (int r = 0; r < 3; ++r) {
      auto t1 = Clock::now();
#pragma omp parallel for schedule(static)
      for (std::ptrdiff_t i = 0; i < std::ptrdiff_t(M); ++i) bc[i] = ba[i] + 0.5f * bb[i];
      bw.push_back(3.0 * 4 * M / seconds_since(t1));
    }
    const double bandwidth = *std::max_element(bw.begin(), bw.end());
    const double frac = bytes / (ms / 1e3) / bandwidth;
    if (pa->json)
      fmt::print("{}\n", nlohmann::json({{"ms_per_step", ms},
                                         {"tokens_per_s", N / (ms / 1e3)},
                                         {"experts", E},
                                         {"unique_rows_per_step", unique_rows},
                                         {"bytes_per_step", bytes},
                                         {"memory_bandwidth_bytes_per_s", bandwidth},
                                         {"bandwidth_fraction", frac},
                                         {"threads", omp_get_max_threads()}})
                             .dump());
    else
      fmt::print(
          "peer layer C={} experts={} h={} k={} d_key={} tokens={}: {:.1f} ms/step, {:.0f} "
          "tokens/s; {} distinct rows touched; ~{:.1f} MB moved per step = {:.1f}% of the "
          "measured {:.1f} GB/s\n  (defaults: sub-keys shared by the heads, query "
          "Linear+bias then BatchNorm on batch statistics, GELU, per-head softmax, Adam "
          "lr 1e-3 dense, lazy per-row Adam on u and v, loss = mean(y²))\n",
          C, E, sp.heads, sp.k, sp.d_key, N, ms, N / (ms / 1e3), unique_rows, bytes / 1e6,
          100 * frac, bandwidth / 1e9);
  });
}

}  // namespace moe::cli
