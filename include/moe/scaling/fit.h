// Fitting L(N, D, G) = c + (g/G^γ + a)/N^α + b/D^β to one's own runs (Krajewski et al. §4.1):
// Huber loss (δ = 0.1) summed over the residuals in loss space (nats), plus an optional weight
// decay on the optimisation variables (the paper used 5e-4; default 0 here, because on
// synthetic data it visibly biased the recovered law at our small run counts), minimised with
// NLopt's BOBYQA (a maintained derivative-free
// optimiser) from a grid of starting points; the best start wins. Variables: log a, α, log b,
// β, log g, γ, c (logs keep a, b, g positive; α, β in (0, 1.5], γ in [0, 3], c in [0, min loss)).
// Residuals in loss space rather than log-loss (Chinchilla's choice): δ = 0.1 nats is the
// paper's threshold, which only means something in loss units.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moe/scaling/laws.h"

namespace moe::scaling {

struct RunPoint {
  double N = 0, D = 0, G = 1, loss = 0;
};

// One JSON object per line with at least "N", "D", "loss" (and "G", default 1); errors name
// the file, line and field.
std::vector<RunPoint> read_runs(const std::string& path);

struct FitResult {
  Law law;
  double rmse = 0;          // on the points fitted
  double heldout_rmse = 0;  // of a fit on the other 80%, on a held-out 20% (seeded split)
  int n_points = 0, n_heldout = 0;
  // Bootstrap percentile intervals (5%, 95%) per coefficient name: a, alpha, b, beta, g, gamma, c.
  std::map<std::string, std::pair<double, double>> interval;
};

// with_granularity = false fixes g = 0 (a dense law).
Law fit_points(const std::vector<RunPoint>& pts, bool with_granularity, double weight_decay = 0);
FitResult fit_law(const std::vector<RunPoint>& pts, bool with_granularity, int bootstrap,
                  uint64_t seed, double weight_decay = 0);

}  // namespace moe::scaling
