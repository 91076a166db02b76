#include "moe/ffn/moe/experts.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/core/threading.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/gemm_bf16.h"
#include "moe/kernels/grouped_gemm.h"
#include "moe/nn/activations.h"

namespace moe {

namespace {

template <typename T>
void activation_forward(T* hid, const T* gu, int m, int H, Activation a) {
  if (a == Activation::kSwiGLU)
    swiglu_forward(hid, gu, m, H);
  else
    gelu_forward(hid, gu, std::size_t(m) * H);
}

// dgu (written over gu) from dhid.
template <typename T>
void activation_backward(T* gu, const T* dhid, int m, int H, Activation a) {
  if (a == Activation::kSwiGLU)
    swiglu_backward(gu, dhid, gu, m, H);
  else
    gelu_backward(gu, dhid, gu, std::size_t(m) * H);
}

// bf16 experts: activation_forward, each row of hid also rounded into hidb [m, H] while it is in
// L1 (the down projection reads the rounded rows in place instead of packing hid).
void activation_forward_rounded(float* hid, uint16_t* hidb, const float* gu, int m, int H,
                                Activation a) {
  parallel_for_if(m, std::size_t(m) * H >= 65536, [&](int n) {
    float* h = hid + std::size_t(n) * H;
    if (a == Activation::kSwiGLU) {
      const float* g = gu + std::size_t(n) * 2 * H;
      swiglu_forward_row(h, g, g + H, H);
    } else {
      const float* x = gu + std::size_t(n) * H;
      for (int i = 0; i < H; ++i) h[i] = gelu(x[i]);
    }
    round_to_bf16(hidb + std::size_t(n) * H, h, std::size_t(H));
  });
}

// bf16 experts: activation_backward, each row of dgu also rounded into dgub [m, W1] while it is
// in L1 (the first projection's backward reads only the rounded rows). In place over gu rather
// than through nn/linear_bf16.h's rounded_rows (a per-thread row, whose parallel region is also
// a team of one inside the expert loop's): that form took this function's share of an E = 64
// bf16 step from 1.6% to 2.7% in perf (2026-12-07).
void activation_backward_rounded(uint16_t* dgub, float* gu, const float* dhid, int m, int H,
                                 Activation a) {
  const int W1 = a == Activation::kSwiGLU ? 2 * H : H;
  parallel_for_if(m, std::size_t(m) * W1 >= 65536, [&](int n) {
    float* g = gu + std::size_t(n) * W1;
    const float* d = dhid + std::size_t(n) * H;
    if (a == Activation::kSwiGLU) {
      swiglu_backward_row(g, g + H, d, g, g + H, H);
    } else {
      for (int i = 0; i < H; ++i) g[i] = gelu_grad(d[i], g[i]);
    }
    round_to_bf16(dgub + std::size_t(n) * W1, g, std::size_t(W1));
  });
}

// The first projection of an expert on OpenBLAS: gu [m, W1] = X [m,C] · [W_gate; W_up]ᵀ
// (SwiGLU: gate in columns 0..H-1, up in H..2H-1) or X · W_upᵀ (GELU). wg may be null for GELU.
template <typename T>
void first_forward(T* gu, const T* X, const T* wg, const T* wu, int m, int C, int H, Activation a) {
  if (a == Activation::kSwiGLU) {
    gemm<T>(false, true, m, H, C, T(1), X, C, wg, C, T(0), gu, 2 * H);
    gemm<T>(false, true, m, H, C, T(1), X, C, wu, C, T(0), gu + H, 2 * H);
  } else {
    gemm<T>(false, true, m, H, C, T(1), X, C, wu, C, T(0), gu, H);
  }
}

// Its backward from dgu [m, W1]: dW (+=) and dX (+= if accumulate, else =).
template <typename T>
void first_backward(T* dX, T* dwg, T* dwu, const T* dgu, const T* X, const T* wg, const T* wu,
                    int m, int C, int H, Activation a, bool accumulate) {
  const T beta = accumulate ? T(1) : T(0);
  if (a == Activation::kSwiGLU) {
    gemm<T>(true, false, H, C, m, T(1), dgu, 2 * H, X, C, T(1), dwg, C);
    gemm<T>(true, false, H, C, m, T(1), dgu + H, 2 * H, X, C, T(1), dwu, C);
    gemm<T>(false, false, m, C, H, T(1), dgu, 2 * H, wg, C, beta, dX, C);
    gemm<T>(false, false, m, C, H, T(1), dgu + H, 2 * H, wu, C, T(1), dX, C);
  } else {
    gemm<T>(true, false, H, C, m, T(1), dgu, H, X, C, T(1), dwu, C);
    gemm<T>(false, false, m, C, H, T(1), dgu, H, wu, C, beta, dX, C);
  }
}

// Whether for_each_expert runs the experts in parallel (one per task) for E experts.
bool experts_in_parallel(int E) {
  const int nt = max_threads();
  return E >= 2 * nt && nt > 1;
}

// Runs fn(e) for every expert in `order` (see the scheduling note in experts.h).
template <typename F>
void for_each_expert(const int32_t* order, int E, F&& fn) {
  if (experts_in_parallel(E)) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < E; ++i) fn(order[i]);
  } else {
    for (int i = 0; i < E; ++i) fn(order[i]);
  }
}

