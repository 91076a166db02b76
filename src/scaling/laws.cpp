#include "moe/scaling/laws.h"

#include <cmath>
#include <limits>

#include "moe/core/error.h"

namespace moe::scaling {

double Law::loss(double N, double D, double G) const {
  MOE_CHECK(N > 0 && D > 0 && G >= 1,
            "scaling law: N = {}, D = {}, G = {}: expected N, D > 0 and "
            "G >= 1",
            N, D, G);
  const double gran = g > 0 ? g / std::pow(G, gamma) : 0.0;
  return c + (gran + a) / std::pow(N, alpha) + b / std::pow(D, beta);
}

std::vector<std::string> law_names() { return {"moe-e64", "moe-e16", "dense", "chinchilla"}; }

Law law_by_name(const std::string& name) {
  // Krajewski et al. 2024, Table 1 (E = 64, dense) and appendix (E = 16); Hoffmann et al. 2022.
  if (name == "moe-e64") return {name, 18.1, 0.115, 30.8, 0.147, 2.1, 0.58, 0.47};
  if (name == "moe-e16") return {name, 19.64, 0.124, 57.07, 0.169, 1.18, 0.986, 0.472};
  if (name == "dense") return {name, 16.3, 0.126, 26.7, 0.127, 0, 0, 0.47};
  if (name == "chinchilla") return {name, 406.4, 0.34, 410.7, 0.28, 0, 0, 1.69};
  MOE_FAIL("scaling law {}: unknown (known: moe-e64, moe-e16, dense, chinchilla)", name);
}

Shape shape_for(double nb, double E, double G) {
  Shape s;
  s.n_blocks = nb;
  s.d_model = 64 * nb;
  const double d2 = s.d_model * s.d_model;
  s.n_total = d2 * (8 * E + 4) * nb;
  s.n_active = 12 * d2 * nb;
  s.flops_per_token = (12 * d2 * 6 + s.d_model * E * G * 14) * nb;
  return s;
}

double brent_minimize(double (*f)(double, const void*), const void* ctx, double lo, double hi,
                      double tol, int max_iter) {
  const double golden = 0.3819660112501051;
  double a = lo, b = hi, x = a + golden * (b - a), w = x, v = x;
  double fx = f(x, ctx), fw = fx, fv = fx, d = 0, e = 0;
  for (int it = 0; it < max_iter; ++it) {
    const double m = 0.5 * (a + b), t1 = tol * std::abs(x) + 1e-12, t2 = 2 * t1;
    if (std::abs(x - m) <= t2 - 0.5 * (b - a)) break;
    bool golden_step = true;
    if (std::abs(e) > t1) {  // try a parabola through x, w, v
      double r = (x - w) * (fx - fv), q = (x - v) * (fx - fw), p = (x - v) * q - (x - w) * r;
      q = 2 * (q - r);
      if (q > 0) p = -p;
      q = std::abs(q);
      const double e_old = e;
      e = d;
      if (std::abs(p) < std::abs(0.5 * q * e_old) && p > q * (a - x) && p < q * (b - x)) {
        d = p / q;
        const double u = x + d;
        if (u - a < t2 || b - u < t2) d = x < m ? t1 : -t1;
        golden_step = false;
      }
    }
    if (golden_step) {
      e = (x < m ? b : a) - x;
      d = golden * e;
    }
    const double u = std::abs(d) >= t1 ? x + d : x + (d > 0 ? t1 : -t1);
    const double fu = f(u, ctx);
    if (fu <= fx) {
      (u < x ? b : a) = x;
      v = w, fv = fw, w = x, fw = fx, x = u, fx = fu;
    } else {
      (u < x ? a : b) = u;
      if (fu <= fw || w == x) {
        v = w, fv = fw, w = u, fw = fu;
      } else if (fu <= fv || v == x || v == w) {
        v = u, fv = fu;
      }
    }
  }
  return x;
}

namespace {

struct MoeCtx {
  const Law* law;
  double F, E, G;
};

Plan moe_at(const MoeCtx& c, double nb) {
  const Shape s = shape_for(nb, c.E, c.G);
  Plan p;
  p.granularity = c.G;
  p.n_blocks = nb;
  p.d_model = s.d_model;
  p.n_total = s.n_total;
  p.n_active = s.n_active;
  p.tokens = c.F / s.flops_per_token;
  p.loss = c.law->loss(s.n_total, p.tokens, c.G);
  p.flops = c.F;
  return p;
}

double moe_objective(double log_nb, const void* ctx) {
  return moe_at(*static_cast<const MoeCtx*>(ctx), std::exp(log_nb)).loss;
}

struct DenseCtx {
  const Law* law;
  double F;
};

double dense_objective(double log_n, const void* ctx) {
  const auto* c = static_cast<const DenseCtx*>(ctx);
  const double N = std::exp(log_n);
  return c->law->loss(N, c->F / (6 * N));
}

}  // namespace

Plan plan_moe(double flops, int expansion, std::vector<Plan>* per_g) {
  MOE_CHECK(flops > 0 && std::isfinite(flops), "plan_moe: flops {}: expected a positive number",
            flops);
  MOE_CHECK(expansion == 64 || expansion == 16,
            "plan_moe: expansion {}: fitted laws exist for E = 64 (moe-e64) and E = 16 (moe-e16) "
            "only",
            expansion);
  const Law law = law_by_name(expansion == 64 ? "moe-e64" : "moe-e16");
  Plan best;
  best.loss = std::numeric_limits<double>::infinity();
  for (double G = 1; G <= 256; G *= 2) {
    MoeCtx c{&law, flops, double(expansion), G};
    // n_blocks from 1e-3 to 1e4 covers budgets from ~1e6 to ~1e30 FLOPs; the loss is unimodal in
    // log n_blocks (parameter term falls, data term rises).
    const double x = brent_minimize(moe_objective, &c, std::log(1e-3), std::log(1e4));
    Plan p = moe_at(c, std::exp(x));
    if (per_g) per_g->push_back(p);
    if (p.loss < best.loss) best = p;
  }
  return best;
}

Plan plan_dense(double flops) {
  const Law law = law_by_name("dense");
  DenseCtx c{&law, flops};
  const double x = brent_minimize(dense_objective, &c, std::log(1.0), std::log(flops / 6.0));
  Plan p;
  p.n_total = p.n_active = std::exp(x);
  p.tokens = flops / (6 * p.n_total);
  p.loss = law.loss(p.n_total, p.tokens);
  p.flops = flops;
  // The paper's dense shape: N = 12·d²·nb with d = 64·nb → nb = (N / (12·4096))^(1/3).
  p.n_blocks = std::cbrt(p.n_total / (12 * 4096.0));
  p.d_model = 64 * p.n_blocks;
  return p;
}

double dense_compute_multiplier(double target_loss, double flops) {
  const Law law = law_by_name("dense");
  MOE_CHECK(target_loss > law.c, "target loss {} is at or below the dense law's floor {}",
            target_loss, law.c);
  // The dense optimum's loss falls monotonically with F: bisect on log F.
  double lo = std::log(flops) - 5, hi = std::log(flops) + 60;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (plan_dense(std::exp(mid)).loss > target_loss ? lo : hi) = mid;
  }
  return std::exp(hi) / flops;
}

}  // namespace moe::scaling
