#include "moe/train/memory_estimate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "moe/core/error.h"
#include "moe/core/threading.h"
#include "moe/kernels/attention_bf16.h"
#include "moe/nn/rmsnorm.h"

namespace moe {

namespace {

constexpr double kAlign = 64;  // bytes an arena or ParamStore placement may pad

// Parameters of one block's FFN (floats) and its number of tensors.
double ffn_params(const FfnConfig& f, double C, double* tensors) {
  const double mats = f.activation == Activation::kSwiGLU ? 3 : 2;
  if (f.kind == FfnConfig::Kind::kDense) {
    *tensors += 3;
    return mats * C * f.d_ff;
  }
  if (f.kind == FfnConfig::Kind::kPeer) {
    const PeerFfnConfig& p = f.peer;
    const double D = double(p.heads) * p.d_key, E = p.num_experts, S = std::sqrt(E);
    *tensors += 10;
    return D * C + 5 * D + S * p.d_key + 2 * E * C;
  }
  const MoeFfnConfig& m = f.moe;
  const double E = m.num_experts, H = m.d_expert, Hs = m.shared_d_expert ? m.shared_d_expert : H;
  *tensors += 10;
  return 3 * E * C + E + mats * C * (E * H + m.shared_experts * Hs) + C;
}

// Token-expert rows an MoE layer's experts may receive for B × T tokens (their panels' bound).
double expert_rows(const MoeFfnConfig& m, double B, double T) {
  const double N = B * T, E = m.num_experts;
  if (m.router.kind == RouterConfig::Kind::kRelu) return N * E;  // ReMoE: up to every expert
  if (m.router.kind != RouterConfig::Kind::kExpertChoice) return N * m.top_k;
  const double cf = std::max(m.capacity_factor, m.eval_capacity_factor);
  const double c = std::min(B, std::ceil(B * cf / E));
  const double kk = std::min(E, std::max(1.0, std::round(cf)));
  return std::max(std::min(T * E * c, N * E), N * kk);
}

// Bytes of one block's FFN in bf16 (set_precision): its shadows, saved operands and scratch.
double ffn_low_precision(const FfnConfig& f, double C, double B, double T, double threads) {
  const double N = B * T;
  const bool glu = f.activation == Activation::kSwiGLU;
  // Packed panels (grouped_gemm_bf16.h): B [K, N] in panels of 32 columns, A [M, K] of 12 rows,
  // K in pairs.
  auto pb = [](double K, double n) { return std::ceil(n / 32) * 32 * 2 * std::ceil(K / 2); };
  auto pa = [](double M, double K) { return std::ceil(M / 12) * 12 * 2 * std::ceil(K / 2); };
  if (f.kind == FfnConfig::Kind::kPeer) {  // PeerLayer::bind_bf16 and its retrieval's
    const PeerFfnConfig& p = f.peer;
    const double D = double(p.heads) * p.d_key, S = std::sqrt(double(p.num_experts));
    const double half = p.d_key / 2;
    return 2 * (D * C + N * C + N * D + 2 * pb(half, S) + threads * 2 * pa(64, half)) + 5 * kAlign;
  }
  if (f.kind == FfnConfig::Kind::kDense) {  // DenseFfn::bind_low_precision
    const double H = f.d_ff, R = glu ? 2 * H : H;
    return 2 * (R * C + C * H + N * C + N * H + N * std::max(C, R)) + 5 * kAlign;
  }
  const MoeFfnConfig& m = f.moe;
  const double E = m.num_experts, H = m.d_expert, W1 = glu ? 2 * H : H;
  const double Hs = m.shared_d_expert ? m.shared_d_expert : H, W1s = glu ? 2 * Hs : Hs;
  // An expert's weights in four layouts.
  auto weights = [&](double w1, double h) { return pb(C, w1) + pb(h, C) + pb(C, h) + pb(w1, C); };
  const double rows = std::max(expert_rows(m, B, T), m.shared_experts > 0 ? N : 0);
  const double Hm = std::max(H, Hs), Wm = std::max(W1, W1s);
  const double a = std::max({pa(rows, C), pa(rows, Hm), pa(C, rows), pa(Hm, rows), pa(rows, Wm)});
  const double b = std::max(pb(rows, Hm), pb(rows, C));
  // The fused experts' rounded token matrices x and dy (ExpertBank::bf16_tokens_): 2·N·C.
  return 2 * (E * weights(W1, H) + m.shared_experts * weights(W1s, Hs) + 2 * N * C) +
         threads * (2 * (a + b + 64) + 4 * (expert_rows(m, B, T) * H + 32));
}

// Activation floats of one block's FFN for N = B·T tokens (an upper bound of its bind()).
double ffn_activations(const FfnConfig& f, double C, double B, double T, double threads) {
  const double N = B * T;
  const double mats = f.activation == Activation::kSwiGLU ? 3 : 2;
  if (f.kind == FfnConfig::Kind::kDense) return N * f.d_ff * mats;
  if (f.kind == FfnConfig::Kind::kPeer) {
    const PeerFfnConfig& p = f.peer;
    const double D = double(p.heads) * p.d_key, R = N * p.heads, A = R * p.top_k;
    const double S = std::sqrt(double(p.num_experts)), k = p.top_k;
    const double layer = 3 * N * D + 2 * std::max(D, R) + 4 * A + 6 * D;
    const double retrieval = threads * (2 * 64 * S + 2 * (k * k + 2 * k)) + p.d_key * S + 2 * A;
    const double rows = std::min(A, double(p.num_experts));
    const double experts = A * 7 + rows * 6 + threads * 2 * C + 8 * N * C + 2 * N + 4096 * threads;
    return layer + retrieval + experts;
  }
  const MoeFfnConfig& m = f.moe;
  const double E = m.num_experts, H = m.d_expert, W1 = mats == 3 ? 2 * H : H;
  const double rows = expert_rows(m, B, T);
  double ec_pick = 0;
  if (m.router.kind == RouterConfig::Kind::kExpertChoice) {
    const double cf = std::max(m.capacity_factor, m.eval_capacity_factor);
    ec_pick = T * E * std::min(B, std::ceil(B * cf / E)) + (B + 16) * threads;
  }
  const double router =
      N * E * 5 + N * 4 + 2 * N * C + rows * 5 + E * 16 + 2 * m.top_k * E + ec_pick;
  const double dispatch = rows * 13 + 2 * N + E + 4096 * threads;
  const double panels = rows * (W1 + H + 3 * C + 2);
  const double Hs = m.shared_d_expert ? m.shared_d_expert : H;
  const double shared = m.shared_experts * N * (mats == 3 ? 3 : 2) * Hs + 2 * N * C + 2 * N;
  // The panel GEMM's packing buffers (experts.cpp): per thread, a few panels of the largest
  // dimension by the widths, and the rows by H.
  const double Mx = std::max({rows, C, W1, H});
  const double pack = threads * (2 * Mx * std::max(C, W1) + 16 * Mx + rows * H);
  return router + dispatch + panels + shared + pack;
}

std::string field_summary(const ModelConfig& c) {
  return fmt::format(
      "model.n_layers = {}, d_model = {}, vocab_size = {}, n_heads = {}, "
      "max_seq_len = {}, ffn.kind = {}",
      c.n_layers, c.d_model, c.vocab_size, c.n_heads, c.max_seq_len, enum_name(c.ffn.kind));
}

std::optional<double> read_number_file(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str()) return std::nullopt;
  return v;
}

}  // namespace