int largest_panel(const int32_t* off, int n) {
  int m = 0;
  for (int e = 0; e < n; ++e) m = std::max(m, off[e + 1] - off[e]);
  return m;
}

}  // namespace

void order_by_rows(int32_t* order, const int32_t* off, int n) {
  for (int e = 0; e < n; ++e) order[e] = e;
  std::stable_sort(order, order + n,
                   [&](int32_t x, int32_t y) { return off[x + 1] - off[x] > off[y + 1] - off[y]; });
}

template <typename T>
void ExpertBank<T>::bind(Arena& a, int experts, int max_expert_rows, int max_tokens, bool fusable) {
  const int C = spec_.C, H = spec_.H, W1 = spec_.w1_rows();
  order_ = a.take<int32_t>(experts);
  bound_experts_ = experts;
  bound_rows_ = max_expert_rows;
  bound_tokens_ = max_tokens;
  if (spec_.n_shared > 0) {
    const int Hs = spec_.shared_H(), W1s = spec_.shared_w1_rows();
    shared_gu_ = a.take<T>(std::size_t(spec_.n_shared) * max_tokens * W1s);
    shared_hid_ = a.take<T>(std::size_t(spec_.n_shared) * max_tokens * Hs);
    if (spec_.shared_gate) {
      shared_out_ = a.take<T>(std::size_t(max_tokens) * C);
      shared_dy_ = a.take<T>(std::size_t(max_tokens) * C);
      shared_sig_ = a.take<T>(max_tokens);
      shared_dz_ = a.take<T>(max_tokens);
    }
  }
  panel_ = false;
  fusable_ = fusable;
  if constexpr (std::is_same_v<T, float>) {
    const bool small = std::size_t(H) * C <= (std::size_t(1) << 17);
    const bool want = spec_.expert_gemm == ExpertGemm::kPanel ||
                      (spec_.expert_gemm == ExpertGemm::kAuto && small);
    if (panel_gemm_native() && want) {
      panel_ = true;
      pack_rows_ = max_expert_rows;
      const int Mx = std::max({pack_rows_, C, W1, H});
      // Each part a multiple of 16 floats, so every part stays 64-byte aligned.
      auto up16 = [](std::size_t n) { return (n + 15) / 16 * 16; };
      pack_b_floats_ =
          up16(std::max({panel_b_floats(C, W1), panel_b_floats(Mx, C), panel_b_floats(Mx, H),
                         panel_b_floats(W1, C), panel_b_floats(H, C)}));
      pack_a_floats_ = up16(panel_a_floats(Mx));
      pack_stride_ = pack_b_floats_ + pack_a_floats_ + up16(std::size_t(pack_rows_) * H);
      pack_threads_ = max_threads();
      pack_ = a.take<float>(pack_stride_ * pack_threads_);
    }
  }
  if (bf16_) size_bf16_scratch();  // bound again after set_bf16: the scratch follows the sizes
}

