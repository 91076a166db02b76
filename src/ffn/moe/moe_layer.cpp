#include "moe/ffn/moe/moe_layer.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string_view>
#include <type_traits>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/core/threading.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/panel_gemm.h"
#include "moe/nn/activations.h"

namespace moe {

MoeSpec MoeSpec::from_config(const FfnConfig& f, int d_model) {
  MoeSpec s;
  s.C = d_model;
  const MoeFfnConfig& m = f.moe;
  s.E = m.num_experts;
  s.H = m.d_expert;
  s.k = m.top_k;
  s.n_shared = m.shared_experts;
  s.act = f.activation;
  using Kind = RouterConfig::Kind;
  s.kind = m.router.kind == Kind::kNoisyTopK      ? RouterKind::kNoisyTopK
           : m.router.kind == Kind::kGShard       ? RouterKind::kGShard
           : m.router.kind == Kind::kExpertChoice ? RouterKind::kExpertChoice
                                                  : RouterKind::kTopK;
  s.normalize = m.router.normalize;
  s.sigmoid = m.router.score == RouterConfig::Score::kSigmoid;
  s.bias_balance = m.router.bias_balance;
  s.bias_rate = m.router.bias_rate;
  s.jitter = m.router.jitter;
  s.expert_dropout = m.expert_dropout;
  s.capacity_factor = m.capacity_factor;
  s.eval_capacity_factor = m.eval_capacity_factor;
  s.alpha = m.aux_loss_coef;
  s.beta = m.z_loss_coef;
  return s;
}

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

// The first projection of an expert: gu [m, W1] = X [m,C] · [W_gate; W_up]ᵀ (SwiGLU: gate in
// columns 0..H-1, up in H..2H-1) or X · W_upᵀ (GELU). wg may be null for GELU.
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

// The same products with panel_gemm (float, AVX-512): B packed into `pack`, A read in place.
// Shapes as in first_forward / first_backward and the down projection; W1 = 2H (SwiGLU) or H.
// rows (optional): X is the token matrix and the expert's row i is token rows[i] (no gathered
// copy of the expert's inputs); apack: panel_gemm's A scratch.
void panel_first_forward(float* gu, const float* X, const int32_t* rows, const float* wg,
                         const float* wu, int m, int C, int H, Activation a, float* pack,
                         float* apack) {
  const int W1 = a == Activation::kSwiGLU ? 2 * H : H;
  // B(k = c, n) = W_gate[n, c] for n < H, W_up[n − H, c] after: [W_gate; W_up]ᵀ [C, W1].
  if (a == Activation::kSwiGLU) panel_pack_b(pack, C, W1, 0, 0, C, H, wg, C, true);
  panel_pack_b(pack, C, W1, 0, W1 - H, C, H, wu, C, true);
  panel_gemm(m, W1, C, X, C, false, pack, gu, W1, false, apack, rows);
}

// ye [m, C] = hid [m, H] · W_downᵀ (W_down [C, H]).
void panel_down_forward(float* ye, const float* hid, const float* wd, int m, int C, int H,
                        float* pack) {
  panel_pack_b(pack, H, C, 0, 0, H, C, wd, H, true);
  panel_gemm(m, C, H, hid, H, false, pack, ye, C, false, nullptr, nullptr, /*stream_c=*/true);
}

// The down projection's backward, in one of two forms.
// From a d(ye) panel d [m, C] (rows and gate null): dW_down [C, H] += dᵀ · hid, then
// hid ← d(hid) = d · W_down.
// Without one (fused), from dy (the token matrix, d) and the expert's rows, gates and hidden
// panel: d(ye)_i = gate_i·dy[rows_i], so
//   dW_down [C, H] += Σ_i dy[rows_i]ᵀ · (gate_i·hid_i),
//   u = dy[rows] · W_down [m, H];  d(gate)_i = u_i · hid_i (= dy·ye, as ye = hid·W_downᵀ);
//   hid ← d(hid) = gate·u.
// u: [m, H] scratch (fused only).
void panel_down_backward(float* dwd, float* hid, const float* d, const int32_t* rows,
                         const float* gate, float* dgate, const float* wd, int m, int C, int H,
                         float* pack, float* apack, float* u) {
  auto weight_grad = [&] {
    panel_pack_b(pack, m, H, 0, 0, m, H, hid, H, false, nullptr, gate);
    panel_gemm(C, H, m, d, C, true, pack, dwd, H, true, apack, rows);
  };
  auto input_grad = [&] {
    panel_pack_b(pack, C, H, 0, 0, C, H, wd, H, false);
    panel_gemm(m, H, C, d, C, false, pack, rows ? u : hid, H, false, apack, rows);
  };
  if (!rows) {  // hid is overwritten by d(hid): its weight gradient first
    weight_grad();
    input_grad();
    return;
  }
  // Fused, u first: it gathers the expert's dy rows by row (sequential within each row, which
  // the hardware prefetcher follows), so the weight gradient's column-wise (transposed) walk
  // over the same rows then finds them in L2 instead of missing on each new line.
  input_grad();
  weight_grad();
  for (int i = 0; i < m; ++i) {
    float* h = hid + std::size_t(i) * H;
    const float* ui = u + std::size_t(i) * H;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < H; ++j) dot += ui[j] * h[j];
    dgate[i] = dot;
    const float gi = gate[i];
#pragma omp simd
    for (int j = 0; j < H; ++j) h[j] = gi * ui[j];
  }
}

// From dgu [m, W1]: dW_gate, dW_up [H, C] += dguᵀ · X (one packed X for both), then
// dX [m, C] (+)= dgu · [W_gate; W_up].
void panel_first_backward(float* dX, float* dwg, float* dwu, const float* dgu, const float* X,
                          const int32_t* rows, const float* wg, const float* wu, int m, int C,
                          int H, Activation a, bool accumulate, float* pack, float* apack) {
  const bool swiglu = a == Activation::kSwiGLU;
  const int W1 = swiglu ? 2 * H : H;
  panel_pack_b(pack, m, C, 0, 0, m, C, X, C, false, rows);
  if (swiglu) panel_gemm(H, C, m, dgu, W1, true, pack, dwg, C, true, apack);
  panel_gemm(H, C, m, dgu + (W1 - H), W1, true, pack, dwu, C, true, apack);
  if (swiglu) panel_pack_b(pack, W1, C, 0, 0, H, C, wg, C, false);
  panel_pack_b(pack, W1, C, W1 - H, 0, H, C, wu, C, false);
  panel_gemm(m, C, W1, dgu, W1, false, pack, dX, C, accumulate, nullptr, nullptr,
             /*stream_c=*/true);
}

// Whether for_each_expert runs the experts in parallel (one per task) for E experts.
bool experts_in_parallel(int E) {
  const int nt = max_threads();
  return E >= 2 * nt && nt > 1;
}

// Runs fn(e) for every expert in `order`. Many experts: one expert per task across threads
// (largest first, dynamic), each GEMM single-threaded. Few experts: one after another, each GEMM
// using all threads. Either way one expert's weight gradient is written by one task only.
template <typename F>
void for_each_expert(const int32_t* order, int E, F&& fn) {
  if (experts_in_parallel(E)) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < E; ++i) fn(order[i]);
  } else {
    for (int i = 0; i < E; ++i) fn(order[i]);
  }
}

