// Helpers for the op tests: random tensors, central-difference gradients in double, and a
// comparison that prints the worst element on failure.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace moe::testing {

inline std::vector<double> randn(std::size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Numerical d(loss)/d(x[i]) for every i, by central differences with step h. loss() reads x.
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& loss,
                                        double h = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double old = x[i];
    x[i] = old + h;
    const double lp = loss();
    x[i] = old - h;
    const double lm = loss();
    x[i] = old;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// |a − b| <= atol + rtol·|b| elementwise; on failure reports the worst element.
template <typename A, typename B>
::testing::AssertionResult all_close(const std::string& what, const A& a, const B& b, double atol,
                                     double rtol) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << what << ": size " << a.size() << " vs " << b.size();
  double worst = -1;
  std::size_t wi = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double excess =
        std::abs(double(a[i]) - double(b[i])) - (atol + rtol * std::abs(double(b[i])));
    if (!(excess <= 0) && (worst < 0 || excess > worst || std::isnan(excess))) {
      worst = std::isnan(excess) ? 1e300 : excess;
      wi = i;
    }
  }
  if (worst < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": worst element " << wi << " got " << double(a[wi]) << " expected "
         << double(b[wi]) << " (atol " << atol << ", rtol " << rtol << ", n " << a.size() << ")";
}

template <typename Vec>
double max_abs(const Vec& v) {
  double m = 0;
  for (auto x : v) m = std::max(m, std::abs(double(x)));
  return m;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace moe::testing