template <typename T>
float* ExpertBank<T>::pack_buffer() const {
  return pack_ + std::size_t(thread_index()) * pack_stride_;
}

template <typename T>
void ExpertBank<T>::apply_dropout(T* hid, int o, int m) const {
  const Rng rng(dropout_.seed, layer_stream(kPurposeExpertDropout, dropout_.step, dropout_.layer));
  const float p = spec_.expert_dropout;
  const T scale = T(1) / T(1 - p);
  const int H = spec_.H;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < H; ++j) {
      T& h = hid[std::size_t(i) * H + j];
      h = rng.uniform(uint64_t(o + i) * H + j) < p ? T(0) : h * scale;
    }
}

template <typename T>
void ExpertBank<T>::forward(const ExpertPanels<T>& q, const MoeParams<T>& p,
                            const ExpertDropout& dropout) {
  dropout_ = dropout;
  if (bf16_) {
    MOE_CHECK(bf16_packed_ && max_threads() <= bf16_threads_ &&
                  largest_panel(q.offsets, q.experts) <= bound_rows_,
              "internal: bf16 experts need refresh_low_precision() before the first forward and "
              "at most {} threads, {} rows",
              bf16_threads_, bound_rows_);
    round_token_matrices(q, false);
    order_by_rows(order_, q.offsets, q.experts);
    for_each_expert(order_, q.experts, [&](int e) { expert_forward_bf16(q, e); });
    return;
  }
  if (panel_) {
    const int m = largest_panel(q.offsets, q.experts);
    MOE_CHECK(m <= pack_rows_ && max_threads() <= pack_threads_,
              "internal: {} rows for one expert on {} threads exceed the bound {} rows, {} threads",
              m, max_threads(), pack_rows_, pack_threads_);
  }
  order_by_rows(order_, q.offsets, q.experts);
  for_each_expert(order_, q.experts, [&](int e) { expert_forward(q, p, e); });
}

template <typename T>
void ExpertBank<T>::expert_forward(const ExpertPanels<T>& q, const MoeParams<T>& p, int e) {
  const int C = spec_.C, H = spec_.H, W1 = spec_.w1_rows();
  const int o = q.offsets[e], m = q.offsets[e + 1] - o;
  if (m == 0) return;
  const std::size_t we = std::size_t(e) * H * C;
  T* gu = q.gu + std::size_t(o) * W1;
  T* hid = q.hid + std::size_t(o) * H;
  T* ye = q.ye + std::size_t(o) * C;
  const T* wg = p.w_gate ? p.w_gate + we : nullptr;
  const T* wd = p.w_down + std::size_t(e) * C * H;
  const bool gated = spec_.act == Activation::kSwiGLU;
  if constexpr (std::is_same_v<T, float>) {
    if (panel_) {
      float* pack = pack_buffer();
      float* apack = pack + pack_b_floats_;
      const float* X = q.rows ? q.x : q.x + std::size_t(o) * C;
      panel_first_forward(gu, X, q.rows ? q.rows + o : nullptr, wg, p.w_up + we, m, C, H, gated,
                          pack, apack);
      activation_forward(hid, gu, m, H, spec_.act);
      if (dropout_.active) apply_dropout(hid, o, m);
      panel_down_forward(ye, hid, wd, m, C, H, pack);
      return;
    }
  }
  first_forward(gu, q.x + std::size_t(o) * C, wg, p.w_up + we, m, C, H, spec_.act);
  activation_forward(hid, gu, m, H, spec_.act);
  if (dropout_.active) apply_dropout(hid, o, m);
  gemm<T>(false, true, m, C, H, T(1), hid, H, wd, H, T(0), ye, C);
}