// order[0..n) = 0..n−1 sorted by rows off[e+1] − off[e], most first (ties: lower index first):
// the largest-first schedule of for_each_expert.
void order_by_rows(int32_t* order, const int32_t* off, int n) {
  for (int e = 0; e < n; ++e) order[e] = e;
  std::stable_sort(order, order + n,
                   [&](int32_t x, int32_t y) { return off[x + 1] - off[x] > off[y + 1] - off[y]; });
}

}  // namespace

template <typename T>
void MoeLayer<T>::set_parallel(Communicator* comm, bool expert_parallel) {
  comm_ = comm;
  P_ = comm ? comm->size() : 1;
  rank_ = comm ? comm->rank() : 0;
  ep_ = expert_parallel && P_ > 1;
  El_ = s_.E;
  e0_ = 0;
  if (ep_) {
    MOE_CHECK(s_.E % P_ == 0,
              "expert parallelism over {} ranks needs num_experts divisible by {}, got {}", P_, P_,
              s_.E);
    El_ = s_.E / P_;
    e0_ = rank_ * El_;
  }
}

template <typename T>
void MoeLayer<T>::bind(Arena& a, int max_batch, int max_seq) {
  const int N = max_batch * max_seq, E = s_.E, C = s_.C, H = s_.H, W1 = s_.w1_rows();
  // Bound on routed rows: token choice ≤ N·k; expert choice ≤ T·E·c with c ≤ min(B, ⌈B·cf/E⌉);
  // the decode fallback of expert choice routes ≤ N·round(cf) ≤ N·E.
  int64_t rows = int64_t(N) * s_.k;
  if (s_.kind == RouterKind::kExpertChoice) {
    // Distributed training selects over the global batch of max_batch·P sequences; this rank
    // keeps at most all c of each (position, expert) group, and at most E per token.
    const float cf = std::max(s_.capacity_factor, s_.eval_capacity_factor);
    const int64_t Bg = int64_t(max_batch) * P_;
    const int64_t c = std::min<int64_t>(Bg, int64_t(std::ceil(Bg * cf / E)));
    const int64_t kk = std::min<int64_t>(E, std::max<int64_t>(1, std::lround(cf)));
    rows = std::max(std::min(int64_t(max_seq) * E * c, int64_t(N) * E), int64_t(N) * kk);
    if (P_ > 1) ec_scores_ = a.take<T>(std::size_t(Bg) * max_seq * E);
  }
  max_rows_ = int(rows);
  max_assign_ = int(rows);
  auto f = [&](std::size_t n) { return a.take<T>(n); };
  auto i32 = [&](std::size_t n) { return a.take<int32_t>(n); };
  logits_ = f(std::size_t(N) * E);
  scores_ = f(std::size_t(N) * E);
  dlogits_ = f(std::size_t(N) * E);
  lse_ = f(N);
  score_sum_ = f(N);
  cursor_ = i32(std::max(E, N));
  if (s_.kind == RouterKind::kNoisyTopK) {
    noise_logits_ = f(std::size_t(N) * E);
    eps_ = f(std::size_t(N) * E);
  }
  if (s_.jitter > 0) jittered_ = f(2 * std::size_t(N) * C);  // jittered x, then the factors
  a_expert_ = i32(max_assign_);
  a_token_ = i32(max_assign_);
  a_row_ = i32(max_assign_);
  a_gate_ = f(max_assign_);
  a_dgate_ = f(max_assign_);
  offsets_ = i32(E + 1);
  sel_count_ = i32(E);
  expert_order_ = i32(E);
  row_assign_ = i32(max_rows_);
  row_token_ = i32(max_rows_);
  tok_off_ = i32(N + 1);
  tok_rows_ = i32(max_rows_);
  gu_ = f(std::size_t(max_rows_) * W1);
  hid_ = f(std::size_t(max_rows_) * H);
  ye_ = f(std::size_t(max_rows_) * C);
  if (ep_) {
    // An owner can receive every routed row of the global batch (all of it to its experts).
    max_panel_rows_ = P_ * max_rows_;
    const std::size_t R = std::size_t(max_panel_rows_);
    rbuf_ = f(R * C);
    pxe_ = f(R * C);
    pgu_ = f(R * W1);
    phid_ = f(R * H);
    pye_ = f(R * C);
    pdye_ = f(R * C);
    p_off_ = i32(El_ + 1);
    p_order_ = i32(El_);
  }
  if constexpr (std::is_same_v<T, float>) {
    // Our panel GEMM wins where experts are small (fine-grained: the per-call packing of
    // OpenBLAS dominates); at H·C ≥ 256K floats OpenBLAS's blocking is as fast or faster
    // (measured side by side, docs/MOE.md). MOE_PANEL_GEMM=0 / 1 forces it off / on.
    const char* env = std::getenv("MOE_PANEL_GEMM");
    const std::string_view force = env ? env : "";
    MOE_CHECK(force.empty() || force == "0" || force == "1",
              "environment variable MOE_PANEL_GEMM: got '{}', expected 0 (OpenBLAS for the expert "
              "products), 1 (moe.cpp's panel GEMM) or unset (by expert size)",
              force);
    const bool small = std::size_t(H) * C <= (std::size_t(1) << 17);
    if (panel_gemm_native() && force != "0" && (small || force == "1")) {
      // An expert gets each token at most once (token choice, and expert choice's groups), so
      // ≤ N rows here, ≤ P·N on an owner under expert parallelism.
      pack_rows_ = ep_ ? P_ * N : N;
      const int Mx = std::max({pack_rows_, C, W1, H});
      // Per thread: packed B | A scratch (tiles of the weight-gradient products, or an expert's
      // gathered rows) | u [rows, H] of the fused down-projection backward. Each part a multiple
      // of 16 floats, so every part stays 64-byte aligned.
      auto up16 = [](std::size_t n) { return (n + 15) / 16 * 16; };
      pack_b_floats_ =
          up16(std::max({panel_b_floats(C, W1), panel_b_floats(Mx, C), panel_b_floats(Mx, H),
                         panel_b_floats(W1, C), panel_b_floats(H, C)}));
      pack_a_floats_ = up16(panel_a_floats(Mx));
      pack_stride_ = pack_b_floats_ + pack_a_floats_ + up16(std::size_t(pack_rows_) * H);
      pack_threads_ = max_threads();
      pack_ = a.take<float>(pack_stride_ * pack_threads_);
      // Without expert parallelism the experts read their inputs and d(y) straight from the
      // token matrices (no gathered x or d(ye) panels).
      fused_ = !ep_;
    }
  }
  if (fused_) {
    row_gate_ = f(max_rows_);
    row_dgate_ = f(max_rows_);
  } else {
    xe_ = f(std::size_t(max_rows_) * C);
    dye_ = f(std::size_t(max_rows_) * C);
  }
  if (s_.n_shared > 0) {
    s_gu_ = f(std::size_t(s_.n_shared) * N * W1);
    s_hid_ = f(std::size_t(s_.n_shared) * N * H);
    s_y_ = f(std::size_t(N) * C);
  }
}

