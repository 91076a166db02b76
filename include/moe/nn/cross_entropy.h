// Softmax cross-entropy over V classes, fused with its backward.
#pragma once
#include <cmath>
#include <cstdint>

#include "moe/kernels/vexp.h"

namespace moe {

// losses [N] (written, nats) for logits [N,V] and targets [N]. If dlogits is non-null it gets
// (softmax − onehot)·scale (written; may alias logits): scale = 1/N for a mean loss.
template <typename T>
void cross_entropy_forward_backward(T* losses, T* dlogits, const T* logits, const int32_t* targets,
                                    int N, int V, T scale) {
#pragma omp parallel for schedule(static) if (N > 16)
  for (int n = 0; n < N; ++n) {
    const T* z = logits + std::size_t(n) * V;
    T mx = z[0];
#pragma omp simd reduction(max : mx)
    for (int v = 0; v < V; ++v) mx = mx > z[v] ? mx : z[v];
    // The exponentials go straight into dlogits (when wanted): computed once, vectorized.
    T* e = dlogits ? dlogits + std::size_t(n) * V : nullptr;
    const int t = targets[n];
    const T zt = z[t];
    double sum = 0;
    if (e) {
#pragma omp simd
      for (int v = 0; v < V; ++v) e[v] = vexp(z[v] - mx);
#pragma omp simd reduction(+ : sum)
      for (int v = 0; v < V; ++v) sum += double(e[v]);
    } else {
#pragma omp simd reduction(+ : sum)
      for (int v = 0; v < V; ++v) sum += double(vexp(z[v] - mx));
    }
    losses[n] = T(double(mx) + std::log(sum) - double(zt));
    if (e) {
      const T k = T(1.0 / sum) * scale;
#pragma omp simd
      for (int v = 0; v < V; ++v) e[v] *= k;
      e[t] -= scale;
    }
  }
}

}  // namespace moe