template <typename T>
void ExpertBank<T>::backward(const ExpertPanels<T>& q, const MoeGrads<T>& g, const MoeParams<T>& p,
                             T* dx_rows) {
  if (bf16_) {
    MOE_CHECK(max_threads() <= bf16_threads_, "internal: {} threads, bf16 scratch for {}",
              max_threads(), bf16_threads_);
    round_token_matrices(q, true);  // x again: another forward may have run since
    order_by_rows(order_, q.offsets, q.experts);
    for_each_expert(order_, q.experts, [&](int e) { expert_backward_bf16(q, g, dx_rows, e); });
    return;
  }
  if (panel_) {
    MOE_CHECK(max_threads() <= pack_threads_, "internal: {} threads, pack scratch for {}",
              max_threads(), pack_threads_);
  }
  order_by_rows(order_, q.offsets, q.experts);
  for_each_expert(order_, q.experts, [&](int e) { expert_backward(q, g, p, dx_rows, e); });
}

template <typename T>
void ExpertBank<T>::expert_backward(const ExpertPanels<T>& q, const MoeGrads<T>& g,
                                    const MoeParams<T>& p, T* dx_rows, int e) {
  const int C = spec_.C, H = spec_.H, W1 = spec_.w1_rows();
  const int o = q.offsets[e], m = q.offsets[e + 1] - o;
  if (m == 0) return;
  const T* wd = p.w_down + std::size_t(e) * C * H;
  T* dwd = g.w_down + std::size_t(e) * C * H;
  const std::size_t we = std::size_t(e) * H * C;
  T* hid = q.hid + std::size_t(o) * H;
  T* gu = q.gu + std::size_t(o) * W1;
  T* dx = dx_rows + std::size_t(o) * C;
  const T* dye = q.dye ? q.dye + std::size_t(o) * C : nullptr;  // null when fused
  const T* wg = p.w_gate ? p.w_gate + we : nullptr;
  T* dwg = g.w_gate ? g.w_gate + we : nullptr;
  const bool gated = spec_.act == Activation::kSwiGLU;
  if constexpr (std::is_same_v<T, float>) {
    if (panel_) {
      float* pack = pack_buffer();
      float* apack = pack + pack_b_floats_;
      const float* X = q.x + std::size_t(o) * C;
      const int32_t* rows = nullptr;
      if (q.rows) {
        // Fused: inputs and d(y) read from the token matrices through the expert's rows.
        rows = q.rows + o;
        X = q.x;
        panel_down_backward(dwd, hid, q.dy, rows, q.gate + o, q.dgate + o, wd, m, C, H, pack, apack,
                            apack + pack_a_floats_);
      } else {
        panel_down_backward(dwd, hid, dye, nullptr, nullptr, nullptr, wd, m, C, H, pack, apack,
                            nullptr);
      }
      if (dropout_.active) apply_dropout(hid, o, m);  // the same mask, redrawn
      activation_backward(gu, hid, m, H, spec_.act);
      panel_first_backward(dx, dwg, g.w_up + we, gu, X, rows, wg, p.w_up + we, m, C, H, gated,
                           false, pack, apack);
      return;
    }
  }
  gemm<T>(true, false, C, H, m, T(1), dye, C, hid, H, T(1), dwd, H);
  gemm<T>(false, false, m, H, C, T(1), dye, C, wd, H, T(0), hid, H);
  if (dropout_.active) apply_dropout(hid, o, m);  // the same mask, redrawn
  activation_backward(gu, hid, m, H, spec_.act);
  first_backward(dx, dwg, g.w_up + we, gu, q.x + std::size_t(o) * C, wg, p.w_up + we, m, C, H,
                 spec_.act, false);
}