// Top-k of key[0..E) into idx[0..k): largest first, ties → lower index.
template <typename T>
static void topk_indices(const T* key, int E, int k, int32_t* idx) {
  // The k largest keys, larger first, ties to the lower index (what a partial sort by (key
  // descending, index ascending) gives): one insertion pass, as experts come in index order an
  // equal key never displaces a kept one. Most keys lose to the k-th at once (a partial sort of
  // the E indices had cost ~1 µs per token at E = 64).
  int n = 0;
  for (int e = 0; e < E; ++e) {
    const T x = key[e];
    if (n == k && !(x > key[idx[k - 1]])) continue;
    int j = n < k ? n++ : k - 1;
    for (; j > 0 && x > key[idx[j - 1]]; --j) idx[j] = idx[j - 1];
    idx[j] = e;
  }
}

template <typename T>
void MoeLayer<T>::route_token_choice(const T* xr, const MoeParams<T>& p, bool training,
                                     uint64_t seed, int64_t step, int layer,
                                     const MoeNoise<T>& noise) {
  const int N = N_, E = s_.E, k = kk_;
  const bool noisy = s_.kind == RouterKind::kNoisyTopK && training;
  noisy_active_ = noisy;
  const bool gshard = s_.kind == RouterKind::kGShard;
  // Scores: softmax (default), sigmoid, or for the noisy router the softmax of the noisy logits.
  if (noisy) {
    gemm<T>(false, true, N, E, s_.C, T(1), xr, s_.C, p.w_noise, s_.C, T(0), noise_logits_, E);
    Rng rng(seed, stream_id(kPurposeNoise, uint32_t(step), uint32_t(layer)));
    for (std::size_t i = 0; i < std::size_t(N) * E; ++i)
      eps_[i] = noise.normal ? noise.normal[i] : T(rng.normal(uint64_t(tok0_) * E + i));
  }
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* r = logits_ + std::size_t(n) * E;
    T* sc = scores_ + std::size_t(n) * E;
    if (s_.sigmoid) {
      T sum = 0;
      for (int e = 0; e < E; ++e) sum += (sc[e] = T(1) / (T(1) + std::exp(-r[e])));
      score_sum_[n] = sum;
      continue;
    }
    T h[1024];  // E <= 1024 is checked by MoeFfn
    for (int e = 0; e < E; ++e) {
      h[e] = r[e];
      if (noisy) {
        const T z = noise_logits_[std::size_t(n) * E + e];
        const T softplus = z > T(20) ? z : std::log1p(std::exp(z));
        h[e] += eps_[std::size_t(n) * E + e] * softplus;
      }
    }
    T mx = h[0];
    for (int e = 1; e < E; ++e) mx = std::max(mx, h[e]);
    T sum = 0;
    for (int e = 0; e < E; ++e) sc[e] = vexp(h[e] - mx);  // vectorised (std::exp is a call)
    for (int e = 0; e < E; ++e) sum += sc[e];
    for (int e = 0; e < E; ++e) sc[e] /= sum;
    if (noisy) {  // keep the noisy logits themselves for the gate softmax below
      for (int e = 0; e < E; ++e) dlogits_[std::size_t(n) * E + e] = h[e];
    }
  }
  // Selection and gates, per token.
  n_assign_ = N * k;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* sc = scores_ + std::size_t(n) * E;
    T key[1024];
    int32_t idx[1024];
    const T* base = noisy ? dlogits_ + std::size_t(n) * E : sc;
    for (int e = 0; e < E; ++e) key[e] = base[e] + (s_.bias_balance ? p.bias[e] : T(0));
    topk_indices(key, E, k, idx);
    T g[1024];
    if (noisy) {  // softmax over the kept noisy logits
      T mx = base[idx[0]], sum = 0;
      for (int s = 0; s < k; ++s) mx = std::max(mx, base[idx[s]]);
      for (int s = 0; s < k; ++s) sum += (g[s] = std::exp(base[idx[s]] - mx));
      for (int s = 0; s < k; ++s) g[s] /= sum;
    } else {
      T sum = 0;
      for (int s = 0; s < k; ++s) sum += (g[s] = sc[idx[s]]);
      // Expert choice's decode fallback keeps the raw softmax scores as gates.
      if ((s_.normalize && s_.kind != RouterKind::kExpertChoice) || gshard)
        for (int s = 0; s < k; ++s) g[s] /= sum;
    }
    for (int s = 0; s < k; ++s) {
      const int a = n * k + s;
      a_expert_[a] = idx[s];
      a_token_[a] = n;
      a_gate_[a] = g[s];
      a_row_[a] = 0;  // provisionally kept
    }
    // GShard: the second expert is kept with probability min(1, 2·g2) during training.
    if (gshard && training) {
      const T u =
          noise.uniform
              ? noise.uniform[n]
              : T(Rng(seed, stream_id(kPurposeNoise, uint32_t(step), uint32_t(layer) | 0x8000u))
                      .uniform(tok0_ + n));
      if (!(T(2) * g[1] > u)) a_row_[n * k + 1] = -2;  // -2: skipped by random routing
    }
  }
}

template <typename T>
void MoeLayer<T>::apply_capacity() {
  const int N = N_, E = s_.E, k = kk_;
  const int P = dist_ ? P_ : 1, me = dist_ ? rank_ : 0;
  const bool gshard = s_.kind == RouterKind::kGShard;
  // cnt(r, s, e): rank r's slot-s assignments to expert e (GShard's skipped second choices
  // excluded); then sel[e], what f_e counts (GShard: first choices only). Summed over ranks.
  std::vector<double>& buf = cap_buf_;  // members: no allocation after the first step
  buf.assign(std::size_t(P) * k * E + E, 0.0);
  auto cnt = [&](int r, int s) { return buf.data() + (std::size_t(r) * k + s) * E; };
  double* sel = buf.data() + std::size_t(P) * k * E;
  for (int s = 0; s < k; ++s)
    for (int n = 0; n < N; ++n) {
      const int a = n * k + s, e = a_expert_[a];
      if (!gshard || s == 0) sel[e] += 1;
      if (a_row_[a] != -2) cnt(me, s)[e] += 1;
    }
  if (P > 1) comm_->allreduce_sum(buf.data(), buf.size());
  for (int e = 0; e < E; ++e) sel_count_[e] = int32_t(sel[e]);
  // The documented drop order over the global batch: all first choices before any second
  // choice, and so on; within a slot by global token index (rank by rank, then token by token).
  // An assignment is kept iff fewer than cap assignments to its expert precede it: kept counts
  // stop growing at cap, so "kept < cap" and "preceding < cap" are the same test.
  std::vector<int64_t>&before = cap_before_, &run = cap_run_;
  before.assign(E, 0);
  run.assign(E, 0);
  std::vector<int64_t>& kept = stats_.tokens_per_expert;
  kept.assign(E, 0);
  stats_.dropped = 0;
  stats_.assignments = 0;
  for (int s = 0; s < k; ++s) {
    run = before;
    for (int r = 0; r < me; ++r)
      for (int e = 0; e < E; ++e) run[e] += int64_t(cnt(r, s)[e]);
    for (int n = 0; n < N; ++n) {
      const int a = n * k + s;
      if (a_row_[a] == -2) continue;
      const int e = a_expert_[a];
      ++stats_.assignments;
      if (run[e] < cap_) {
        ++kept[e];
      } else {
        a_row_[a] = -1;
        ++stats_.dropped;
      }
      ++run[e];
    }
    for (int r = 0; r < P; ++r)
      for (int e = 0; e < E; ++e) before[e] += int64_t(cnt(r, s)[e]);
  }
}

