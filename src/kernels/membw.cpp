#include "moe/kernels/membw.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>

namespace moe {

double measure_triad_gbps(int repeats) {
  constexpr int64_t kN = int64_t(64) << 20;
  // Uninitialised storage: the first touch happens in the parallel loop below, on the thread
  // that later streams the same part.
  std::unique_ptr<float[]> a(new float[kN]), b(new float[kN]), c(new float[kN]);
  float *pa = a.get(), *pb = b.get(), *pc = c.get();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < kN; ++i) {
    pa[i] = 0.0f;
    pb[i] = 1.0f;
    pc[i] = 2.0f;
  }
  double best = 1e30;
  const float s = 3.0f;
  for (int rep = 0; rep <= std::max(1, repeats); ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < kN; ++i) pa[i] = pb[i] + s * pc[i];
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0) best = std::min(best, dt);  // pass 0 is the warm-up
  }
  // Keep the result observable so the loop is not removed.
  volatile float sink = pa[kN / 2];
  (void)sink;
  return 3.0 * double(kN) * sizeof(float) / best / 1e9;
}

}  // namespace moe