template <typename T>
void ExpertBank<T>::shared_forward(T* y, const T* x, const MoeParams<T>& p, int N) {
  // Dense FFNs of width Hs on every token, added with weight 1, or (shared_gate) summed into
  // shared_out_ and added with weight σ(x_n·w_sg) per token.
  const int C = spec_.C, H = spec_.shared_H(), W1 = spec_.shared_w1_rows();
  const bool gated = spec_.shared_gate;
  T* out = gated ? shared_out_ : y;
  if (bf16_)
    shared_forward_bf16(out, x, N);
  else
    for (int s = 0; s < spec_.n_shared; ++s) {
      T* gu = shared_gu_ + std::size_t(s) * N * W1;
      T* hid = shared_hid_ + std::size_t(s) * N * H;
      const std::size_t ws = std::size_t(s) * H * C;
      first_forward(gu, x, p.s_gate ? p.s_gate + ws : nullptr, p.s_up + ws, N, C, H, spec_.act);
      activation_forward(hid, gu, N, H, spec_.act);
      const T beta = gated && s == 0 ? T(0) : T(1);
      gemm<T>(false, true, N, C, H, T(1), hid, H, p.s_down + std::size_t(s) * C * H, H, beta, out,
              C);
    }
  if (!gated) return;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* xn = x + std::size_t(n) * C;
    T z = 0;
    for (int c = 0; c < C; ++c) z += xn[c] * p.s_router[c];
    const T sg = T(1) / (T(1) + std::exp(-z));
    shared_sig_[n] = sg;
    const T* o = shared_out_ + std::size_t(n) * C;
    T* yn = y + std::size_t(n) * C;
    for (int c = 0; c < C; ++c) yn[c] += sg * o[c];
  }
}

template <typename T>
void ExpertBank<T>::shared_gate_backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x,
                                         const MoeParams<T>& p, int N) {
  // y += σ_n·o_n:  d(o_n) = σ_n·dy_n (into shared_dy_), dz_n = (dy_n·o_n)·σ_n(1 − σ_n),
  // dx_n += dz_n·w_sg, dw_sg += Σ_n dz_n·x_n (token order: deterministic).
  const int C = spec_.C;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* dyn = dy + std::size_t(n) * C;
    const T* o = shared_out_ + std::size_t(n) * C;
    const T sg = shared_sig_[n];
    T dot = 0;
    for (int c = 0; c < C; ++c) dot += dyn[c] * o[c];
    const T dz = dot * sg * (T(1) - sg);
    shared_dz_[n] = dz;
    T* ds = shared_dy_ + std::size_t(n) * C;
    T* dxn = dx + std::size_t(n) * C;
    for (int c = 0; c < C; ++c) {
      ds[c] = sg * dyn[c];
      dxn[c] += dz * p.s_router[c];
    }
  }
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) g.s_router[c] += shared_dz_[n] * x[std::size_t(n) * C + c];
}

template <typename T>
void ExpertBank<T>::shared_backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x,
                                    const MoeParams<T>& p, int N) {
  const int C = spec_.C, H = spec_.shared_H(), W1 = spec_.shared_w1_rows();
  if (spec_.n_shared > 0 && spec_.shared_gate) {
    shared_gate_backward(dx, g, dy, x, p, N);
    dy = shared_dy_;  // the shared experts' output gradient σ_n·dy_n
  }
  if (bf16_) return shared_backward_bf16(dx, g, dy, x, N);
  for (int s = 0; s < spec_.n_shared; ++s) {
    T* gu = shared_gu_ + std::size_t(s) * N * W1;
    T* hid = shared_hid_ + std::size_t(s) * N * H;
    const T* wd = p.s_down + std::size_t(s) * C * H;
    const std::size_t ws = std::size_t(s) * H * C;
    gemm<T>(true, false, C, H, N, T(1), dy, C, hid, H, T(1), g.s_down + std::size_t(s) * C * H, H);
    gemm<T>(false, false, N, H, C, T(1), dy, C, wd, H, T(0), hid, H);  // hid ← d(hid)
    activation_backward(gu, hid, N, H, spec_.act);                     // gu ← d(gu)
    first_backward(dx, g.s_gate ? g.s_gate + ws : nullptr, g.s_up + ws, gu, x,
                   p.s_gate ? p.s_gate + ws : nullptr, p.s_up + ws, N, C, H, spec_.act, true);
  }
}