template <typename T>
void MoeLayer<T>::route_expert_choice(int B, int Tn, float cf) {
  const int E = s_.E, N = B * Tn;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* r = logits_ + std::size_t(n) * E;
    T* sc = scores_ + std::size_t(n) * E;
    T mx = r[0], sum = 0;
    for (int e = 1; e < E; ++e) mx = std::max(mx, r[e]);
    for (int e = 0; e < E; ++e) sum += (sc[e] = std::exp(r[e] - mx));
    for (int e = 0; e < E; ++e) sc[e] /= sum;
  }
  // Distributed training: the groups span the global batch (B·P sequences, rank-major), so
  // every rank sees every rank's scores (summed into a zero buffer: exact) and makes the same
  // selection; it keeps the assignments of its own tokens.
  const int P = dist_ ? P_ : 1;
  const int Bg = B * P;
  const T* gs = scores_;
  if (P > 1) {
    std::fill(ec_scores_, ec_scores_ + std::size_t(Bg) * Tn * E, T(0));
    std::copy(scores_, scores_ + std::size_t(N) * E, ec_scores_ + std::size_t(tok0_) * E);
    comm_->allreduce_sum(ec_scores_, std::size_t(Bg) * Tn * E);
    gs = ec_scores_;
  }
  const int c = std::min(Bg, int(std::ceil(Bg * double(cf) / E)));
  // Group t = the tokens at position t of every sequence; each expert takes its top-c of them.
  // Slot (t, e, j) of the global order is kept here iff its token is one of this rank's.
  std::vector<int32_t>& pick = ec_pick_;
  pick.resize(std::size_t(Tn) * E * c);
#pragma omp parallel for schedule(static) if (Tn * E > 16)
  for (int ge = 0; ge < Tn * E; ++ge) {
    const int t = ge / E, e = ge % E;
    int32_t order[4096];  // B·P <= 4096 is checked by MoeFfn
    for (int b = 0; b < Bg; ++b) order[b] = b;
    std::partial_sort(order, order + c, order + Bg, [&](int32_t x, int32_t y) {
      const T px = gs[std::size_t(x * Tn + t) * E + e];
      const T py = gs[std::size_t(y * Tn + t) * E + e];
      return px != py ? px > py : x < y;
    });
    for (int j = 0; j < c; ++j) pick[std::size_t(ge) * c + j] = order[j] * Tn + t;
  }
  n_assign_ = 0;
  std::vector<int64_t>& kept = stats_.tokens_per_expert;
  kept.assign(E, 0);
  for (std::size_t i = 0; i < pick.size(); ++i) {
    const int64_t n = pick[i] - tok0_;
    if (n < 0 || n >= N) continue;
    const int a = n_assign_++, e = int(i / c) % E;
    a_expert_[a] = e;
    a_token_[a] = int32_t(n);
    a_gate_[a] = scores_[std::size_t(n) * E + e];
    a_row_[a] = 0;
    ++kept[e];
  }
  std::fill(sel_count_, sel_count_ + E, Tn * c);
  stats_.assignments = n_assign_;  // this rank's; finish_stats sums over ranks
  stats_.dropped = 0;
}

template <typename T>
void MoeLayer<T>::dispatch() {
  const int E = s_.E, N = N_;
  // Counting sort of the kept assignments by expert (assignment order within an expert).
  std::fill(offsets_, offsets_ + E + 1, 0);
  for (int a = 0; a < n_assign_; ++a)
    if (a_row_[a] >= 0) ++offsets_[a_expert_[a] + 1];
  for (int e = 0; e < E; ++e) offsets_[e + 1] += offsets_[e];
  n_rows_ = offsets_[E];
  MOE_CHECK(n_rows_ <= max_rows_, "internal: {} routed rows exceed the bound {}", n_rows_,
            max_rows_);
  std::copy(offsets_, offsets_ + E, cursor_);
  for (int a = 0; a < n_assign_; ++a) {
    if (a_row_[a] < 0) continue;
    const int r = cursor_[a_expert_[a]]++;
    a_row_[a] = r;
    row_assign_[r] = a;
    row_token_[r] = a_token_[a];
  }
  // Token CSR over rows, in assignment order per token: for token choice a = n·k + s (slot
  // order); for expert choice a = (t·E + e)·c + j (expert order). This is the fixed order of
  // the combine and of dx's scatter.
  std::fill(tok_off_, tok_off_ + N + 1, 0);
  for (int a = 0; a < n_assign_; ++a)
    if (a_row_[a] >= 0) ++tok_off_[a_token_[a] + 1];
  for (int n = 0; n < N; ++n) tok_off_[n + 1] += tok_off_[n];
  std::copy(tok_off_, tok_off_ + N, cursor_);
  for (int a = 0; a < n_assign_; ++a)
    if (a_row_[a] >= 0) tok_rows_[cursor_[a_token_[a]]++] = a_row_[a];
  order_by_rows(expert_order_, offsets_, E);
}

template <typename T>
void MoeLayer<T>::apply_expert_dropout(T* hid, int o, int m) const {
  // Element (row r, unit j) is kept with probability 1 − p; kept ones are scaled by 1/(1 − p).
  const Rng rng(seed_, stream_id(kPurposeDropout, uint32_t(step_), uint32_t(layer_)));
  const float p = s_.expert_dropout;
  const T scale = T(1) / T(1 - p);
  const int H = s_.H;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < H; ++j) {
      T& h = hid[std::size_t(i) * H + j];
      h = rng.uniform(uint64_t(o + i) * H + j) < p ? T(0) : h * scale;
    }
}

template <typename T>
float* MoeLayer<T>::pack_buffer() const {
  const int t = thread_index();
  MOE_CHECK(t < pack_threads_, "internal: thread {} of a pack scratch sized for {} threads", t,
            pack_threads_);
  return pack_ + std::size_t(t) * pack_stride_;
}

