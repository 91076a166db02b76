// Softmax cross-entropy over V classes, fused with its backward.
#pragma once
#include <cmath>
#include <cstdint>

namespace moe {

// losses [N] (written, nats) for logits [N,V] and targets [N]. If dlogits is non-null it gets
// (softmax − onehot)·scale (written; may alias logits): scale = 1/N for a mean loss.
template <typename T>
void cross_entropy_forward_backward(T* losses, T* dlogits, const T* logits,
                                    const int32_t* targets, int N, int V, T scale) {
#pragma omp parallel for schedule(static) if (N > 16)
  for (int n = 0; n < N; ++n) {
    const T* z = logits + std::size_t(n) * V;
    T mx = z[0];
    for (int v = 1; v < V; ++v) mx = z[v] > mx ? z[v] : mx;
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += std::exp(double(z[v] - mx));
    const int t = targets[n];
    const double lse = double(mx) + std::log(sum);
    losses[n] = T(lse - double(z[t]));
    if (dlogits) {
      T* d = dlogits + std::size_t(n) * V;
      const double inv = 1.0 / sum;
      for (int v = 0; v < V; ++v) d[v] = T(std::exp(double(z[v] - mx)) * inv) * scale;
      d[t] -= scale;
    }
  }
}

}  // namespace moe
