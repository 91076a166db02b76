// Rotary position embedding, "rotate half" convention (GPT-NeoX / LLaMA in HF): within each head
// of size hd, pairs (i, i + hd/2) are rotated by angle pos·θ^(−2i/hd).
#pragma once
#include <cmath>
#include <vector>

namespace moe {

// cos/sin table [max_pos, hd/2], computed in double then rounded once.
template <typename T>
struct RopeTable {
  int half = 0;
  std::vector<T> cos, sin;
  RopeTable() = default;
  RopeTable(int max_pos, int head_dim, double theta) : half(head_dim / 2) {
    cos.resize(std::size_t(max_pos) * half);
    sin.resize(std::size_t(max_pos) * half);
    for (int p = 0; p < max_pos; ++p)
      for (int i = 0; i < half; ++i) {
        const double a = p * std::pow(theta, -2.0 * i / head_dim);
        cos[std::size_t(p) * half + i] = T(std::cos(a));
        sin[std::size_t(p) * half + i] = T(std::sin(a));
      }
  }
};

// In place on x [N, n_heads·hd]; token n has position pos0 + n % T (T = sequence length).
// inverse = true rotates by −angle: that is the backward (the rotation's transpose).
template <typename T>
void rope_apply(T* x, const RopeTable<T>& tab, int N, int T_len, int pos0, int n_heads,
                bool inverse) {
  const int half = tab.half, hd = 2 * half, row = n_heads * hd;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const int pos = pos0 + n % T_len;
    const T* c = tab.cos.data() + std::size_t(pos) * half;
    const T* s = tab.sin.data() + std::size_t(pos) * half;
    for (int h = 0; h < n_heads; ++h) {
      T* v = x + std::size_t(n) * row + h * hd;
      for (int i = 0; i < half; ++i) {
        const T x1 = v[i], x2 = v[i + half];
        const T sn = inverse ? -s[i] : s[i];
        v[i] = x1 * c[i] - x2 * sn;
        v[i + half] = x2 * c[i] + x1 * sn;
      }
    }
  }
}

}  // namespace moe
