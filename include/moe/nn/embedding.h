// Token embedding lookup: out[n] = E[tok[n]].
#pragma once
#include <cstdint>
#include <cstring>

#include "moe/core/threading.h"

namespace moe {

// out [N,C] (written); tokens [N] (validated by the caller against V); E [V,C].
template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* E, int N, int C) {
#pragma omp parallel for schedule(static) if (N > 256)
  for (int n = 0; n < N; ++n)
    std::memcpy(out + std::size_t(n) * C, E + std::size_t(tokens[n]) * C, sizeof(T) * C);
}

// dE [V,C] (+=). Each thread owns a slice of the C columns, so rows that share a token are summed
// in token order by one thread: deterministic, no atomics.
template <typename T>
void embedding_backward(T* dE, const T* dout, const int32_t* tokens, int N, int C) {
#pragma omp parallel
  {
#ifdef _OPENMP
    const int nt = omp_get_num_threads();
#else
    const int nt = 1;
#endif
    const int t = thread_index();
    const int c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int n = 0; n < N; ++n) {
      T* row = dE + std::size_t(tokens[n]) * C;
      const T* d = dout + std::size_t(n) * C;
      for (int c = c0; c < c1; ++c) row[c] += d[c];
    }
  }
}

}  // namespace moe
