// aux_loss_scope global_batch (Qiu et al., arXiv 2501.11873; docs/MOE.md): the MoE layer run as
// the trainer runs a step of G micro-batches — a counting forward of each, then the forward and
// backward of each with the aux and z gradients scaled by 1/G — against the PyTorch reference
// (tools/reference/moe_routing.py, fixture moe_global_batch: LBL_global with f̄ and P̄ over the
// whole global batch), against central differences of the same step objective in double, and
// the rules of the step counts (evaluation and forwards without a counting pass use their own).
//
// Tolerances as test_moe_reference.cpp: double 1e-10 relative to each tensor's largest entry
// (summation order only), float 2e-5 (float inputs and sums of a few hundred terms).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "../fixture_util.h"
#include "../grad_check.h"
#include "moe/core/safetensors.h"
#include "moe/ffn/moe/moe_layer.h"

using namespace moe;
using moe::testing::all_close;
using moe::testing::as_double;
using moe::testing::fixture_path;
using moe::testing::max_abs;

namespace {

// The fixture's layer, parameters and global batch of G micro-batches, in T.
template <typename T>
struct GlobalBatchCase {
  MoeSpec spec;
  int C = 0, B = 0, Tn = 0, G = 0, N = 0;  // N tokens per micro-batch
  std::map<std::string, std::vector<T>> P, grads;
  std::vector<T> x, R;  // [G·N, C]