// ---- bf16 (train.precision = bf16): the same steps on grouped_gemm_bf16's products.

template <typename T>
void ExpertBank<T>::set_bf16(bool on) {
  if constexpr (!std::is_same_v<T, float>) {
    MOE_CHECK(!on, "the double-typed expert bank (the reference) has no bf16 path");
  } else {
    bf16_ = on;
    bf16_packed_ = false;
    if (!on) return;
    const bool gated = spec_.act == Activation::kSwiGLU;
    const int C = spec_.C, H = spec_.H, S = spec_.n_shared, Hs = S > 0 ? spec_.shared_H() : 0;
    // 32 values to spare: refresh_bf16 starts the panels at the first 64-byte boundary.
    bf16_weights_.assign(32 + std::size_t(bound_experts_) * bf16_expert_weight_elems(C, H, gated) +
                             std::size_t(S) * bf16_expert_weight_elems(C, Hs, gated),
                         0);
    bf16_w_.assign(std::size_t(bound_experts_ + S), {});
    size_bf16_scratch();
  }
}

template <typename T>
void ExpertBank<T>::size_bf16_scratch() {
  if constexpr (std::is_same_v<T, float>) {
    const bool gated = spec_.act == Activation::kSwiGLU;
    const int C = spec_.C, H = spec_.H, S = spec_.n_shared, Hs = S > 0 ? spec_.shared_H() : 0;
    // The shared experts run on all of a batch's tokens.
    const int rows = std::max(bound_rows_, S > 0 ? bound_tokens_ : 0), Hm = std::max(H, Hs);
    auto up32 = [](std::size_t n) { return (n + 31) / 32 * 32; };
    bf16_a_ = up32(bf16_expert_scratch_a(rows, C, Hm, gated));
    bf16_b_ = up32(bf16_expert_scratch_b(rows, C, Hm));
    bf16_c_ = up32(std::size_t(rows) * (gated ? 2 * Hm : Hm));
    bf16_threads_ = max_threads();
    bf16_scratch_.assign((bf16_a_ + bf16_b_ + bf16_c_) * bf16_threads_, 0);
    bf16_u_stride_ = up32(std::size_t(bound_rows_) * H);
    bf16_u_.assign(bf16_u_stride_ * bf16_threads_, 0.f);
    bf16_tokens_.assign(fused() ? 2 * std::size_t(bound_tokens_) * C : 0, 0);
  }
}

template <typename T>
void ExpertBank<T>::refresh_bf16(const MoeParams<T>& p, int experts) {
  if constexpr (std::is_same_v<T, float>) {
    MOE_CHECK(bf16_ && experts >= 0 && experts <= bound_experts_,
              "internal: refresh_bf16 of {} experts (bound {}, bf16 {})", experts, bound_experts_,
              bf16_);
    const bool gated = spec_.act == Activation::kSwiGLU;
    const int C = spec_.C, H = spec_.H, E = experts, S = spec_.n_shared;
    const int Hs = S > 0 ? spec_.shared_H() : 0;
    const std::size_t per_e = bf16_expert_weight_elems(C, H, gated);
    const std::size_t per_s = S > 0 ? bf16_expert_weight_elems(C, Hs, gated) : 0;
    uint16_t* base = bf16_weights_.data();
    base += (64 - reinterpret_cast<std::uintptr_t>(base) % 64) % 64 / sizeof(uint16_t);
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < E + S; ++i) {
      if (i < E) {
        const std::size_t we = std::size_t(i) * H * C;
        bf16_w_[i] = bf16_pack_expert_weights(base + i * per_e, p.w_gate ? p.w_gate + we : nullptr,
                                              p.w_up + we, p.w_down + we, C, H, gated);
      } else {
        const std::size_t ws = std::size_t(i - E) * Hs * C;
        // The shared experts' slots follow the bound routed experts'.
        bf16_w_[bound_experts_ + i - E] = bf16_pack_expert_weights(
            base + bound_experts_ * per_e + (i - E) * per_s, p.s_gate ? p.s_gate + ws : nullptr,
            p.s_up + ws, p.s_down + ws, C, Hs, gated);
      }
    }
    bf16_packed_ = true;
  }
}

