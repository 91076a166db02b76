// ReMoE's adaptive L1 coefficient (Wang et al., arXiv 2412.14711 §3.3; docs/MOE.md), shared by
// the relu MoE layers of one model:
//
//   λ_{i+1} = λ_i · α^{sign((1 − k/E) − S_i)},   λ_0 = relu_l1_init, α = relu_l1_rate
//
// S_i: the sparsity of step i, the mean over the model's relu layers and the step's training
// forwards (every micro-batch; each forward's over the global batch of all ranks) of
// 1 − active/(N·E) — the authors' Megatron code averages over layers, micro-batches and
// data-parallel ranks alike. sign(0) = 0: at the target exactly λ stays (their code divides).
// λ is kept as its exponent n (λ = λ_0·α^n, n an integer held exactly in a float): one
// non-trainable [1] tensor per relu layer, <prefix>.router.l1_exponent, all equal, so a
// checkpoint resumes λ bit-exactly. Each layer's loss takes λ/L (L relu layers), the paper's
// 1/(L·T) normalisation of L_reg.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/core/params.h"

namespace moe {

// sign((1 − k/E) − S): +1 (too dense: raise λ), −1 (too sparse: lower λ), 0 at the target.
int relu_l1_direction(double sparsity, int k, int E);

// λ = init · rate^exponent, in double.
double relu_l1_coefficient(double init, double rate, double exponent);

class ReluL1Schedule {
 public:
  ReluL1Schedule(double init, double rate, int k, int E);
  // Registers one relu layer's exponent tensor ([1], not trained). The first one is λ's source;
  // the schedule writes all of them.
  void add_layer(Param* exponent);
  // True when another layer's settings (k, E, λ_0, α) make it part of the same schedule.
  bool same_settings(const ReluL1Schedule& o) const;
  int layers() const { return int(exponents_.size()); }
  // λ_i (checks that every layer's exponent holds the same value: a checkpoint edited by hand
  // fails with the tensor named).
  double lambda() const;
  // The coefficient of one layer's loss this step: λ_i / L.
  double layer_coefficient() const { return lambda() / layers(); }
  // One training forward of one relu layer: its sparsity 1 − active/(N·E).
  void add_sparsity(double sparsity);
  // Once per optimizer step, after its forwards: exponent += sign((1 − k/E) − S_i), S_i the mean
  // of the sparsities added since the last update; nothing without them (the other layers'
  // end_step calls of the same step, or a step without training forwards).
  void end_step();
  double last_sparsity() const { return last_sparsity_; }  // S of the last update (NaN: none)

 private:
  double init_, rate_;
  int k_, E_;
  std::vector<Param*> exponents_;
  double sparsity_sum_ = 0;
  int64_t forwards_ = 0;
  double last_sparsity_;
};

}  // namespace moe
