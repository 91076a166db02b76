#include "moe/scaling/fit.h"

#include <nlopt.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/core/rng.h"

namespace moe::scaling {

std::vector<RunPoint> read_runs(const std::string& path) {
  std::ifstream in(path);
  MOE_CHECK(in.good(), "{}: cannot open the runs file", path);
  std::vector<RunPoint> out;
  std::string line;
  int no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    MOE_CHECK(!j.is_discarded() && j.is_object(), "{}:{}: not a JSON object", path, no);
    RunPoint p;
    auto num = [&](const char* k, double& v, bool required) {
      if (!j.contains(k)) {
        MOE_CHECK(!required, "{}:{}: field {} missing", path, no, k);
        return;
      }
      MOE_CHECK(j[k].is_number() && j[k].get<double>() > 0,
                "{}:{}: field {}: got {}, expected "
                "a positive number",
                path, no, k, j[k].dump());
      v = j[k].get<double>();
    };
    num("N", p.N, true);
    num("D", p.D, true);
    num("G", p.G, false);
    num("loss", p.loss, true);
    MOE_CHECK(std::isfinite(p.loss), "{}:{}: field loss is not finite", path, no);
    out.push_back(p);
  }
  MOE_CHECK(!out.empty(), "{}: no runs", path);
  return out;
}

namespace {

constexpr double kDelta = 0.1;

struct Problem {
  const std::vector<RunPoint>* pts;
  bool with_g;
  double decay;
};

Law law_of(const double* v, bool with_g) {
  return {"fit",
          std::exp(v[0]),
          v[1],
          std::exp(v[2]),
          v[3],
          with_g ? std::exp(v[4]) : 0.0,
          with_g ? v[5] : 0.0,
          v[6]};
}

double objective(unsigned n, const double* v, double* grad, void* data) {
  (void)grad;  // BOBYQA is derivative-free
  const auto* pr = static_cast<const Problem*>(data);
  const Law law = law_of(v, pr->with_g);
  double h = 0;
  for (const RunPoint& p : *pr->pts) {
    const double r = law.loss(p.N, p.D, p.G) - p.loss;
    const double ar = std::abs(r);
    h += ar <= kDelta ? 0.5 * r * r : kDelta * (ar - 0.5 * kDelta);
  }
  double decay = 0;
  for (unsigned i = 0; i < n; ++i) decay += v[i] * v[i];
  return h + pr->decay * decay;
}

double rmse(const Law& l, const std::vector<RunPoint>& pts) {
  double s = 0;
  for (const RunPoint& p : pts) {
    const double r = l.loss(p.N, p.D, p.G) - p.loss;
    s += r * r;
  }
  return std::sqrt(s / pts.size());
}

}  // namespace

Law fit_points(const std::vector<RunPoint>& pts, bool with_g, double weight_decay) {
  MOE_CHECK(pts.size() >= (with_g ? 7u : 5u), "fitting needs at least {} runs, got {}",
            with_g ? 7 : 5, pts.size());
  double min_loss = std::numeric_limits<double>::infinity();
  for (auto& p : pts) min_loss = std::min(min_loss, p.loss);
  Problem pr{&pts, with_g, weight_decay};
  const double lb[7] = {-5, 0.01, -5, 0.01, -8, 0, 0};
  const double ub[7] = {12, 1.5, 12, 1.5, 8, 3, std::max(1e-6, min_loss - 1e-6)};
  Law best;
  double best_f = std::numeric_limits<double>::infinity();
  // A grid of starts: the landscape has long valleys where a and α trade off.
  for (double la : {1.0, 4.0})
    for (double al : {0.1, 0.3})
      for (double lb_ : {1.0, 4.0})
        for (double be : {0.1, 0.3})
          for (double cf : {0.5}) {
            double v[7] = {la, al, lb_, be, with_g ? 0.0 : -8.0, with_g ? 0.5 : 0.0, cf * min_loss};
            nlopt_opt opt = nlopt_create(NLOPT_LN_BOBYQA, 7);
            double lo[7], hi[7];
            std::copy(lb, lb + 7, lo);
            std::copy(ub, ub + 7, hi);
            if (!with_g) {  // pin g and γ
              lo[4] = hi[4] = -8;
              lo[5] = hi[5] = 0;
            }
            nlopt_set_lower_bounds(opt, lo);
            nlopt_set_upper_bounds(opt, hi);
            nlopt_set_min_objective(opt, objective, &pr);
            nlopt_set_xtol_rel(opt, 1e-10);
            nlopt_set_maxeval(opt, 20000);
            double f = 0;
            const nlopt_result res = nlopt_optimize(opt, v, &f);
            nlopt_destroy(opt);
            if (res > 0 && f < best_f) {
              best_f = f;
              best = law_of(v, with_g);
            }
          }
  MOE_CHECK(std::isfinite(best_f), "the fit failed from every starting point");
  best.name = "fit";
  return best;
}

FitResult fit_law(const std::vector<RunPoint>& pts, bool with_g, int bootstrap, uint64_t seed,
                  double weight_decay) {
  FitResult r;
  r.law = fit_points(pts, with_g, weight_decay);
  r.rmse = rmse(r.law, pts);
  r.n_points = int(pts.size());
  // Held-out: a seeded 20% split, fitted on the rest.
  Rng rng(seed, stream_id(kPurposeSample, 1));
  std::vector<int> idx(pts.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = int(i);
  for (std::size_t i = idx.size(); i > 1; --i) std::swap(idx[i - 1], idx[rng.next_below(i)]);
  const std::size_t nh = std::max<std::size_t>(1, pts.size() / 5);
  std::vector<RunPoint> train, held;
  for (std::size_t i = 0; i < idx.size(); ++i) (i < nh ? held : train).push_back(pts[idx[i]]);
  if (train.size() >= (with_g ? 7u : 5u)) {
    r.heldout_rmse = rmse(fit_points(train, with_g, weight_decay), held);
    r.n_heldout = int(held.size());
  }
  // Bootstrap: refit on resamples with replacement; 5th and 95th percentiles per coefficient.
  // Resamples are drawn serially (so they do not depend on threads), then fitted in parallel.
  std::vector<std::vector<RunPoint>> resamples(std::max(0, bootstrap));
  for (auto& rs : resamples)
    for (std::size_t i = 0; i < pts.size(); ++i) rs.push_back(pts[rng.next_below(pts.size())]);
  std::vector<Law> fits(resamples.size());
  bool failed = false;
#pragma omp parallel for schedule(dynamic, 1)
  for (int b = 0; b < int(resamples.size()); ++b) {
    try {
      fits[b] = fit_points(resamples[b], with_g, weight_decay);
    } catch (...) {  // never let an exception leave the parallel region
#pragma omp critical
      failed = true;
    }
  }
  MOE_CHECK(!failed, "a bootstrap refit failed");
  std::map<std::string, std::vector<double>> samples;
  for (const Law& l : fits)
    for (auto [k, v] : std::initializer_list<std::pair<const char*, double>>{{"a", l.a},
                                                                             {"alpha", l.alpha},
                                                                             {"b", l.b},
                                                                             {"beta", l.beta},
                                                                             {"g", l.g},
                                                                             {"gamma", l.gamma},
                                                                             {"c", l.c}})
      samples[k].push_back(v);
  for (auto& [k, v] : samples) {
    std::sort(v.begin(), v.end());
    r.interval[k] = {v[std::size_t(0.05 * (v.size() - 1))], v[std::size_t(0.95 * (v.size() - 1))]};
  }
  return r;
}

}  // namespace moe::scaling