template <typename T>
void ExpertBank<T>::round_token_matrices(const ExpertPanels<T>& q, bool with_dy) {
  if constexpr (std::is_same_v<T, float>) {
    if (!q.rows) return;  // unfused: the panels hold the rows themselves
    MOE_CHECK(q.tokens <= bound_tokens_ && !bf16_tokens_.empty(),
              "internal: {} tokens for bf16 experts bound for {}", q.tokens, bound_tokens_);
    const std::size_t n = std::size_t(q.tokens) * spec_.C;
    round_to_bf16(bf16_tokens_.data(), q.x, n);
    if (with_dy) round_to_bf16(bf16_tokens_.data() + std::size_t(bound_tokens_) * spec_.C, q.dy, n);
  }
}

template <typename T>
Bf16ExpertScratch ExpertBank<T>::bf16_scratch() const {
  uint16_t* base = const_cast<uint16_t*>(bf16_scratch_.data()) +
                   std::size_t(thread_index()) * (bf16_a_ + bf16_b_ + bf16_c_);
  return {base, base + bf16_a_};
}

template <typename T>
uint16_t* ExpertBank<T>::bf16_rows() const {
  return const_cast<uint16_t*>(bf16_scratch_.data()) +
         std::size_t(thread_index()) * (bf16_a_ + bf16_b_ + bf16_c_) + bf16_a_ + bf16_b_;
}

template <typename T>
void ExpertBank<T>::expert_forward_bf16(const ExpertPanels<T>& q, int e) {
  if constexpr (std::is_same_v<T, float>) {
    const int C = spec_.C, H = spec_.H, W1 = spec_.w1_rows();
    const int o = q.offsets[e], m = q.offsets[e + 1] - o;
    if (m == 0) return;
    float* gu = q.gu + std::size_t(o) * W1;
    float* hid = q.hid + std::size_t(o) * H;
    const Bf16ExpertScratch s = bf16_scratch();
    const float* X = q.rows ? q.x : q.x + std::size_t(o) * C;
    bf16_first_forward(gu, X, q.rows ? q.rows + o : nullptr, bf16_w_[e], m, C, H,
                       spec_.act == Activation::kSwiGLU, s, Bf16GemmPath::kAuto,
                       q.rows ? bf16_tokens_.data() : nullptr);
    uint16_t* hidb = bf16_rows();
    if (dropout_.active) {  // rounded after the mask
      activation_forward(hid, gu, m, H, spec_.act);
      apply_dropout(hid, o, m);
      round_to_bf16(hidb, hid, std::size_t(m) * H);
    } else {
      activation_forward_rounded(hid, hidb, gu, m, H, spec_.act);
    }
    bf16_down_forward(q.ye + std::size_t(o) * C, hid, bf16_w_[e], m, C, H, s, Bf16GemmPath::kAuto,
                      hidb);
  }
}

