// Rotary position embedding. Within each head of size hd, pair i (0 <= i < hd/2) is rotated by
// the angle pos·θ^(−2i/hd); the two styles differ only in which two elements form pair i:
//   half        (i, i + hd/2)  GPT-NeoX / HF LLaMA "rotate half"; llama.cpp's ROPE_TYPE_NEOX
//   interleaved (2i, 2i + 1)   Meta's original LLaMA; llama.cpp's ROPE_TYPE_NORM ("llama" arch)
// llama.cpp (ggml_rope_cache_init) uses the same angles, theta_i = pos·base^(−2i/n_dims), but
// forms base^(−2/n_dims)^i by repeated float multiplication; we compute each angle in double
// and round once, so the two agree to a few float ulps of the angle.
#pragma once
#include <cmath>
#include <vector>

namespace moe {

// cos/sin table [max_pos, hd/2], computed in double then rounded once; `interleaved` picks the
// pairing (see above).
template <typename T>
struct RopeTable {
  int half = 0;
  bool interleaved = false;
  std::vector<T> cos, sin;
  RopeTable() = default;
  RopeTable(int max_pos, int head_dim, double theta, bool interleaved_pairs = false)
      : half(head_dim / 2), interleaved(interleaved_pairs) {
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

// One token's row x [n_heads·hd] rotated into out [n_heads·hd] (out may be x: each pair is read
// before it is written) by the angles whose cos and sin rows are c, s [hd/2] (one position);
// inverse rotates by −angle.
template <typename T>
inline void rope_row(T* out, const T* x, const T* c, const T* s, int n_heads, int half, bool inter,
                     bool inverse) {
  const int hd = 2 * half;
  for (int h = 0; h < n_heads; ++h) {
    const T* v = x + h * hd;
    T* o = out + h * hd;
    if (inter) {  // pair i = (v[2i], v[2i + 1])
      for (int i = 0; i < half; ++i) {
        const T x1 = v[2 * i], x2 = v[2 * i + 1];
        const T sn = inverse ? -s[i] : s[i];
        o[2 * i] = x1 * c[i] - x2 * sn;
        o[2 * i + 1] = x2 * c[i] + x1 * sn;
      }
      continue;
    }
    for (int i = 0; i < half; ++i) {  // pair i = (v[i], v[i + hd/2])
      const T x1 = v[i], x2 = v[i + half];
      const T sn = inverse ? -s[i] : s[i];
      o[i] = x1 * c[i] - x2 * sn;
      o[i + half] = x2 * c[i] + x1 * sn;
    }
  }
}

// In place on x [N, n_heads·hd]; token n has position pos0 + n % T (T = sequence length).
// inverse = true rotates by −angle: that is the backward (the rotation's transpose).
template <typename T>
void rope_apply(T* x, const RopeTable<T>& tab, int N, int T_len, int pos0, int n_heads,
                bool inverse) {
  const int half = tab.half, row = n_heads * 2 * half;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const int pos = pos0 + n % T_len;
    T* v = x + std::size_t(n) * row;
    rope_row(v, v, tab.cos.data() + std::size_t(pos) * half,
             tab.sin.data() + std::size_t(pos) * half, n_heads, half, tab.interleaved, inverse);
  }
}

}  // namespace moe