template <typename T>
void MoeLayer<T>::panels_forward(const Panels& q, const MoeParams<T>& p) {
  const int C = s_.C, H = s_.H, W1 = s_.w1_rows();
  // Our panel GEMM for small experts (chosen in bind by shape only, so results do not depend on
  // the thread count; with few experts in turn, panel_gemm spreads each product over threads).
  const bool panel = pack_ != nullptr;
  for_each_expert(q.order, q.n, [&](int e) {
    const int o = q.off[e], m = q.off[e + 1] - o;
    if (m == 0) return;
    const std::size_t we = std::size_t(e) * H * C;
    T* gu = q.gu + std::size_t(o) * W1;
    T* hid = q.hid + std::size_t(o) * H;
    const T* wg = p.w_gate ? p.w_gate + we : nullptr;
    const T* wd = p.w_down + std::size_t(e) * C * H;
    if constexpr (std::is_same_v<T, float>) {
      if (panel) {
        MOE_CHECK(m <= pack_rows_, "internal: {} rows for one expert exceed the bound {}", m,
                  pack_rows_);
        float* pack = pack_buffer();
        float* apack = pack + pack_b_floats_;
        const float* X = q.rows ? q.xe : q.xe + std::size_t(o) * C;
        panel_first_forward(gu, X, q.rows ? q.rows + o : nullptr, wg, p.w_up + we, m, C, H, s_.act,
                            pack, apack);
        activation_forward(hid, gu, m, H, s_.act);
        if (dropout_active_) apply_expert_dropout(hid, o, m);
        panel_down_forward(q.ye + std::size_t(o) * C, hid, wd, m, C, H, pack);
        return;
      }
    }
    first_forward(gu, q.xe + std::size_t(o) * C, wg, p.w_up + we, m, C, H, s_.act);
    activation_forward(hid, gu, m, H, s_.act);
    if (dropout_active_) apply_expert_dropout(hid, o, m);
    gemm<T>(false, true, m, C, H, T(1), hid, H, wd, H, T(0), q.ye + std::size_t(o) * C, C);
  });
}

template <typename T>
void MoeLayer<T>::panels_backward(const Panels& q, const MoeGrads<T>& g, const MoeParams<T>& p,
                                  T* dxe) {
  const int C = s_.C, H = s_.H, W1 = s_.w1_rows();
  const bool panel = pack_ != nullptr;
  // Each expert's weight gradients are written by one task.
  for_each_expert(q.order, q.n, [&](int e) {
    const int o = q.off[e], m = q.off[e + 1] - o;
    if (m == 0) return;
    const T* wd = p.w_down + std::size_t(e) * C * H;
    T* dwd = g.w_down + std::size_t(e) * C * H;
    const std::size_t we = std::size_t(e) * H * C;
    T* hid = q.hid + std::size_t(o) * H;
    T* gu = q.gu + std::size_t(o) * W1;
    const T* dye = q.dye ? q.dye + std::size_t(o) * C : nullptr;  // null when fused
    const T* wg = p.w_gate ? p.w_gate + we : nullptr;
    T* dwg = g.w_gate ? g.w_gate + we : nullptr;
    if constexpr (std::is_same_v<T, float>) {
      if (panel) {
        float* pack = pack_buffer();
        float* apack = pack + pack_b_floats_;
        const float* X = q.xe + std::size_t(o) * C;
        const int32_t* rows = nullptr;
        if (q.rows) {
          // Fused: inputs and d(y) read from the token matrices through the expert's rows.
          rows = q.rows + o;
          X = q.xe;
          panel_down_backward(dwd, hid, q.dy, rows, q.row_gate + o, q.row_dgate + o, wd, m, C, H,
                              pack, apack, apack + pack_a_floats_);
        } else {
          panel_down_backward(dwd, hid, dye, nullptr, nullptr, nullptr, wd, m, C, H, pack, apack,
                              nullptr);
        }
        if (dropout_active_) apply_expert_dropout(hid, o, m);  // the same mask, redrawn
        activation_backward(gu, hid, m, H, s_.act);
        panel_first_backward(dxe + std::size_t(o) * C, dwg, g.w_up + we, gu, X, rows, wg,
                             p.w_up + we, m, C, H, s_.act, false, pack, apack);
        return;
      }
    }
    gemm<T>(true, false, C, H, m, T(1), dye, C, hid, H, T(1), dwd, H);
    gemm<T>(false, false, m, H, C, T(1), dye, C, wd, H, T(0), hid, H);
    if (dropout_active_) apply_expert_dropout(hid, o, m);  // the same mask, redrawn
    activation_backward(gu, hid, m, H, s_.act);
    first_backward(dxe + std::size_t(o) * C, dwg, g.w_up + we, gu, q.xe + std::size_t(o) * C, wg,
                   p.w_up + we, m, C, H, s_.act, false);
  });
}

template <typename T>
void MoeLayer<T>::exchange_setup() {
  // Rows are sorted by expert and experts are owned in contiguous blocks of El, so the rows for
  // rank q are one contiguous range. First the per-(rank, local expert) row counts.
  const int P = P_, El = El_;
  const auto t0 = std::chrono::steady_clock::now();
  send_e_.assign(std::size_t(P) * El, 0);
  recv_e_.assign(std::size_t(P) * El, 0);
  for (int e = 0; e < s_.E; ++e) send_e_[e] = offsets_[e + 1] - offsets_[e];
  comm_->alltoall(send_e_.data(), recv_e_.data(), El);
  comm_stats_.seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  comm_stats_.bytes += double(P - 1) * El * sizeof(int);
  send_n_.assign(P, 0);
  recv_n_.assign(P, 0);
  for (int r = 0; r < P; ++r) {
    send_n_[r] = offsets_[(r + 1) * El] - offsets_[r * El];
    for (int j = 0; j < El; ++j) recv_n_[r] += recv_e_[std::size_t(r) * El + j];
  }
  // Owner panels: local expert j's rows from rank 0, then rank 1, ... (a fixed order).
  p_off_[0] = 0;
  for (int j = 0; j < El; ++j) {
    int64_t m = 0;
    for (int r = 0; r < P; ++r) m += recv_e_[std::size_t(r) * El + j];
    p_off_[j + 1] = int32_t(p_off_[j] + m);
  }
  MOE_CHECK(p_off_[El] <= max_panel_rows_, "internal: {} received rows exceed the bound {}",
            p_off_[El], max_panel_rows_);
  blk_panel_.assign(std::size_t(P) * El, 0);
  for (int j = 0; j < El; ++j) {
    int o = p_off_[j];
    for (int r = 0; r < P; ++r) {
      blk_panel_[std::size_t(r) * El + j] = o;
      o += recv_e_[std::size_t(r) * El + j];
    }
  }
  order_by_rows(p_order_, p_off_, El);
}