MemoryEstimate estimate_memory(const ModelConfig& config, int max_batch, int max_seq, MemoryUse use,
                               int kv_context, Precision precision) {
  ModelConfig c = config;
  c.resolve();
  const double C = c.d_model, V = c.vocab_size, L = c.n_layers, B = max_batch, T = max_seq;
  const double N = B * T, Hq = c.n_heads, hd = c.head_dim;
  const double Dq = Hq * hd, Dkv = double(c.n_kv_heads) * hd;
  const double threads = max_threads();
  const bool qkn = c.qk_norm != QkNorm::kNone;
  // One block's attention and norms (floats), activations as Transformer::bind takes them.
  const double attn_params =
      2 * Dq * C + 2 * Dkv * C + 2 * C + (qkn ? Dq + Dkv : 0) + (c.qkv_bias ? Dq + 2 * Dkv : 0);
  const double attn_acts =
      4 * N * C + 2 * N + 2 * N * Dq + 2 * N * Dkv + (qkn ? 2 * N * Dq + 2 * N * Dkv : 0);
  const bool bf16 = precision == Precision::kBf16;
  // The blocks: those of ffn_overrides differ, the rest are alike (n_layers may be 1e8).
  double params = 0, acts = 0, tensors = 0;
  const double overridden = double(c.ffn_overrides.size());
  for (const auto& [l, f] : c.ffn_overrides) {
    params += ffn_params(f, C, &tensors);
    acts += ffn_activations(f, C, B, T, threads);
  }
  double base_tensors = 0;
  const double base_params = ffn_params(c.ffn, C, &base_tensors);
  params +=
      (L - overridden) * base_params + L * attn_params + V * C * (c.tie_embeddings ? 1 : 2) + C;
  tensors += (L - overridden) * base_tensors + L * 10 + 3;
  acts += (L - overridden) * ffn_activations(c.ffn, C, B, T, threads) + L * attn_acts;
  acts += L * 64 * kAlign / 4;  // the arena's alignment of every buffer a block takes
  // Model-wide buffers: final norm, logits, the backward's gradients of q/k/v, scratch.
  const double maxw = std::max({C, Dq, Dkv});
  acts += 5 * N * C + 3 * N + N * V + 2 * N * Dq + 2 * N * Dkv + (qkn ? N * Dq + N * Dkv : 0) +
          (N / kRmsNormChunkRows + 1) * std::max(maxw, hd * Hq);
  // RoPE (cos and sin) and the decoding scores, for the longest position used.
  const double positions = std::max(T, double(use == MemoryUse::kGenerate ? kv_context : 0));
  acts += 2 * positions * (hd / 2) + positions;
  // Arenas of 32 MiB or more are rounded up to a 2 MiB huge page (core/arena.cpp).
  constexpr double kHugePage = 2 << 20;
  auto arena = [&](double bytes) { return bytes >= 16 * kHugePage ? bytes + kHugePage : bytes; };
  MemoryEstimate e;
  e.weights = arena(4 * params + tensors * kAlign);
  // f32 attention's probabilities per block and its backward scratch, in their own arena
  // (Transformer::bind_attention_f32); bf16 attention keeps row stats instead (below).
  e.activations = arena(4 * acts) +
                  (bf16 ? 0 : arena(4 * (L * B * Hq * T * T + threads * T * T) + (L + 1) * kAlign));
  if (use == MemoryUse::kTrain) e.training = 3 * e.weights;  // gradients, AdamW m and v
  if (use == MemoryUse::kGenerate) e.kv_cache = 4 * L * kv_context * 2 * Dkv;
  if (bf16) {
    // Transformer::bind_low_precision: per block the shadows of wq, wk, wv, wo, the saved
    // bf16 attention input and output, attention's rounded q, k, v (heads padded to an even
    // width) and its f32 softmax stats [B, Hq, T, 2]; one rounded-gradient scratch.
    const double hdp = attention_bf16_head_width(c.head_dim);
    double low =
        L * (2 * (2 * Dq * C + 2 * Dkv * C + N * C + N * Dq + N * (Hq + 2 * c.n_kv_heads) * hdp) +
             4 * 2 * B * Hq * T + 10 * kAlign) +
        2 * N * std::max({C, Dq, Dkv});
    for (const auto& [l, f] : c.ffn_overrides) low += ffn_low_precision(f, C, B, T, threads);
    low += (L - overridden) * ffn_low_precision(c.ffn, C, B, T, threads);
    // gemm_bf16's packing scratch on the calling thread (its largest product: a weight
    // gradient, [rows, N]·[N, C] with rows ≤ max(2·d_ff, Dq, C)).
    const double R =
        std::max({Dq, C, c.ffn.kind == FfnConfig::Kind::kDense ? 2.0 * c.ffn.d_ff : 0});
    low += 2 * (std::ceil(R / 12) * 12 + std::ceil(C / 32) * 32) * (N + 2);
    e.low_precision = arena(low);
  }
  return e;
}

