#include "moe/ffn/moe/remoe.h"

#include <cmath>
#include <limits>

#include "moe/core/error.h"

namespace moe {

int relu_l1_direction(double sparsity, int k, int E) {
  const double target = 1.0 - double(k) / double(E);
  return sparsity < target ? 1 : sparsity > target ? -1 : 0;
}

double relu_l1_coefficient(double init, double rate, double exponent) {
  return init * std::pow(rate, exponent);
}

ReluL1Schedule::ReluL1Schedule(double init, double rate, int k, int E)
    : init_(init),
      rate_(rate),
      k_(k),
      E_(E),
      last_sparsity_(std::numeric_limits<double>::quiet_NaN()) {}

void ReluL1Schedule::add_layer(Param* exponent) {
  MOE_CHECK(exponent && exponent->numel == 1, "internal: relu L1 exponent must be one value");
  exponents_.push_back(exponent);
}

bool ReluL1Schedule::same_settings(const ReluL1Schedule& o) const {
  return init_ == o.init_ && rate_ == o.rate_ && k_ == o.k_ && E_ == o.E_;
}

double ReluL1Schedule::lambda() const {
  MOE_CHECK(!exponents_.empty() && exponents_[0]->w, "internal: relu L1 schedule without layers");
  const float n = exponents_[0]->w[0];
  for (const Param* p : exponents_)
    MOE_CHECK(
        p->w[0] == n && std::isfinite(n) && std::fabs(n) <= 16777216.f,
        "tensor {}: got {}, expected an integer exponent equal in every relu layer ({} in {})",
        p->name, p->w[0], n, exponents_[0]->name);
  return relu_l1_coefficient(init_, rate_, double(n));
}

void ReluL1Schedule::add_sparsity(double sparsity) {
  sparsity_sum_ += sparsity;
  ++forwards_;
}

void ReluL1Schedule::end_step() {
  if (forwards_ == 0) return;
  last_sparsity_ = sparsity_sum_ / double(forwards_);
  const int dir = relu_l1_direction(last_sparsity_, k_, E_);
  const float n = exponents_[0]->w[0] + float(dir);  // exact: |n| stays far below 2^24
  for (Param* p : exponents_) p->w[0] = n;
  sparsity_sum_ = 0;
  forwards_ = 0;
}

}  // namespace moe
