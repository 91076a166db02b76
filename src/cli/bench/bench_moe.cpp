// moe bench moe: one MoE layer's forward + backward, the layer bench/run_bench.sh puts side by
// side with PyTorch's expert loop and batched experts (bench/pytorch_moe.py).
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench.h"
#include "moe/core/arena.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/ffn/moe/moe_layer.h"
#include "moe/kernels/gemm.h"
#include "moe/model/config.h"

namespace moe::cli {

namespace {

struct MoeArgs {
  int d_model = 512, experts = 8, top_k = 2, d_expert = 1024, tokens = 4096, repeats = 5;
  MoeFfnConfig::ExpertGemm expert_gemm = MoeFfnConfig::ExpertGemm::kAuto;
  Precision precision = Precision::kFp32;  // bf16: the experts' products in bf16
  bool json = false;
};

struct MoeResult {
  double ms_per_step = 0;  // median of the timed repeats
  double gflops = 0;       // expert matmuls only: 6·tokens·k·3·C·H per step
  MoeStats stats;          // of the last step
};

// SwiGLU experts, softmax top-k renormalised, dropless, Switch aux loss 0.01; loss = mean(y²) +
// aux. One untimed step first, then the median of the timed repeats. In bf16 each step also
// rounds and packs the expert weights (refresh_low_precision, once per optimizer step in
// training), timed as part of the step.
MoeResult measure_moe_layer(const MoeArgs& m) {
  FfnConfig f;
  f.kind = FfnConfig::Kind::kMoe;
  f.moe.num_experts = m.experts;
  f.moe.top_k = m.top_k;
  f.moe.d_expert = m.d_expert;
  f.moe.aux_loss_coef = 0.01;
  f.moe.z_loss_coef = 0;
  f.moe.expert_gemm = m.expert_gemm;
  const int C = m.d_model, E = m.experts, H = m.d_expert, N = m.tokens;
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
  layer.set_precision(m.precision);
  std::vector<double> times;
  for (int it = 0; it < m.repeats + 1; ++it) {
    auto t0 = BenchClock::now();
    MoeStep<float> step;
    step.seq_len = N;
    step.training = true;
    step.seed = 1;
    step.step = it;
    layer.refresh_low_precision(p);
    layer.forward(y, x, p, step);
    // loss = mean(y²) + aux: dL/dy = 2y / (N·C).
    // Both passes over [N, C] on every thread, as PyTorch runs its loss and zeroing: on one
    // they were ~1.1 ms of the step (0.6 on two), the same in both precisions.
    const float sc = 2.f / (float(N) * C);
    const std::ptrdiff_t n = std::ptrdiff_t(xsz);
#pragma omp parallel for schedule(static)
    for (std::ptrdiff_t j = 0; j < n; ++j) {
      dy[j] = sc * y[j];
      dx[j] = 0.f;
    }
    layer.backward(dx, g, dy, x, p);
    if (it > 0) times.push_back(seconds_since(t0));  // the first run warms caches and pages
  }
  const double ms = median(times) * 1e3;
  const double gflops = 6.0 * N * m.top_k * 3.0 * C * H / (ms / 1e3) / 1e9;
  return {ms, gflops, layer.stats()};
}

void print_moe(const MoeArgs& m, const MoeResult& r) {
  const int N = m.tokens;
  const double ms = r.ms_per_step;
  const MoeStats& st = r.stats;
  if (m.json)
    fmt::print("{}\n", nlohmann::json({{"ms_per_step", ms},
                                       {"tokens_per_s", N / (ms / 1e3)},
                                       {"gflops", r.gflops},
                                       {"max_over_mean_load", st.max_over_mean_load},
                                       {"aux_loss", st.aux_loss},
                                       {"threads", omp_get_max_threads()},
                                       {"precision", enum_name(m.precision)}})
                           .dump());
  else
    fmt::print(
        "moe layer C={} E={} k={} H={} tokens={} {}: {:.1f} ms/step, {:.0f} tokens/s, "
        "{:.1f} GFLOP/s expert compute, max/mean expert load {:.2f}\n",
        m.d_model, m.experts, m.top_k, m.d_expert, N, enum_name(m.precision), ms, N / (ms / 1e3),
        r.gflops, st.max_over_mean_load);
}

}  // namespace

void register_bench_moe(CLI::App& bench) {
  auto m = std::make_shared<MoeArgs>();
  CLI::App* mb = bench.add_subcommand(
      "moe",
      "One MoE layer forward+backward: SwiGLU experts, softmax top-k renormalised, "
      "dropless, Switch aux loss 0.01, loss = mean(y²) + aux");
  mb->add_option("--d-model", m->d_model)->check(CLI::PositiveNumber);
  mb->add_option("--experts", m->experts)->check(CLI::PositiveNumber);
  mb->add_option("--top-k", m->top_k)->check(CLI::PositiveNumber);
  mb->add_option("--d-expert", m->d_expert)->check(CLI::PositiveNumber);
  mb->add_option("--tokens", m->tokens)->check(CLI::PositiveNumber);
  mb->add_option("--repeats", m->repeats, "timed repeats (median)")->check(CLI::PositiveNumber);
  mb->add_option("--expert-gemm", m->expert_gemm,
                 "the experts' GEMM: auto (by expert size), blas or panel (model.ffn.expert_gemm)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, MoeFfnConfig::ExpertGemm>{
              {"auto", MoeFfnConfig::ExpertGemm::kAuto},
              {"blas", MoeFfnConfig::ExpertGemm::kBlas},
              {"panel", MoeFfnConfig::ExpertGemm::kPanel}},
          CLI::ignore_case));
  mb->add_option("--precision", m->precision,
                 "the experts' products: fp32, or bf16 (bf16 operands, f32 accumulation)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, Precision>{{"fp32", Precision::kFp32}, {"bf16", Precision::kBf16}},
          CLI::ignore_case));
  mb->add_flag("--json", m->json, "print one JSON object");
  mb->callback([m] {
    check_blas_is_openmp();
    MOE_CHECK(m->top_k <= m->experts, "--top-k {} exceeds --experts {}", m->top_k, m->experts);
    print_moe(*m, measure_moe_layer(*m));
  });
}

}  // namespace moe::cli