template <typename T>
void MoeLayer<T>::exchange(const T* send, T* recv, bool to_owner) {
  // to_owner: send = this rank's rows in expert order → recv = the owner's panels.
  // Back: send = the owner's panels → recv = the rows in the order this rank sent them.
  const int P = P_, El = El_, C = s_.C;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int64_t>&sc = xch_sc_, &rc = xch_rc_;
  sc.resize(P);
  rc.resize(P);
  for (int r = 0; r < P; ++r) {
    sc[r] = send_n_[r] * C;
    rc[r] = recv_n_[r] * C;
  }
  // Arrival order (rank, local expert) ↔ panel blocks; each block is contiguous in both.
  auto blocks = [&](bool into_panels) {
    std::size_t at = 0;
    for (int r = 0; r < P; ++r)
      for (int j = 0; j < El; ++j) {
        const std::size_t m = std::size_t(recv_e_[std::size_t(r) * El + j]) * C;
        T* pan =
            (into_panels ? recv : rbuf_) + std::size_t(blk_panel_[std::size_t(r) * El + j]) * C;
        if (into_panels)
          std::memcpy(pan, rbuf_ + at, m * sizeof(T));
        else
          std::memcpy(rbuf_ + at, send + std::size_t(blk_panel_[std::size_t(r) * El + j]) * C,
                      m * sizeof(T));
        at += m;
      }
  };
  if (to_owner) {
    comm_->alltoallv(send, sc.data(), rbuf_, rc.data());
    blocks(true);
  } else {
    blocks(false);
    comm_->alltoallv(rbuf_, rc.data(), recv, sc.data());
  }
  double sent = 0;
  for (int r = 0; r < P; ++r)
    if (r != rank_) sent += double(to_owner ? sc[r] : rc[r]) * sizeof(T);
  comm_stats_.bytes += sent;
  comm_stats_.seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename T>
void MoeLayer<T>::forward(T* y, const T* x, const MoeParams<T>& p, int B, int Tn, bool training,
                          uint64_t seed, int64_t step, int layer, T loss_scale,
                          const MoeNoise<T>& noise) {
  const int N = B * Tn, E = s_.E, C = s_.C;
  N_ = N;
  B_ = B;
  T_ = Tn;
  dist_ = training && P_ > 1;
  n_global_ = int64_t(N) * (dist_ ? P_ : 1);
  tok0_ = dist_ ? int64_t(rank_) * N : 0;
  loss_scale_ = loss_scale;
  seed_ = seed;
  step_ = step;
  layer_ = layer;
  dropout_active_ = training && s_.expert_dropout > 0;
  const float cf = training ? s_.capacity_factor : s_.eval_capacity_factor;
  // Expert choice needs a group of sequences; decoding one sequence (B = 1) routes with
  // token-choice top-round(cf) on the same softmax scores, unnormalised (docs/MOE.md).
  ec_mode_ = s_.kind == RouterKind::kExpertChoice && B > 1;
  kk_ =
      s_.kind == RouterKind::kExpertChoice ? std::min(E, std::max(1, int(std::lround(cf)))) : s_.k;
  cap_ = (s_.kind != RouterKind::kExpertChoice && cf > 0)
             ? int(std::min<double>(INT_MAX, std::ceil(double(cf) * n_global_ * kk_ / E)))
             : INT_MAX;
  // Router input: x, or x with multiplicative jitter (training only; the experts see plain x).
  const T* xr = x;
  if (training && s_.jitter > 0) {
    T* u = jittered_ + std::size_t(N) * C;
    Rng rng(seed, stream_id(kPurposeNoise, uint32_t(step), uint32_t(layer) | 0x4000u));
    for (std::size_t i = 0; i < std::size_t(N) * C; ++i) {
      u[i] = T(1) - T(s_.jitter) + T(2 * s_.jitter) * T(rng.uniform(uint64_t(tok0_) * C + i));
      jittered_[i] = x[i] * u[i];
    }
    xr = jittered_;
  }
  jitter_active_ = xr != x;
  gemm<T>(false, true, N, E, C, T(1), xr, C, p.router, C, T(0), logits_, E);
  // z-loss needs logsumexp of the raw logits.
  // Per token in parallel, then summed in token order (the same sum for any thread count).
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* r = logits_ + std::size_t(n) * E;
    T mx = r[0];
    for (int e = 1; e < E; ++e) mx = std::max(mx, r[e]);
    // Float: the vectorised vexp (~1-2 ulp; a scalar libm exp per logit had been ~1 ms per step
    // at E = 64, 4096 tokens), summed in double. Double: std::exp, as before.
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int e = 0; e < E; ++e) sum += double(vexp(T(r[e] - mx)));
    lse_[n] = T(double(mx) + std::log(sum));
  }
  double z = 0;
  for (int n = 0; n < N; ++n) z += double(lse_[n]) * double(lse_[n]);
  noisy_active_ = false;
  if (ec_mode_) {
    route_expert_choice(B, Tn, cf);
  } else {
    route_token_choice(xr, p, training, seed, step, layer, noise);
    apply_capacity();
  }
  dispatch();
  if (!fused_) {
#pragma omp parallel for schedule(static) if (n_rows_ > 256)
    for (int r = 0; r < n_rows_; ++r)
      std::memcpy(xe_ + std::size_t(r) * C, x + std::size_t(row_token_[r]) * C, sizeof(T) * C);
  }
  if (ep_ && dist_) {
    // Expert parallel training: rows to their experts' owners, experts there, results back.
    exchange_setup();
    exchange(xe_, pxe_, true);
    panels_forward({pxe_, pgu_, phid_, pye_, pdye_, p_off_, p_order_, El_}, p);
    exchange(pye_, ye_, false);
  } else if (ep_) {
    // Evaluation: every rank holds the same tokens and routes them alike; each runs its own
    // experts' rows, the others' contribute zero, and the partial outputs are summed below.
    const int32_t* off = offsets_ + e0_;
    order_by_rows(p_order_, off, El_);
    panels_forward({xe_, gu_, hid_, ye_, dye_, off, p_order_, El_}, p);
    std::fill(ye_, ye_ + std::size_t(off[0]) * C, T(0));
    std::fill(ye_ + std::size_t(off[El_]) * C, ye_ + std::size_t(n_rows_) * C, T(0));
  } else if (fused_) {
    Panels q{x, gu_, hid_, ye_, nullptr, offsets_, expert_order_, E};
    q.rows = row_token_;
    panels_forward(q, p);
  } else {
    panels_forward({xe_, gu_, hid_, ye_, dye_, offsets_, expert_order_, E}, p);
  }
  // Combine in the fixed per-token order.
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    T* yn = y + std::size_t(n) * C;
    std::fill(yn, yn + C, T(0));
    for (int i = tok_off_[n]; i < tok_off_[n + 1]; ++i) {
      const int r = tok_rows_[i];
      const T g = a_gate_[row_assign_[r]];
      const T* ye = ye_ + std::size_t(r) * C;
      for (int c = 0; c < C; ++c) yn[c] += g * ye[c];
    }
  }
  if (ep_ && !dist_) {
    const auto t0 = std::chrono::steady_clock::now();
    comm_->allreduce_sum(y, std::size_t(N) * C);
    comm_stats_.seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // Shared experts: dense FFNs on every token, added with weight 1.
  const int H = s_.H, W1 = s_.w1_rows();
  for (int s = 0; s < s_.n_shared; ++s) {
    T* gu = s_gu_ + std::size_t(s) * N * W1;
    T* hid = s_hid_ + std::size_t(s) * N * H;
    const std::size_t ws = std::size_t(s) * H * C;
    first_forward(gu, x, p.s_gate ? p.s_gate + ws : nullptr, p.s_up + ws, N, C, H, s_.act);
    activation_forward(hid, gu, N, H, s_.act);
    gemm<T>(false, true, N, C, H, T(1), hid, H, p.s_down + std::size_t(s) * C * H, H, T(1), y, C);
  }
  finish_stats(z);
}