  explicit GlobalBatchCase(const SafeTensorsReader& r) {
    const nlohmann::json L = nlohmann::json::parse(r.meta("layer"));
    FfnConfig f;
    f.kind = FfnConfig::Kind::kMoe;
    f.moe.num_experts = L["num_experts"];
    f.moe.top_k = L["top_k"];
    f.moe.d_expert = L["d_expert"];
    f.moe.aux_loss_coef = L["aux_loss_coef"];
    f.moe.z_loss_coef = L["z_loss_coef"];
    f.moe.router.normalize = L["normalize"];
    f.moe.aux_loss_scope =
        *enum_from_name<MoeFfnConfig::AuxLossScope>(L["aux_loss_scope"].get<std::string>());
    EXPECT_EQ(L["router"], "topk");
    EXPECT_EQ(L["activation"], "swiglu");
    EXPECT_EQ(L["capacity_factor"], 0.0);
    C = L["d_model"];
    B = L["batch"];
    Tn = L["seq_len"];
    G = L["micro_batches"];
    N = B * Tn;
    spec = MoeSpec::from_config(f, C);
    for (const char* n : {"router.weight", "experts.w_gate", "experts.w_up", "experts.w_down"}) {
      const std::vector<double> v = as_double(r, std::string("param.") + n);
      P[n] = std::vector<T>(v.begin(), v.end());
      grads[n] = std::vector<T>(v.size(), T(0));
    }
    const std::vector<double> xd = as_double(r, "x"), rd = as_double(r, "R");
    x.assign(xd.begin(), xd.end());
    R.assign(rd.begin(), rd.end());
  }
  MoeParams<T> params() {
    MoeParams<T> p;
    p.router = P["router.weight"].data();
    p.w_gate = P["experts.w_gate"].data();
    p.w_up = P["experts.w_up"].data();
    p.w_down = P["experts.w_down"].data();
    return p;
  }
  MoeGrads<T> grad_views() {
    MoeGrads<T> g;
    g.router = grads["router.weight"].data();
    g.w_gate = grads["experts.w_gate"].data();
    g.w_up = grads["experts.w_up"].data();
    g.w_down = grads["experts.w_down"].data();
    return g;
  }
};

// One optimizer step's worth of the layer: the counting forwards (when `count`), then each
// micro-batch's forward (and, when dx is given, its backward with dout = R, the aux/z gradients
// scaled by 1/G). Returns Σ_j [Σ y_j·R_j + (aux_j + z_j)/G] — the fixture's objective — and the
// mean aux and z losses; y [G·N, C] is written.
struct StepOut {
  double objective = 0, aux = 0, z = 0;
};

template <typename T>
StepOut run_step(MoeLayer<T>& layer, GlobalBatchCase<T>& c, std::vector<T>& y, int64_t step_no,
                 bool count, std::type_identity_t<std::vector<T>>* dx) {
  const std::size_t rows = std::size_t(c.N) * c.C;
  MoeStep<T> st;
  st.batch = c.B;
  st.seq_len = c.Tn;
  st.training = true;
  st.step = step_no;
  st.loss_scale = T(1) / T(c.G);
  const MoeParams<T> p = c.params();
  if (count) {
    st.count_pass = true;
    for (int j = 0; j < c.G; ++j) layer.forward(y.data() + j * rows, c.x.data() + j * rows, p, st);
    st.count_pass = false;
  }
  StepOut out;
  for (int j = 0; j < c.G; ++j) {
    layer.forward(y.data() + j * rows, c.x.data() + j * rows, p, st);
    for (std::size_t i = 0; i < rows; ++i)
      out.objective += double(y[j * rows + i]) * double(c.R[j * rows + i]);
    out.objective += (layer.stats().aux_loss + layer.stats().z_loss) / c.G;
    out.aux += layer.stats().aux_loss / c.G;
    out.z += layer.stats().z_loss / c.G;
    if (dx)
      layer.backward(dx->data() + j * rows, c.grad_views(), c.R.data() + j * rows,
                     c.x.data() + j * rows, p);
  }
  return out;
}

// Binds the layer; the returned arena holds its activations (keep it alive with the layer).
template <typename T>
std::unique_ptr<Arena> bind_layer(MoeLayer<T>& layer, int B, int Tn) {
  Arena measure;
  layer.bind(measure, B, Tn);
  auto acts = std::make_unique<Arena>(measure.used());
  layer.bind(*acts, B, Tn);
  return acts;
}

std::vector<double> to_d(const auto& v) { return std::vector<double>(v.begin(), v.end()); }

template <typename T>
void check_against_pytorch(double rel, double loss_tol) {
  SafeTensorsReader r(fixture_path("moe_global_batch.safetensors"));
  GlobalBatchCase<T> c(r);
  MoeLayer<T> layer(c.spec);
  const auto arena_layer = bind_layer(layer, c.B, c.Tn);
  std::vector<T> y(c.x.size()), dx(c.x.size(), T(0));
  const StepOut o = run_step(layer, c, y, 7, true, &dx);
  EXPECT_TRUE(all_close("y", to_d(y), r.read_f64("y"), rel * max_abs(r.read_f64("y")), 0));
  // The mean of the G micro-batch losses is LBL_global of the whole batch (eq. 6 = eq. 4).
  EXPECT_NEAR(o.aux, r.read_f64("aux_loss")[0], loss_tol);
  EXPECT_NEAR(o.z, r.read_f64("z_loss")[0], loss_tol);
  EXPECT_NEAR(o.objective, r.read_f64("loss")[0], loss_tol * 100);
  std::vector<double> ref = r.read_f64("grad.x");
  EXPECT_TRUE(all_close("grad.x", to_d(dx), ref, rel * max_abs(ref), 0));
  for (auto& [name, g] : c.grads) {
    ref = r.read_f64("grad." + name);
    EXPECT_TRUE(all_close("grad." + name, to_d(g), ref, rel * max_abs(ref) + 1e-15, 0));
  }
}

}  // namespace

TEST(MoeGlobalBatch, MatchesPyTorch) { check_against_pytorch<double>(1e-10, 1e-12); }

TEST(MoeGlobalBatch, FloatMatchesPyTorch) { check_against_pytorch<float>(2e-5, 1e-6); }

