// Scaling laws and the compute-optimal planner of Krajewski et al. 2024 (REFERENCE.md §2).
// Letters here are the papers': N parameters (non-embedding), D training tokens, G granularity,
// E expansion rate, F training FLOPs. Not the model code's letters (N tokens there).
#pragma once
#include <string>
#include <vector>

namespace moe::scaling {

// L(N, D, G) = c + (g/G^γ + a)/N^α + b/D^β. Dense and Chinchilla fits have g = 0.
struct Law {
  std::string name;
  double a, alpha, b, beta, g, gamma, c;
  double loss(double N, double D, double G = 1) const;
};

// "moe-e64", "moe-e16", "dense", "chinchilla"; anything else is an error listing these.
Law law_by_name(const std::string& name);
std::vector<std::string> law_names();

// The paper's model shape for a number of blocks nb: d_model = 64·nb,
// N = d²·(8E + 4)·nb (total non-embedding, router excluded), N_active = 12·d²·nb,
// training FLOPs per token = (12·d²·6 + d·E·G·14)·nb.
struct Shape {
  double n_blocks, d_model, n_total, n_active, flops_per_token;
};
Shape shape_for(double n_blocks, double expansion, double G);

struct Plan {
  double granularity = 1, n_blocks = 0, d_model = 0, n_total = 0, n_active = 0, tokens = 0;
  double loss = 0, flops = 0;
};

// Compute-optimal MoE for a FLOP budget: for each G = 1, 2, 4, …, 256 minimise the law over
// n_blocks (Brent's method on log n_blocks, D = F / flops_per_token), then take the best G.
// `expansion` picks the fit: 64 → moe-e64, 16 → moe-e16 (others are refused).
Plan plan_moe(double flops, int expansion, std::vector<Plan>* per_g = nullptr);
// Compute-optimal dense model at F = 6·N·D under the dense law (minimised over N).
Plan plan_dense(double flops);
// The least F' with min_N L_dense(N, F'/(6N)) <= target_loss, and F'/flops.
double dense_compute_multiplier(double target_loss, double flops);

// Brent's method for a minimum of f on [lo, hi] (golden section with parabolic steps).
double brent_minimize(double (*f)(double, const void*), const void* ctx, double lo, double hi,
                      double tol = 1e-10, int max_iter = 200);

}  // namespace moe::scaling