template <typename T>
void MoeLayer<T>::finish_stats(double z_sum) {
  // Aux loss (token choice): α·E·Σ_e f_e·P_e, f from the selections before capacity, P the mean
  // router probability; both over the global batch when distributed, like the other statistics.
  const int N = N_, E = s_.E;
  const bool aux = !ec_mode_ && s_.alpha > 0 && s_.kind != RouterKind::kExpertChoice;
  // [kept per expert E | Σ_n P(n, e) E | assignments, dropped, Σ entropy, Σ lse²]
  std::vector<double>& b = stats_buf_;
  b.assign(2 * std::size_t(E) + 4, 0.0);
  for (int e = 0; e < E; ++e) b[e] = double(stats_.tokens_per_expert[e]);
  double* psum = b.data() + E;
  // Each token's entropy in parallel (a log per score), then all sums in token order.
  std::vector<double>& tok_ent = ent_buf_;
  tok_ent.resize(N);
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    double en = 0;
    for (int e = 0; e < E; ++e) {
      const double q = double(balance_prob(n, e));
      if (q > 0) en -= q * std::log(q);
    }
    tok_ent[n] = en;
  }
  double ent = 0;
  for (int n = 0; n < N; ++n) {
    for (int e = 0; e < E; ++e) psum[e] += double(balance_prob(n, e));
    ent += tok_ent[n];
  }
  b[2 * E] = double(stats_.assignments);
  b[2 * E + 1] = double(stats_.dropped);
  b[2 * E + 2] = ent;
  b[2 * E + 3] = z_sum;
  if (dist_) comm_->allreduce_sum(b.data(), b.size());
  const double Ng = double(n_global_);
  for (int e = 0; e < E; ++e) stats_.tokens_per_expert[e] = int64_t(b[e]);
  stats_.assignments = int64_t(b[2 * E]);
  stats_.dropped = int64_t(b[2 * E + 1]);
  stats_.router_entropy = b[2 * E + 2] / Ng;
  stats_.z_loss = s_.beta * b[2 * E + 3] / Ng;
  stats_.aux_loss = 0;
  if (aux) {
    const double denom = s_.kind == RouterKind::kGShard ? Ng : Ng * kk_;
    double acc = 0;
    for (int e = 0; e < E; ++e) acc += sel_count_[e] / denom * (psum[e] / Ng);
    stats_.aux_loss = s_.alpha * E * acc;
  }
  int64_t mx = 0, tot = 0;
  stats_.unused_experts = 0;
  for (int e = 0; e < E; ++e) {
    const int64_t c = stats_.tokens_per_expert[e];
    mx = std::max(mx, c);
    tot += c;
    stats_.unused_experts += c == 0;
  }
  stats_.max_over_mean_load = tot > 0 ? double(mx) / (double(tot) / E) : 0;
}

template <typename T>
T MoeLayer<T>::balance_prob(int n, int e) const {
  const T sc = scores_[std::size_t(n) * s_.E + e];
  return s_.sigmoid ? sc / score_sum_[n] : sc;
}

template <typename T>
void MoeLayer<T>::backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x,
                           const MoeParams<T>& p) {
  const int N = N_, C = s_.C, H = s_.H, W1 = s_.w1_rows();
  // Shared experts.
  for (int s = 0; s < s_.n_shared; ++s) {
    T* gu = s_gu_ + std::size_t(s) * N * W1;
    T* hid = s_hid_ + std::size_t(s) * N * H;
    const T* wd = p.s_down + std::size_t(s) * C * H;
    const std::size_t ws = std::size_t(s) * H * C;
    gemm<T>(true, false, C, H, N, T(1), dy, C, hid, H, T(1), g.s_down + std::size_t(s) * C * H, H);
    gemm<T>(false, false, N, H, C, T(1), dy, C, wd, H, T(0), hid, H);  // hid ← d(hid)
    activation_backward(gu, hid, N, H, s_.act);                        // gu ← d(gu)
    first_backward(dx, g.s_gate ? g.s_gate + ws : nullptr, g.s_up + ws, gu, x,
                   p.s_gate ? p.s_gate + ws : nullptr, p.s_up + ws, N, C, H, s_.act, true);
  }
  T* dxe = ye_;  // ye is no longer needed once d(gate) is known
  std::fill(a_dgate_, a_dgate_ + n_assign_, T(0));
  if (fused_) {
    // d(ye) and d(gate) are formed inside each expert's products (panel_down_backward).
#pragma omp parallel for schedule(static) if (n_rows_ > 256)
    for (int r = 0; r < n_rows_; ++r) row_gate_[r] = a_gate_[row_assign_[r]];
    Panels q{x, gu_, hid_, ye_, nullptr, offsets_, expert_order_, s_.E};
    q.rows = row_token_;
    q.dy = dy;
    q.row_gate = row_gate_;
    q.row_dgate = row_dgate_;
    panels_backward(q, g, p, dxe);
    for (int r = 0; r < n_rows_; ++r) a_dgate_[row_assign_[r]] = row_dgate_[r];
  } else {
    // Per routed row: d(ye) = gate·dy[token]; d(gate) = dy[token]·ye.
#pragma omp parallel for schedule(static) if (n_rows_ > 256)
    for (int r = 0; r < n_rows_; ++r) {
      const int a = row_assign_[r];
      const T* d = dy + std::size_t(row_token_[r]) * C;
      const T* ye = ye_ + std::size_t(r) * C;
      T* dye = dye_ + std::size_t(r) * C;
      const T gate = a_gate_[a];
      T dot = 0;
      for (int c = 0; c < C; ++c) {
        dot += d[c] * ye[c];
        dye[c] = gate * d[c];
      }
      a_dgate_[a] = dot;
    }
    if (ep_ && dist_) {
      // The mirror of the forward exchange: d(ye) rows to the owners, dX rows back.
      exchange(dye_, pdye_, true);
      panels_backward({pxe_, pgu_, phid_, pye_, pdye_, p_off_, p_order_, El_}, g, p, pye_);
      exchange(pye_, dxe, false);
    } else {
      MOE_CHECK(!ep_, "internal: MoE backward after an expert-parallel evaluation forward");
      panels_backward({xe_, gu_, hid_, ye_, dye_, offsets_, expert_order_, s_.E}, g, p, dxe);
    }
  }
  // Scatter back to tokens in the fixed per-token order.
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    T* dxn = dx + std::size_t(n) * C;
    for (int i = tok_off_[n]; i < tok_off_[n + 1]; ++i) {
      const T* d = dxe + std::size_t(tok_rows_[i]) * C;
      for (int c = 0; c < C; ++c) dxn[c] += d[c];
    }
  }
  router_backward(dx, g, x, p);
}

