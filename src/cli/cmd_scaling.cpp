// moe scaling law | plan | fit: the fitted laws of Krajewski et al., the compute-optimal planner
// and the fit of a law to runs; moe compare and moe sweep, which produce such runs.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "commands.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/dist/communicator.h"
#include "moe/scaling/fit.h"
#include "moe/scaling/laws.h"
#include "moe/train/compare.h"
#include "moe/train/sweep.h"
#include "world.h"

namespace moe::cli {

namespace {

// moe scaling law: L(N, D, G) of a named fit.
void register_scaling_law(CLI::App& scaling) {
  struct LawArgs {
    double params = 0, tokens = 0, granularity = 1;
    std::string fit = "moe-e64";
    bool json = false;
  };
  auto a = std::make_shared<LawArgs>();
  CLI::App* law =
      scaling.add_subcommand("law", "Evaluate L(N, D, G) = c + (g/G^γ + a)/N^α + b/D^β");
  law->add_option("--params", a->params, "N: non-embedding parameters (total)")->required();
  law->add_option("--tokens", a->tokens, "D: training tokens")->required();
  law->add_option("--granularity", a->granularity, "G (MoE fits; ignored by dense fits)");
  law->add_option("--fit", a->fit, "moe-e64 | moe-e16 | dense | chinchilla");
  law->add_flag("--json", a->json, "print one JSON object");
  law->callback([a] {
    const std::vector<std::string> names = scaling::law_names();
    MOE_CHECK(std::find(names.begin(), names.end(), a->fit) != names.end(),
              "--fit {}: unknown law (known: {})", a->fit, fmt::join(names, ", "));
    const scaling::Law l = scaling::law_by_name(a->fit);
    const double loss = l.loss(a->params, a->tokens, a->granularity);
    if (a->json)
      fmt::print("{}\n", nlohmann::json({{"fit", a->fit},
                                         {"params", a->params},
                                         {"tokens", a->tokens},
                                         {"granularity", a->granularity},
                                         {"loss", loss}})
                             .dump());
    else
      fmt::print("{}: L(N = {:.4g}, D = {:.4g}, G = {}) = {:.4f} nats/token (C4, GPT-2 tokens)\n",
                 a->fit, a->params, a->tokens, a->granularity, loss);
  });
}

// The planner's answer for a budget: the MoE optimum m (and its per-granularity optima per_g),
// the dense optimum d, and how much more compute a dense model needs to reach m's loss.
struct PlanReport {
  double flops;
  int expansion;
  scaling::Plan m, d;
  std::vector<scaling::Plan> per_g;
  double dense_multiplier;
};

void print_plan_json(const PlanReport& r) {
  const scaling::Plan &m = r.m, &d = r.d;
  nlohmann::json g = nlohmann::json::array();
  for (auto& q : r.per_g)
    g.push_back({{"granularity", q.granularity},
                 {"loss", q.loss},
                 {"n_total", q.n_total},
                 {"tokens", q.tokens},
                 {"n_blocks", q.n_blocks}});
  fmt::print(
      "{}\n",
      nlohmann::json({{"flops", r.flops},
                      {"expansion", r.expansion},
                      {"granularity", m.granularity},
                      {"n_total", m.n_total},
                      {"n_active", m.n_active},
                      {"tokens", m.tokens},
                      {"d_model", m.d_model},
                      {"n_blocks", m.n_blocks},
                      {"loss", m.loss},
                      {"dense", {{"n_params", d.n_total}, {"tokens", d.tokens}, {"loss", d.loss}}},
                      {"dense_compute_multiplier", r.dense_multiplier},
                      {"per_granularity", g}})
          .dump(2));
}

void print_plan_text(const PlanReport& r) {
  const scaling::Plan &m = r.m, &d = r.d;
  fmt::print("Compute-optimal MoE at F = {:.3g} FLOPs, expansion E = {} (Krajewski et al. 2024):\n",
             r.flops, r.expansion);
  fmt::print("  granularity G   {}\n  n_blocks        {:.2f} (d_model {:.0f})\n", m.granularity,
             m.n_blocks, m.d_model);
  fmt::print(
      "  N total         {:.4g}\n  N active        {:.4g}\n  tokens D        {:.4g}\n"
      "  loss            {:.4f}\n",
      m.n_total, m.n_active, m.tokens, m.loss);
  fmt::print("Dense optimum at the same F: N = {:.4g}, D = {:.4g}, loss {:.4f}\n", d.n_total,
             d.tokens, d.loss);
  fmt::print("A dense model needs {:.1f}× this compute to reach the MoE's loss.\n",
             r.dense_multiplier);
  fmt::print("Per granularity (each optimised over size):\n");
  for (auto& q : r.per_g)
    fmt::print("  G = {:>3}: loss {:.4f}, N {:.3g}, D {:.3g}\n", q.granularity, q.loss, q.n_total,
               q.tokens);
  fmt::print(
      "Shape assumptions: d_model = 64·n_blocks, N = d²(8E+4)·n_blocks, "
      "F = (72·d² + 14·d·E·G)·D·n_blocks; losses are nats per GPT-2 token on C4.\n");
}

// moe scaling plan: the compute-optimal MoE (G, N, D) for a FLOP budget, against dense.
void register_scaling_plan(CLI::App& scaling) {
  struct PlanArgs {
    double flops = 0;
    int expansion = 64;
    bool json = false;
  };
  auto p = std::make_shared<PlanArgs>();
  CLI::App* plan =
      scaling.add_subcommand("plan", "Compute-optimal MoE (G, N, D) for a FLOP budget");
  plan->add_option("--flops", p->flops, "training FLOPs")->required();
  plan->add_option("--expansion", p->expansion, "expansion rate E: 64 or 16 (the fitted laws)");
  plan->add_flag("--json", p->json, "print one JSON object");
  plan->callback([p] {
    MOE_CHECK(p->flops > 0 && std::isfinite(p->flops), "--flops {}: expected a positive number",
              p->flops);
    MOE_CHECK(p->expansion == 64 || p->expansion == 16,
              "--expansion {}: fitted laws exist for E = 64 (moe-e64) and E = 16 (moe-e16) only",
              p->expansion);
    PlanReport r{p->flops, p->expansion, {}, {}, {}, 0};
    r.m = scaling::plan_moe(p->flops, p->expansion, &r.per_g);
    r.d = scaling::plan_dense(p->flops);
    r.dense_multiplier = scaling::dense_compute_multiplier(r.m.loss, p->flops);
    if (p->json)
      print_plan_json(r);
    else
      print_plan_text(r);
  });
}

void print_fit(const scaling::FitResult& r, bool json) {
  const scaling::Law& l = r.law;
  const std::vector<std::pair<const char*, double>> coef = {
      {"a", l.a}, {"alpha", l.alpha}, {"b", l.b}, {"beta", l.beta},
      {"g", l.g}, {"gamma", l.gamma}, {"c", l.c}};
  if (json) {
    nlohmann::json j = {{"runs", r.n_points},
                        {"rmse", r.rmse},
                        {"heldout_rmse", r.heldout_rmse},
                        {"heldout_runs", r.n_heldout}};
    for (auto [k, v] : coef) {
      j[k] = v;
      if (r.interval.count(k))
        j["interval_" + std::string(k)] = {r.interval.at(k).first, r.interval.at(k).second};
    }
    fmt::print("{}\n", j.dump(2));
    return;
  }
  fmt::print("Fit of L = c + (g/G^γ + a)/N^α + b/D^β to {} runs (Huber δ = 0.1, NLopt BOBYQA)\n",
             r.n_points);
  for (auto [k, v] : coef) {
    if (r.interval.count(k))
      fmt::print("  {:<6} {:>10.4g}   [{:.4g}, {:.4g}] (bootstrap 5–95%)\n", k, v,
                 r.interval.at(k).first, r.interval.at(k).second);
    else
      fmt::print("  {:<6} {:>10.4g}\n", k, v);
  }
  fmt::print("  RMSE {:.4f} on all runs; held-out RMSE {:.4f} on {} runs (fit on the rest)\n",
             r.rmse, r.heldout_rmse, r.n_heldout);
}

// moe scaling fit: the law's coefficients fitted to runs (JSON lines), with bootstrap intervals.
void register_scaling_fit(CLI::App& scaling) {
  struct FitArgs {
    std::string runs;
    int bootstrap = 100;
    uint64_t seed = 1;
    double weight_decay = 0;
    bool dense = false, json = false;
  };
  auto f = std::make_shared<FitArgs>();
  CLI::App* fit = scaling.add_subcommand("fit", "Fit (a, α, b, β, g, γ, c) to runs (JSON lines)");
  fit->add_option("--runs", f->runs, "runs.jsonl: one {\"N\", \"D\", \"G\", \"loss\"} per line")
      ->required();
  fit->add_option("--bootstrap", f->bootstrap, "bootstrap resamples for the intervals");
  fit->add_option("--seed", f->seed, "seed of the held-out split and the resamples");
  fit->add_option("--weight-decay", f->weight_decay, "decay on the fit variables (paper: 5e-4)");
  fit->add_flag("--dense", f->dense, "fit the dense law (g = 0)");
  fit->add_flag("--json", f->json, "print one JSON object");
  fit->callback([f] {
    const auto pts = scaling::read_runs(f->runs);
    print_fit(scaling::fit_law(pts, !f->dense, f->bootstrap, f->seed, f->weight_decay), f->json);
  });
}

// The table `moe compare` ends with: one row per config.
void print_compare_table(const std::vector<nlohmann::json>& rows, const std::string& results) {
  fmt::print("\n{:<24} {:>10} {:>12} {:>12} {:>10} {:>8} {:>8} {:>9}  routing\n", "config", "kind",
             "total", "active", "tokens", "val bpb", "wall s", "tok/s");
  for (const nlohmann::json& j : rows) {
    std::string routing;
    if (j.contains("routing"))
      for (auto& m : j["routing"]) {
        if (m.value("kind", "") == "peer")
          routing += fmt::format(" L{} usage {:.1f}% KL {:.2f};", m["layer"].get<int>(),
                                 100 * m["usage"].get<double>(), m["kl"].get<double>());
        else
          routing +=
              fmt::format(" L{} max/mean {:.2f} drop {:.1f}%;", m["layer"].get<int>(),
                          m["max_over_mean_load"].get<double>(), m["dropped_pct"].get<double>());
      }
    fmt::print("{:<24} {:>10} {:>12} {:>12} {:>10.3g} {:>8.4f} {:>8.0f} {:>9.0f} {}\n",
               j["name"].get<std::string>(), j["kind"].get<std::string>(),
               j["total_params"].get<int64_t>(), j["active_params"].get<int64_t>(),
               j["tokens"].get<double>(), j["val_bpb"].get<double>(), j["wall_s"].get<double>(),
               j["tokens_per_s"].get<double>(), routing);
  }
  fmt::print(
      "(results: {}; FLOPs counted as `moe params` does: router and PEER retrieval "
      "included)\n",
      results);
}

}  // namespace

void register_scaling(CLI::App& app) {
  CLI::App* s = app.add_subcommand("scaling", "Scaling laws and the compute-optimal planner");
  s->require_subcommand(1);
  register_scaling_law(*s);
  register_scaling_plan(*s);
  register_scaling_fit(*s);
}

void register_compare(CLI::App& app) {
  auto o = std::make_shared<CompareOptions>();
  auto quiet = std::make_shared<bool>(false);
  CLI::App* c = app.add_subcommand(
      "compare", "Train configs to the same training-FLOP budget and compare them (val bpb)");
  c->add_option("--flops", o->flops, "training FLOPs per config (as moe params counts them)")
      ->required();
  c->add_option("--configs", o->configs, "config files")->required();
  c->add_option("--set", o->overrides, "override a field of every config (repeatable)");
  c->add_option("--out", o->out_dir, "directory for the runs and results.jsonl");
  c->add_flag("--quiet", *quiet, "no table");
  c->callback([o, quiet] {
    MOE_CHECK(o->flops > 0, "--flops {}: expected a positive training-FLOP budget", o->flops);
    if (!*quiet)
      o->run_started = [](const std::string& name, int64_t steps, double tokens, double flops) {
        fmt::print("compare: {} — {} steps ({:.3g} tokens) for {:.3g} FLOPs\n", name, steps, tokens,
                   flops);
        std::fflush(stdout);
      };
    const std::vector<nlohmann::json> rows = run_compare(*o, world());
    if (!*quiet) print_compare_table(rows, compare_results_path(*o));
    std::fflush(stdout);  // the table before the plot script's own output
    // Plots, when Debian's matplotlib is there (tools/plot.py ships with the sources).
    std::string script = "tools/plot.py";
    if (!file_exists(script)) script = std::string(MOE_SOURCE_DIR) + "/tools/plot.py";
    if (file_exists(script) &&
        std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") == 0) {
      const std::string cmd = "/usr/bin/python3 '" + script + "' --dir '" + o->out_dir + "'";
      if (std::system(cmd.c_str()) != 0)
        fmt::print(stderr, "moe compare: plotting failed ({}); the results are in {}\n", cmd,
                   o->out_dir);
    } else if (!*quiet) {
      fmt::print(
          "moe compare: no plots (needs /usr/bin/python3 with matplotlib and tools/plot.py)\n");
    }
  });
}

void register_sweep(CLI::App& app) {
  auto grid = std::make_shared<std::string>();
  auto quiet = std::make_shared<bool>(false);
  CLI::App* s = app.add_subcommand(
      "sweep", "Run a grid of small trainings (d_model × tokens × G), appending to runs.jsonl");
  s->add_option("--grid", *grid, "grid file (JSON), e.g. configs/sweep/brown-small.json")
      ->required();
  s->add_flag("--quiet", *quiet, "no progress output");
  s->callback([grid, quiet] {
    SweepProgress progress;
    if (!*quiet) {
      progress.run_started = [](const std::string& name, int steps) {
        fmt::print("sweep: run {} ({} steps)\n", name, steps);
        std::fflush(stdout);
      };
      progress.run_finished = [](const nlohmann::json& j) {
        fmt::print("sweep: {} N {:.3g} D {:.3g} G {} loss {:.4f} val bpb {:.4f}\n",
                   j["name"].get<std::string>(), j["N"].get<double>(), j["D"].get<double>(),
                   j["G"].get<int>(), j["loss"].get<double>(), j["val_bpb"].get<double>());
        std::fflush(stdout);
      };
    }
    SweepSummary r = run_sweep(*grid, world(), progress);
    fmt::print("sweep: {} runs done, {} already in {}; fit with: moe scaling fit --runs {}\n",
               r.ran, r.skipped, r.runs_file, r.runs_file);
  });
}

}  // namespace moe::cli