std::optional<double> available_memory_bytes() {
  std::optional<double> avail;
  std::ifstream mi("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (mi >> key >> kb) {
    std::getline(mi, unit);
    if (key == "MemAvailable:") {
      avail = kb * 1024;
      break;
    }
  }
  // cgroup v2, then v1: the container's own limit may be far below the machine's memory.
  std::optional<double> limit = read_number_file("/sys/fs/cgroup/memory.max");
  std::optional<double> used = read_number_file("/sys/fs/cgroup/memory.current");
  if (!limit) {
    limit = read_number_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    used = read_number_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  }
  if (limit && *limit < 1e18) {
    const double room = std::max(0.0, *limit - used.value_or(0));
    avail = avail ? std::min(*avail, room) : room;
  }
  return avail;
}

std::string human_bytes(double b) {
  if (b >= 1e12) return fmt::format("{:.1f} TB", b / 1e12);
  if (b >= 1e9) return fmt::format("{:.1f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  return fmt::format("{:.1f} kB", b / 1e3);
}

void check_memory(const MemoryEstimate& e, const ModelConfig& cfg, int max_batch, int max_seq,
                  const std::string& what, std::optional<double> available) {
  if (!available) available = available_memory_bytes();
  if (!available || e.total() <= *available) return;
  std::string parts = fmt::format("weights {}", human_bytes(e.weights));
  if (e.training > 0) parts += fmt::format(", gradients and AdamW {}", human_bytes(e.training));
  parts += fmt::format(", activations {} for batch {} × seq {}", human_bytes(e.activations),
                       max_batch, max_seq);
  if (e.kv_cache > 0) parts += fmt::format(", KV cache {}", human_bytes(e.kv_cache));
  if (e.low_precision > 0) parts += fmt::format(", bf16 copies {}", human_bytes(e.low_precision));
  MOE_FAIL(
      "{} needs ~{} ({}) with {}, but {} is available (MemAvailable and the cgroup's "
      "memory.max); reduce the fields that drive it",
      what, human_bytes(e.total()), parts, field_summary(cfg), human_bytes(*available));
}

}  // namespace moe