template <typename T>
void MoeLayer<T>::router_backward(T* dx, const MoeGrads<T>& g, const T* x, const MoeParams<T>& p) {
  const int N = N_, E = s_.E, C = s_.C, k = kk_;
  const bool aux = !ec_mode_ && s_.alpha > 0 && s_.kind != RouterKind::kExpertChoice;
  // f_e = global selections / global assignments; d/dq[n,e] = α·E·f_e/N_global, which is
  // α·E·f_e/N · loss_scale here (the trainer's loss_scale carries the 1/P).
  const double denom = s_.kind == RouterKind::kGShard ? double(n_global_) : double(n_global_) * k;
  // Expert choice: the gate of (n, e) is p[n,e] itself; gather d/dp into dlogits_ first.
  std::fill(dlogits_, dlogits_ + std::size_t(N) * E, T(0));
  if (ec_mode_) {
    for (int a = 0; a < n_assign_; ++a)
      dlogits_[std::size_t(a_token_[a]) * E + a_expert_[a]] += a_dgate_[a];
  }
  const bool tc = !ec_mode_;
  const bool renorm =
      (s_.normalize && s_.kind != RouterKind::kExpertChoice) || s_.kind == RouterKind::kGShard;
  const T zc = T(2.0 * s_.beta / N) * loss_scale_;
  // Aux loss α·E·Σ_e f_e·P_e, P_e = mean_n q[n,e]:  d/dq[n,e] = α·E·f_e/N, the same for every n.
  T dq[1024];
  for (int e = 0; e < E; ++e)
    dq[e] = aux ? T(s_.alpha * E * (sel_count_[e] / denom) / N) * loss_scale_ : T(0);
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    T* d = dlogits_ + std::size_t(n) * E;
    const T* sc = scores_ + std::size_t(n) * E;
    const T* r = logits_ + std::size_t(n) * E;
    T dsel[1024];  // d/d(score or noisy logit) from the gates
    for (int e = 0; e < E; ++e) dsel[e] = d[e];
    if (tc) {
      const int a0 = n * k;
      if (noisy_active_) {
        // Gates = softmax over the selected noisy logits: dH_s = g_s·(dg_s − Σ_j g_j·dg_j).
        T dot = 0;
        for (int s = 0; s < k; ++s) dot += a_gate_[a0 + s] * a_dgate_[a0 + s];
        for (int s = 0; s < k; ++s)
          dsel[a_expert_[a0 + s]] += a_gate_[a0 + s] * (a_dgate_[a0 + s] - dot);
      } else if (renorm) {
        // g_s = p_s/S, S = Σ_selected p:  dp_s = dg_s/S − Σ_j dg_j·p_j / S².
        T S = 0, dot = 0;
        for (int s = 0; s < k; ++s) {
          const T pe = sc[a_expert_[a0 + s]];
          S += pe;
          dot += a_dgate_[a0 + s] * pe;
        }
        for (int s = 0; s < k; ++s) dsel[a_expert_[a0 + s]] += a_dgate_[a0 + s] / S - dot / (S * S);
      } else {
        for (int s = 0; s < k; ++s) dsel[a_expert_[a0 + s]] += a_dgate_[a0 + s];
      }
    }
    if (s_.sigmoid) {
      // q = p/S_n (S_n = Σ_e p): dp_e += (dq_e − Σ_j dq_j·q_j)/S_n; then σ' = p(1−p).
      const T S = score_sum_[n];
      T dot = 0;
      for (int e = 0; e < E; ++e) dot += dq[e] * sc[e] / S;
      for (int e = 0; e < E; ++e) d[e] = (dsel[e] + (dq[e] - dot) / S) * sc[e] * (T(1) - sc[e]);
    } else if (noisy_active_) {
      // dH = gates' part + softmax backward of the aux part through P = softmax(H);
      // then r gets dH and the noise logits z get dH·eps·softplus'(z) = dH·eps·σ(z).
      T dot = 0;
      for (int e = 0; e < E; ++e) dot += sc[e] * dq[e];
      T* z = noise_logits_ + std::size_t(n) * E;
      const T* ep = eps_ + std::size_t(n) * E;
      for (int e = 0; e < E; ++e) {
        const T dH = dsel[e] + sc[e] * (dq[e] - dot);
        d[e] = dH;
        z[e] = dH * ep[e] / (T(1) + std::exp(-z[e]));  // z ← d(z), in place
      }
    } else {
      // Softmax backward of d/dp (gates + aux).
      T dot = 0;
      for (int e = 0; e < E; ++e) dot += sc[e] * (dsel[e] + dq[e]);
      for (int e = 0; e < E; ++e) d[e] = sc[e] * (dsel[e] + dq[e] - dot);
    }
    // z-loss β·mean_n lse_n²:  d/dr = 2β/N·lse·softmax(r).
    if (s_.beta > 0)
      for (int e = 0; e < E; ++e) d[e] += zc * lse_[n] * vexp(r[e] - lse_[n]);
  }
  const T* xr = jitter_active_ ? jittered_ : x;
  gemm<T>(true, false, E, C, N, T(1), dlogits_, E, xr, C, T(1), g.router, C);
  if (noisy_active_)
    gemm<T>(true, false, E, C, N, T(1), noise_logits_, E, xr, C, T(1), g.w_noise, C);
  if (jitter_active_) {
    // dx += (dr·W_r [+ dz·W_noise]) ∘ u, the jitter factors. ye_ ([rows, C], rows >= N·k >= N;
    // it held dX rows, already scattered) is free scratch by now.
    T* tmp = ye_;
    gemm<T>(false, false, N, C, E, T(1), dlogits_, E, p.router, C, T(0), tmp, C);
    if (noisy_active_)
      gemm<T>(false, false, N, C, E, T(1), noise_logits_, E, p.w_noise, C, T(1), tmp, C);
    const T* u = jittered_ + std::size_t(N) * C;
    for (std::size_t i = 0; i < std::size_t(N) * C; ++i) dx[i] += tmp[i] * u[i];
  } else {
    gemm<T>(false, false, N, C, E, T(1), dlogits_, E, p.router, C, T(1), dx, C);
    if (noisy_active_)
      gemm<T>(false, false, N, C, E, T(1), noise_logits_, E, p.w_noise, C, T(1), dx, C);
  }
}

template <typename T>
void MoeLayer<T>::update_bias(T* bias) const {
  // Load = selections per expert in this forward (before capacity), as DeepSeek-V3 counts it.
  const int E = s_.E;
  double mean = 0;
  for (int e = 0; e < E; ++e) mean += sel_count_[e];
  mean /= E;
  for (int e = 0; e < E; ++e) {
    const double d = mean - sel_count_[e];
    bias[e] += T(s_.bias_rate) * T(d > 0 ? 1 : d < 0 ? -1 : 0);
  }
}

template <typename T>
std::vector<int32_t> MoeLayer<T>::selected_experts() const {
  return std::vector<int32_t>(a_expert_, a_expert_ + (ec_mode_ ? 0 : N_ * kk_));
}

template <typename T>
std::vector<int32_t> MoeLayer<T>::dropped_mask() const {
  std::vector<int32_t> m(ec_mode_ ? 0 : N_ * kk_);
  for (std::size_t a = 0; a < m.size(); ++a) m[a] = a_row_[a] < 0;
  return m;
}

template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace moe