// Without the counting forwards each micro-batch's f_e is its own: the micro_batch scope's
// loss, bit for bit, which for this fixture is NOT LBL_global (the reference made sure of a gap
// ≥ 1e-4), so the test above can fail.
TEST(MoeGlobalBatch, WithoutCountingItIsTheMicroBatchLoss) {
  SafeTensorsReader r(fixture_path("moe_global_batch.safetensors"));
  GlobalBatchCase<double> c(r);
  MoeSpec micro = c.spec;
  micro.aux_scope = AuxLossScope::kMicroBatch;
  MoeLayer<double> a(c.spec), b(micro);
  const auto arena_a = bind_layer(a, c.B, c.Tn);
  const auto arena_b = bind_layer(b, c.B, c.Tn);
  std::vector<double> ya(c.x.size()), yb(c.x.size());
  const StepOut oa = run_step(a, c, ya, 3, false, nullptr);
  const StepOut ob = run_step(b, c, yb, 3, false, nullptr);
  EXPECT_EQ(oa.aux, ob.aux);
  EXPECT_GT(std::abs(oa.aux - r.read_f64("aux_loss")[0]), 1e-4);
  // Counting for step 3, then forwards of another step (or evaluation) ignore those counts.
  MoeStep<double> st;
  st.batch = c.B;
  st.seq_len = c.Tn;
  st.training = true;
  st.step = 3;
  st.count_pass = true;
  for (int j = 0; j < c.G; ++j)
    a.forward(ya.data() + j * c.N * c.C, c.x.data() + j * c.N * c.C, c.params(), st);
  const StepOut other = run_step(a, c, ya, 4, false, nullptr);
  EXPECT_EQ(other.aux, ob.aux);
  // A second run of counting forwards for the same step starts afresh (no double counts).
  const StepOut once = run_step(a, c, ya, 5, true, nullptr);
  const StepOut again = run_step(a, c, ya, 5, true, nullptr);
  EXPECT_EQ(once.aux, again.aux);
  EXPECT_NEAR(once.aux, r.read_f64("aux_loss")[0], 1e-12);
}

// The step objective's gradient (counting forwards, then forward + backward of each micro-batch)
// against central differences in double, for the router weights and the inputs of every
// micro-batch: each evaluation reruns the counting forwards, so f̄ follows the routing (it is
// piecewise constant: the fixture's routing margins ≥ 1e-3 ≫ h).
TEST(MoeGlobalBatch, StepGradientMatchesCentralDifferences) {
  SafeTensorsReader r(fixture_path("moe_global_batch.safetensors"));
  GlobalBatchCase<double> c(r);
  MoeLayer<double> layer(c.spec);
  const auto arena_layer = bind_layer(layer, c.B, c.Tn);
  std::vector<double> y(c.x.size()), dx(c.x.size(), 0.0);
  int64_t step_no = 100;
  run_step(layer, c, y, step_no, true, &dx);
  auto loss = [&] { return run_step(layer, c, y, ++step_no, true, nullptr).objective; };
  const std::vector<double> num_x = moe::testing::numeric_grad(c.x, loss);
  EXPECT_TRUE(all_close("d/dx", dx, num_x, 1e-7, 1e-6));
  const std::vector<double> num_r = moe::testing::numeric_grad(c.P["router.weight"], loss);
  EXPECT_TRUE(all_close("d/d router", c.grads["router.weight"], num_r, 1e-7, 1e-6));
  // The aux term's share of the router gradient is visible (α = 0.2): with f of each
  // micro-batch instead of f̄ the router gradient differs beyond the tolerance above.
  MoeSpec micro = c.spec;
  micro.aux_scope = AuxLossScope::kMicroBatch;
  MoeLayer<double> mb(micro);
  const auto arena_mb = bind_layer(mb, c.B, c.Tn);
  for (auto& [n, g] : c.grads) std::fill(g.begin(), g.end(), 0.0);
  std::vector<double> dxm(c.x.size(), 0.0);
  run_step(mb, c, y, 1, false, &dxm);
  EXPECT_FALSE(all_close("micro d/d router", c.grads["router.weight"], num_r, 1e-7, 1e-6));
}