template <typename T>
void ExpertBank<T>::expert_backward_bf16(const ExpertPanels<T>& q, const MoeGrads<T>& g, T* dx_rows,
                                         int e) {
  if constexpr (std::is_same_v<T, float>) {
    const int C = spec_.C, H = spec_.H, W1 = spec_.w1_rows();
    const int o = q.offsets[e], m = q.offsets[e + 1] - o;
    if (m == 0) return;
    const std::size_t we = std::size_t(e) * H * C;
    float* hid = q.hid + std::size_t(o) * H;
    float* gu = q.gu + std::size_t(o) * W1;
    const Bf16ExpertScratch s = bf16_scratch();
    const Bf16ExpertWeights& w = bf16_w_[e];
    const float* X = q.x + std::size_t(o) * C;
    const int32_t* rows = nullptr;
    const uint16_t* Xb = nullptr;
    if (q.rows) {  // fused: x and dy read through the expert's rows (rounded in backward())
      rows = q.rows + o;
      X = q.x;
      Xb = bf16_tokens_.data();
      float* u = bf16_u_.data() + std::size_t(thread_index()) * bf16_u_stride_;
      bf16_down_backward(g.w_down + we, hid, q.dy, rows, q.gate + o, q.dgate + o, w, m, C, H, s, u,
                         Bf16GemmPath::kAuto, Xb + std::size_t(bound_tokens_) * C);
    } else {
      bf16_down_backward(g.w_down + we, hid, q.dye + std::size_t(o) * C, nullptr, nullptr, nullptr,
                         w, m, C, H, s, nullptr);
    }
    if (dropout_.active) apply_dropout(hid, o, m);  // the same mask, redrawn
    uint16_t* dgub = bf16_rows();
    activation_backward_rounded(dgub, gu, hid, m, H, spec_.act);
    bf16_first_backward(dx_rows + std::size_t(o) * C, g.w_gate ? g.w_gate + we : nullptr,
                        g.w_up + we, nullptr, X, rows, w, m, C, H, spec_.act == Activation::kSwiGLU,
                        false, s, Bf16GemmPath::kAuto, Xb, dgub);
  }
}

template <typename T>
void ExpertBank<T>::shared_forward_bf16(T* out, const T* x, int N) {
  if constexpr (std::is_same_v<T, float>) {
    const int C = spec_.C, H = spec_.shared_H(), W1 = spec_.shared_w1_rows();
    const Bf16ExpertScratch sc = bf16_scratch();
    for (int s = 0; s < spec_.n_shared; ++s) {
      float* gu = shared_gu_ + std::size_t(s) * N * W1;
      float* hid = shared_hid_ + std::size_t(s) * N * H;
      const Bf16ExpertWeights& w = bf16_w_[bound_experts_ + s];
      bf16_first_forward(gu, x, nullptr, w, N, C, H, spec_.act == Activation::kSwiGLU, sc);
      activation_forward(hid, gu, N, H, spec_.act);
      // out (+=) hid·W_downᵀ; the gated sum starts from the first shared expert.
      bf16_pack_a(sc.a, N, H, {hid, H});
      bf16_panel_gemm(N, C, H, sc.a, w.down_t, out, C, !(spec_.shared_gate && s == 0));
    }
  }
}

template <typename T>
void ExpertBank<T>::shared_backward_bf16(T* dx, const MoeGrads<T>& g, const T* dy, const T* x,
                                         int N) {
  if constexpr (std::is_same_v<T, float>) {
    const int C = spec_.C, H = spec_.shared_H(), W1 = spec_.shared_w1_rows();
    const Bf16ExpertScratch sc = bf16_scratch();
    for (int s = 0; s < spec_.n_shared; ++s) {
      float* gu = shared_gu_ + std::size_t(s) * N * W1;
      float* hid = shared_hid_ + std::size_t(s) * N * H;
      const std::size_t ws = std::size_t(s) * H * C;
      const Bf16ExpertWeights& w = bf16_w_[bound_experts_ + s];
      bf16_down_backward(g.s_down + ws, hid, dy, nullptr, nullptr, nullptr, w, N, C, H, sc,
                         nullptr);  // hid ← d(hid)
      uint16_t* dgub = bf16_rows();
      activation_backward_rounded(dgub, gu, hid, N, H, spec_.act);  // gu ← d(gu), rounded
      bf16_first_backward(dx, g.s_gate ? g.s_gate + ws : nullptr, g.s_up + ws, nullptr, x, nullptr,
                          w, N, C, H, spec_.act == Activation::kSwiGLU, true, sc,
                          Bf16GemmPath::kAuto, nullptr, dgub);
    }
  }
}

template class ExpertBank<float>;
template class ExpertBank<double>;

}  // namespace moe
