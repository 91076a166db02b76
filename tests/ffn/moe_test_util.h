// Shared by the MoE layer tests (test_moe.cpp, test_moe_routing.cpp): the step every test
// forward takes, a small spec, and the layer as a declarative op (tests/op_test.h).
#pragma once
#include <cmath>
#include <functional>
#include <vector>

#include "../op_test.h"
#include "moe/ffn/moe/moe_layer.h"

namespace moe::testing {

// The step every test forward takes: seed 7, step 3, layer 1, loss scale 1.
template <typename T>
MoeStep<T> step_of(int B, int T_, bool training) {
  MoeStep<T> st;
  st.batch = B;
  st.seq_len = T_;
  st.training = training;
  st.seed = 7;
  st.step = 3;
  st.layer = 1;
  return st;
}

inline MoeSpec spec_of(RouterKind kind, int E, int k, int C = 6, int H = 5) {
  MoeSpec s;
  s.C = C;
  s.E = E;
  s.H = H;
  s.k = k;
  s.kind = kind;
  return s;
}

// The layer as a declarative op (tests/op_test.h), one struct for every router kind: inputs x,
// the router (and noise) weights, the experts' and the shared experts' weights; outputs y and
// the aux + z loss. The harness's loss weight of that second output, r_aux, is the loss scale the
// layer multiplies the aux/z gradients by, so L = Σ y·R + r_aux·(aux + z) and every gradient is
// checked against central differences, and float against double. The layer keeps its routing
// between forward and backward, so the op's backward reruns the forward on a fresh layer
// (deterministic: the same routing) before it.
struct MoeLayerOp {
  MoeSpec spec;
  int B, T;
  // The chain's sums: the router product (C terms), the softmax (E), the experts' two products
  // (C, then H); backward adds the weight gradients' sums over the N tokens.
  double k_forward = spec.C + spec.E + spec.C + spec.H;
  double k_backward = k_forward + B * T;
  double relu_l1 = 0;  // relu: the L1 loss's coefficient (MoeStep::relu_l1)
  int N() const { return B * T; }
  bool glu() const { return spec.act == Activation::kSwiGLU; }
  std::vector<OpArg> args() const {
    const std::size_t E = spec.E, C = spec.C, H = spec.H, S = spec.n_shared;
    const std::size_t Hs = spec.shared_H();
    const double r = 3.0 / std::sqrt(double(C));  // well-separated router logits: no kinks
    const bool noisy = spec.kind == RouterKind::kNoisyTopK;
    return {{"x", std::size_t(N()) * C},
            {"router", E * C, GradMode::kAccumulate, r},
            {"w_noise", noisy ? E * C : 0, noisy ? GradMode::kAccumulate : GradMode::kNone, 0.3},
            {"w_gate", glu() ? E * H * C : 0, GradMode::kAccumulate, 0.5},
            {"w_up", E * H * C, GradMode::kAccumulate, 0.5},
            {"w_down", E * C * H, GradMode::kAccumulate, 0.5},
            {"s_gate", glu() ? S * Hs * C : 0, GradMode::kAccumulate, 0.5},
            {"s_up", S * Hs * C, GradMode::kAccumulate, 0.5},
            {"s_down", S * C * Hs, GradMode::kAccumulate, 0.5},
            {"s_router", spec.shared_gate ? C : 0, GradMode::kAccumulate, 0.5}};
  }
  std::vector<OpOut> outs() const { return {{"y", std::size_t(N()) * spec.C}, {"aux + z", 1}}; }
  template <typename U>
  static U* ptr(std::vector<U>& v) {
    return v.empty() ? nullptr : v.data();
  }
  template <typename U>
  void run_forward(MoeLayer<U>& layer, Arena& arena, OpData<U>& d) const {
    Arena m;
    layer.bind(m, B, T);
    arena = Arena(m.used());
    layer.bind(arena, B, T);
    MoeStep<U> st = step_of<U>(B, T, true);
    st.loss_scale = d.dout[1][0];
    st.relu_l1 = relu_l1;
    const std::vector<U> no_bias(spec.E, U(0));
    layer.forward(d.y(0), d.x(0),
                  {d.x(1), ptr(d.in[2]), no_bias.data(), ptr(d.in[3]), d.x(4), d.x(5), ptr(d.in[6]),
                   ptr(d.in[7]), ptr(d.in[8]), ptr(d.in[9])},
                  st);
    d.out[1][0] = U(layer.stats().aux_loss + layer.stats().z_loss);
  }
  template <typename U>
  void forward(OpData<U>& d) const {
    MoeLayer<U> layer(spec);
    Arena arena;
    run_forward(layer, arena, d);
  }
  template <typename U>
  void backward(OpData<U>& d) const {
    MoeLayer<U> layer(spec);
    Arena arena;
    OpData<U> f = d;
    run_forward(layer, arena, f);
    const std::vector<U> no_bias(spec.E, U(0));
    layer.backward(d.dx(0),
                   {d.dx(1), ptr(d.din[2]), ptr(d.din[3]), d.dx(4), d.dx(5), ptr(d.din[6]),
                    ptr(d.din[7]), ptr(d.din[8]), ptr(d.din[9])},
                   d.dy(0), d.x(0),
                   {d.x(1), ptr(d.in[2]), no_bias.data(), ptr(d.in[3]), d.x(4), d.x(5),
                    ptr(d.in[6]), ptr(d.in[7]), ptr(d.in[8]), ptr(d.in[9])});
  }
  // The double layer is the reference here: the layer's semantics are checked against PyTorch
  // (test_moe_reference.cpp) and by the reductions below; the op checks its gradients and its
  // float path.
  void reference(OpData<double>& d) const { forward(d); }
};

inline MoeSpec with(MoeSpec s, const std::function<void(MoeSpec&)>& edit) {
  edit(s);
  return s;
}

}  // namespace moe::testing
