#include "moe/ffn/moe/router.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/core/threading.h"
#include "moe/ffn/moe/routing_rules.h"
#include "moe/kernels/gemm.h"
#include "moe/kernels/softmax.h"
#include "moe/kernels/topk.h"

namespace moe {

namespace {

// Scratch rows per thread are padded to whole cache lines.
std::size_t line_padded(std::size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

template <typename T>
void Router<T>::set_parallel(Communicator* comm) {
  comm_ = comm;
  ranks_ = comm ? comm->size() : 1;
  rank_ = comm ? comm->rank() : 0;
}

template <typename T>
void Router<T>::bind(Arena& a, int max_batch, int max_seq, int max_assign) {
  const int E = spec_.E, C = spec_.C;
  const std::size_t N = std::size_t(max_batch) * max_seq;
  max_tokens_ = int(N);
  auto f = [&](std::size_t n) { return a.take<T>(n); };
  logits_ = f(N * E);
  scores_ = f(N * E);
  dlogits_ = f(N * E);
  logsumexp_ = f(N);
  score_sum_ = f(N);
  if (spec_.kind == RouterKind::kNoisyTopK) {
    noise_logits_ = f(N * E);
    noise_eps_ = f(N * E);
  }
  if (spec_.jitter > 0) {
    jittered_x_ = f(N * C);
    jitter_factors_ = f(N * C);
  }
  assign_.expert = a.take<int32_t>(max_assign);
  assign_.token = a.take<int32_t>(max_assign);
  assign_.gate = f(max_assign);
  assign_.dgate = f(max_assign);
  assign_.fate = a.take<AssignmentFate>(max_assign);
  // The balancing loss's d/dP: one row, or one per sequence (aux_loss_scope sequence).
  const bool per_sequence = spec_.aux_scope == AuxLossScope::kSequence;
  aux_grad_ = f(std::size_t(E) * (per_sequence ? max_batch : 1));
  selections_ = a.take<int32_t>(E);
  if (spec_.aux_scope == AuxLossScope::kGlobalBatch) step_selections_ = a.take<double>(E);
  if (per_sequence) seq_selections_ = a.take<double>(std::size_t(max_batch) * E);
  // Token choice routes at most k experts per token; expert choice's decode fallback
  // round(cf), for the larger of the training and evaluation capacity factors.
  const bool ec_kind = spec_.kind == RouterKind::kExpertChoice;
  const float cf_max = std::max(spec_.capacity_factor, spec_.eval_capacity_factor);
  max_slots_ = ec_kind ? std::min(E, std::max(1, int(std::lround(cf_max)))) : spec_.k;
  slot_counts_ = a.take<double>(std::size_t(ranks_) * max_slots_ * E + E);
  kept_before_ = a.take<int64_t>(E);
  kept_running_ = a.take<int64_t>(E);
  stats_sums_ = a.take<double>(2 * std::size_t(E) + 4 + (per_sequence ? 1 : 0));
  token_entropy_ = a.take<double>(N);
  scratch_threads_ = max_threads();
  // Per thread: the biased keys [E], then group-limited routing's scratch.
  const bool grouped = spec_.n_group > 1;
  key_stride_ =
      line_padded(E) + (grouped ? line_padded(group_topk_scratch_values(E, spec_.n_group)) : 0);
  if (spec_.bias_balance || grouped) key_scratch_ = f(key_stride_ * scratch_threads_);
  if (grouped) {
    group_stride_ = line_padded(group_topk_scratch_indices(spec_.n_group));
    group_scratch_ = a.take<int32_t>(group_stride_ * scratch_threads_);
  }
  if (ec_kind) {
    // Groups span the global batch of max_batch·P sequences; each expert takes c of a group.
    const int64_t Bg = int64_t(max_batch) * ranks_;
    const int64_t c = std::min<int64_t>(Bg, int64_t(std::ceil(Bg * double(cf_max) / E)));
    max_ec_pick_ = int64_t(max_seq) * E * c;
    ec_pick_ = a.take<int32_t>(max_ec_pick_);
    if (ranks_ > 1) global_scores_ = f(std::size_t(Bg) * max_seq * E);
    rank_scratch_stride_ = int64_t(line_padded(Bg));
    rank_scratch_ = a.take<int32_t>(std::size_t(rank_scratch_stride_) * scratch_threads_);
  }
  stats_.tokens_per_expert.assign(E, 0);
}

template <typename T>
void Router<T>::begin(const MoeStep<T>& st) {
  const int E = spec_.E;
  batch_ = st.batch;
  seq_len_ = st.seq_len;
  tokens_ = batch_ * seq_len_;
  distributed_ = st.training && ranks_ > 1;
  global_tokens_ = int64_t(tokens_) * (distributed_ ? ranks_ : 1);
  first_token_ = distributed_ ? int64_t(rank_) * tokens_ : 0;
  loss_scale_ = st.loss_scale;
  // aux_loss_scope global_batch: the step's counts are gathered by its counting forwards and
  // used by its other training forwards (never by evaluation, nor by another step's forwards).
  const bool global = spec_.aux_scope == AuxLossScope::kGlobalBatch && st.training;
  count_pass_ = global && st.count_pass;
  // The first counting forward of a run of them starts the step's counts afresh.
  if (count_pass_ && (counts_step_ != st.step || !last_counted_)) {
    std::fill(step_selections_, step_selections_ + E, 0.0);
    step_tokens_ = 0;
    counts_step_ = st.step;
  }
  use_step_counts_ = global && !st.count_pass && counts_step_ == st.step && step_tokens_ > 0;
  last_counted_ = count_pass_;
  relu_l1_ = st.relu_l1;
  capacity_factor_ = st.training ? spec_.capacity_factor : spec_.eval_capacity_factor;
  // Expert choice needs a group of sequences; decoding one sequence (B = 1) routes with
  // token-choice top-round(cf) on the same softmax scores, unnormalised (docs/MOE.md).
  const bool ec_kind = spec_.kind == RouterKind::kExpertChoice;
  expert_choice_ = ec_kind && batch_ > 1;
  experts_per_token_ =
      ec_kind ? std::min(E, std::max(1, int(std::lround(capacity_factor_)))) : spec_.k;
  capacity_limited_ = !ec_kind && capacity_factor_ > 0;
  capacity_ =
      capacity_limited_
          ? int64_t(std::min<double>(INT_MAX, std::ceil(double(capacity_factor_) * global_tokens_ *
                                                        experts_per_token_ / E)))
          : 0;
}

template <typename T>
const T* Router<T>::router_input(const T* x, const MoeStep<T>& st) {
  // x, or x with multiplicative jitter u ~ U(1 ± jitter) (training only; the experts see x).
  jittered_ = st.training && spec_.jitter > 0;
  if (!jittered_) return x;
  const int C = spec_.C;
  const Rng rng(st.seed, layer_stream(kPurposeJitter, st.step, st.layer));
  for (std::size_t i = 0; i < std::size_t(tokens_) * C; ++i) {
    jitter_factors_[i] = T(1) - T(spec_.jitter) +
                         T(2 * spec_.jitter) * T(rng.uniform(uint64_t(first_token_) * C + i));
    jittered_x_[i] = x[i] * jitter_factors_[i];
  }
  return jittered_x_;
}

template <typename T>
void Router<T>::forward(const T* x, const MoeParams<T>& p, const MoeStep<T>& st) {
  begin(st);
  const int N = tokens_, E = spec_.E, C = spec_.C;
  MOE_CHECK(N <= max_tokens_ && (expert_choice_ || experts_per_token_ <= max_slots_),
            "MoE router: {} tokens × {} experts each exceed what bind sized ({} × {})", N,
            experts_per_token_, max_tokens_, max_slots_);
  const T* xr = router_input(x, st);
  gemm<T>(false, true, N, E, C, T(1), xr, C, p.router, C, T(0), logits_, E);
  logsumexp_of_logits();
  noisy_ = false;
  if (spec_.kind == RouterKind::kRelu) {
    select_relu();
  } else if (expert_choice_) {
    select_expert_choice();
  } else {
    token_choice_scores(xr, p, st);
    select_token_choice(p, st);
    apply_capacity();
    if (spec_.aux_scope == AuxLossScope::kSequence) count_sequence_selections();
    if (count_pass_) add_step_selections();
  }
}

template <typename T>
void Router<T>::logsumexp_of_logits() {
  // For the z-loss. Per token in parallel; summed in token order in finish_stats.
  const int N = tokens_, E = spec_.E;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) logsumexp_[n] = logsumexp_row(logits_ + std::size_t(n) * E, E);
}

template <typename T>
void Router<T>::token_choice_scores(const T* xr, const MoeParams<T>& p, const MoeStep<T>& st) {
  // Scores: softmax (default), sigmoid, or for the noisy router the softmax of the noisy logits
  // H = r + ε·softplus(z), z = x·W_noiseᵀ (H is kept in dlogits_ for the gates).
  const int N = tokens_, E = spec_.E, C = spec_.C;
  noisy_ = spec_.kind == RouterKind::kNoisyTopK && st.training;
  if (noisy_) {
    gemm<T>(false, true, N, E, C, T(1), xr, C, p.w_noise, C, T(0), noise_logits_, E);
    const Rng rng(st.seed, layer_stream(kPurposeRouterNoise, st.step, st.layer));
    for (std::size_t i = 0; i < std::size_t(N) * E; ++i)
      noise_eps_[i] =
          st.noise.normal ? st.noise.normal[i] : T(rng.normal(uint64_t(first_token_) * E + i));
  }
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const std::size_t row = std::size_t(n) * E;
    const T* r = logits_ + row;
    T* sc = scores_ + row;
    if (spec_.sigmoid) {
      T sum = 0;
      for (int e = 0; e < E; ++e) sum += (sc[e] = T(1) / (T(1) + std::exp(-r[e])));
      score_sum_[n] = sum;
    } else if (noisy_) {
      T* h = dlogits_ + row;
      for (int e = 0; e < E; ++e) {
        const T z = noise_logits_[row + e];
        const T softplus = z > T(20) ? z : std::log1p(std::exp(z));
        h[e] = r[e] + noise_eps_[row + e] * softplus;
      }
      softmax_row(sc, h, E);
    } else {
      softmax_row(sc, r, E);
    }
  }
}

template <typename T>
T* Router<T>::thread_keys() const {
  return key_scratch_ + key_stride_ * thread_index();
}

template <typename T>
void Router<T>::select_token_choice(const MoeParams<T>& p, const MoeStep<T>& st) {
  const int N = tokens_, E = spec_.E, k = experts_per_token_;
  const bool gshard = spec_.kind == RouterKind::kGShard;
  // Expert choice's decode fallback keeps the raw softmax scores as gates.
  const bool renormalise = (spec_.normalize && spec_.kind != RouterKind::kExpertChoice) || gshard;
  const bool grouped = spec_.n_group > 1;
  MOE_CHECK(!(spec_.bias_balance || grouped) || max_threads() <= scratch_threads_,
            "internal: {} threads, router scratch bound for {}", max_threads(), scratch_threads_);
  Assignments<T>& a = assign_;
  a.count = N * k;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    const T* sc = scores_ + std::size_t(n) * E;
    const T* base = noisy_ ? dlogits_ + std::size_t(n) * E : sc;
    const T* key = base;  // the selection bias moves the choice, not the gates
    if (spec_.bias_balance) {
      T* biased = thread_keys();
      for (int e = 0; e < E; ++e) biased[e] = base[e] + p.bias[e];
      key = biased;
    }
    int32_t* idx = a.expert + std::size_t(n) * k;
    T* g = a.gate + std::size_t(n) * k;
    // The k best keys, ties to the lower index (kernels/topk.h, as PEER's retrieval); their
    // values land in g, which the gates overwrite next.
    if (grouped) {
      // DeepSeek-V3: the top-k within the topk_group best groups of the same keys.
      const int th = thread_index();
      group_limited_topk(idx, g, key, E, k, spec_.n_group, spec_.topk_group,
                         key_scratch_ + key_stride_ * th + line_padded(E),
                         group_scratch_ + group_stride_ * th);
    } else {
      topk_scan(idx, g, key, E, k);
    }
    if (noisy_) {  // softmax over the kept noisy logits
      for (int s = 0; s < k; ++s) g[s] = base[idx[s]];
      softmax_row(g, g, k, SoftmaxExp::kLibm);
    } else {
      // llama.cpp's norm_w takes the same steps: softmax over all E, the top-k of it, divided
      // by their sum (there clamped below at 6.1e-5, which a top-k softmax sum ≥ k/E never
      // reaches for E < 16384). HF Mixtral's softmax over the k logits is the same value up to
      // rounding.
      T sum = 0;
      for (int s = 0; s < k; ++s) sum += (g[s] = sc[idx[s]]);
      if (renormalise)
        for (int s = 0; s < k; ++s) g[s] /= sum;
      // DeepSeek's routed_scaling_factor (llama.cpp's expert_weights_scale), after the norm.
      if (spec_.routed_scale != 1.f)
        for (int s = 0; s < k; ++s) g[s] *= T(spec_.routed_scale);
    }
    for (int s = 0; s < k; ++s) {
      a.token[n * k + s] = n;
      a.fate[n * k + s] = AssignmentFate::kKept;  // provisionally: capacity comes next
    }
    // GShard: the second expert is kept with probability min(1, 2·g2) during training.
    if (gshard && st.training) {
      const T u = st.noise.uniform
                      ? st.noise.uniform[n]
                      : T(Rng(st.seed, layer_stream(kPurposeGShardSecond, st.step, st.layer))
                              .uniform(first_token_ + n));
      if (!(T(2) * g[1] > u)) a.fate[n * k + 1] = AssignmentFate::kSkipped;
    }
  }
}

template <typename T>
void Router<T>::apply_capacity() {
  const int N = tokens_, E = spec_.E, k = experts_per_token_;
  const int P = distributed_ ? ranks_ : 1, me = distributed_ ? rank_ : 0;
  const bool gshard = spec_.kind == RouterKind::kGShard;
  Assignments<T>& a = assign_;
  // cnt(r, s, e): rank r's slot-s assignments to expert e (GShard's skipped second choices
  // excluded); then sel[e], what f_e counts (GShard: first choices only). Summed over ranks.
  const std::size_t n_counts = std::size_t(P) * k * E + E;
  std::fill(slot_counts_, slot_counts_ + n_counts, 0.0);
  auto cnt = [&](int r, int s) { return slot_counts_ + (std::size_t(r) * k + s) * E; };
  double* sel = slot_counts_ + std::size_t(P) * k * E;
  for (int s = 0; s < k; ++s)
    for (int n = 0; n < N; ++n) {
      const int i = n * k + s, e = a.expert[i];
      if (!gshard || s == 0) sel[e] += 1;
      if (a.fate[i] != AssignmentFate::kSkipped) cnt(me, s)[e] += 1;
    }
  if (P > 1) comm_->allreduce_sum(slot_counts_, n_counts);
  for (int e = 0; e < E; ++e) selections_[e] = int32_t(sel[e]);
  // The documented drop order over the global batch: all first choices before any second
  // choice, and so on; within a slot by global token index (rank by rank, then token by token).
  // An assignment is kept iff fewer than cap assignments to its expert precede it: kept counts
  // stop growing at cap, so "kept < cap" and "preceding < cap" are the same test.
  int64_t *before = kept_before_, *run = kept_running_;
  std::fill(before, before + E, 0);
  std::vector<int64_t>& kept = stats_.tokens_per_expert;
  std::fill(kept.begin(), kept.end(), 0);
  stats_.dropped = 0;
  stats_.assignments = 0;
  for (int s = 0; s < k; ++s) {
    std::copy(before, before + E, run);
    for (int r = 0; r < me; ++r)
      for (int e = 0; e < E; ++e) run[e] += int64_t(cnt(r, s)[e]);
    for (int n = 0; n < N; ++n) {
      const int i = n * k + s;
      if (a.fate[i] == AssignmentFate::kSkipped) continue;
      const int e = a.expert[i];
      ++stats_.assignments;
      if (!capacity_limited_ || run[e] < capacity_) {
        ++kept[e];
      } else {
        a.fate[i] = AssignmentFate::kDropped;
        ++stats_.dropped;
      }
      ++run[e];
    }
    for (int r = 0; r < P; ++r)
      for (int e = 0; e < E; ++e) before[e] += int64_t(cnt(r, s)[e]);
  }
}

template <typename T>
void Router<T>::select_expert_choice() {
  const int E = spec_.E, B = batch_, Tn = seq_len_, N = tokens_;
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n)
    softmax_row(scores_ + std::size_t(n) * E, logits_ + std::size_t(n) * E, E, SoftmaxExp::kLibm);
  // Distributed training: the groups span the global batch (B·P sequences, rank-major), so
  // every rank sees every rank's scores (summed into a zero buffer: exact) and makes the same
  // selection; it keeps the assignments of its own tokens.
  const int P = distributed_ ? ranks_ : 1;
  const int Bg = B * P;
  const T* gs = scores_;
  if (P > 1) {
    std::fill(global_scores_, global_scores_ + std::size_t(Bg) * Tn * E, T(0));
    std::copy(scores_, scores_ + std::size_t(N) * E,
              global_scores_ + std::size_t(first_token_) * E);
    comm_->allreduce_sum(global_scores_, std::size_t(Bg) * Tn * E);
    gs = global_scores_;
  }
  const int c = std::min(Bg, int(std::ceil(Bg * double(capacity_factor_) / E)));
  const std::size_t n_pick = std::size_t(Tn) * E * c;
  MOE_CHECK(int64_t(n_pick) <= max_ec_pick_ && Bg <= rank_scratch_stride_ &&
                max_threads() <= scratch_threads_,
            "internal: expert choice over {} sequences of {} exceeds what bind sized", Bg, Tn);
  // Group t = the tokens at position t of every sequence; each expert takes its top-c of them.
  // Slot (t, e, j) of the global order is kept here iff its token is one of this rank's.
#pragma omp parallel for schedule(static) if (Tn * E > 16)
  for (int ge = 0; ge < Tn * E; ++ge) {
    const int t = ge / E, e = ge % E;
    int32_t* order = rank_scratch_ + rank_scratch_stride_ * thread_index();
    for (int b = 0; b < Bg; ++b) order[b] = b;
    std::partial_sort(order, order + c, order + Bg, [&](int32_t x, int32_t y) {
      const T px = gs[std::size_t(x * Tn + t) * E + e];
      const T py = gs[std::size_t(y * Tn + t) * E + e];
      return px != py ? px > py : x < y;
    });
    for (int j = 0; j < c; ++j) ec_pick_[std::size_t(ge) * c + j] = order[j] * Tn + t;
  }
  Assignments<T>& a = assign_;
  a.count = 0;
  std::vector<int64_t>& kept = stats_.tokens_per_expert;
  std::fill(kept.begin(), kept.end(), 0);
  for (std::size_t i = 0; i < n_pick; ++i) {
    const int64_t n = ec_pick_[i] - first_token_;
    if (n < 0 || n >= N) continue;
    const int j = a.count++, e = int(i / c) % E;
    a.expert[j] = e;
    a.token[j] = int32_t(n);
    a.gate[j] = scores_[std::size_t(n) * E + e];
    a.fate[j] = AssignmentFate::kKept;
    ++kept[e];
  }
  std::fill(selections_, selections_ + E, Tn * c);
  stats_.assignments = a.count;  // this rank's; finish_stats sums over ranks
  stats_.dropped = 0;
}

template <typename T>
bool Router<T>::aux_loss_active() const {
  return !expert_choice_ && spec_.alpha > 0 && spec_.kind != RouterKind::kExpertChoice &&
         spec_.kind != RouterKind::kRelu;
}

template <typename T>
T Router<T>::balance_prob(int n, int e) const {
  const T sc = scores_[std::size_t(n) * spec_.E + e];
  return spec_.sigmoid ? sc / score_sum_[n] : sc;
}

template <typename T>
void Router<T>::finish_stats() {
  // Aux loss (token choice): α·E·Σ_e f_e·P_e, f from the selections before capacity, P the mean
  // router probability; both over the global batch when distributed, like the other statistics.
  if (spec_.kind == RouterKind::kRelu) return finish_relu_stats();
  const int N = tokens_, E = spec_.E;
  // [kept per expert E | Σ_n P(n, e) E | assignments, dropped, Σ entropy, Σ lse²]
  // [.. | Σ over sequences of the per-sequence balance sums] with aux_loss_scope sequence.
  double* b = stats_sums_;
  const bool per_sequence = spec_.aux_scope == AuxLossScope::kSequence && aux_loss_active();
  const std::size_t n_sums = 2 * std::size_t(E) + 4 + (per_sequence ? 1 : 0);
  std::fill(b, b + n_sums, 0.0);
  for (int e = 0; e < E; ++e) b[e] = double(stats_.tokens_per_expert[e]);
  double* psum = b + E;
  // Each token's entropy in parallel (a log per score), then all sums in token order.
#pragma omp parallel for schedule(static) if (N > 64)
  for (int n = 0; n < N; ++n) {
    double en = 0;
    for (int e = 0; e < E; ++e) {
      const double q = double(balance_prob(n, e));
      if (q > 0) en -= q * std::log(q);
    }
    token_entropy_[n] = en;
  }
  double ent = 0;
  for (int n = 0; n < N; ++n) {
    for (int e = 0; e < E; ++e) psum[e] += double(balance_prob(n, e));
    ent += token_entropy_[n];
  }
  double z_sum = 0;
  for (int n = 0; n < N; ++n) z_sum += double(logsumexp_[n]) * double(logsumexp_[n]);
  b[2 * E] = double(stats_.assignments);
  b[2 * E + 1] = double(stats_.dropped);
  b[2 * E + 2] = ent;
  b[2 * E + 3] = z_sum;
  if (per_sequence) b[2 * E + 4] = sequence_balance_sum();
  if (distributed_) comm_->allreduce_sum(b, n_sums);
  const double Ng = double(global_tokens_);
  for (int e = 0; e < E; ++e) stats_.tokens_per_expert[e] = int64_t(b[e]);
  stats_.assignments = int64_t(b[2 * E]);
  stats_.dropped = int64_t(b[2 * E + 1]);
  stats_.router_entropy = b[2 * E + 2] / Ng;
  stats_.z_loss = spec_.beta * b[2 * E + 3] / Ng;
  stats_.aux_loss = 0;
  if (per_sequence) {
    // DeepSeek-V2/V3's sequence-wise loss, averaged over the (global) batch's sequences.
    const double sequences = double(batch_) * (distributed_ ? ranks_ : 1);
    stats_.aux_loss = spec_.alpha * E * b[2 * E + 4] / sequences;
  } else if (aux_loss_active() && use_step_counts_) {
    // aux_loss_scope global_batch: f_e of the whole step, P_e of this forward's tokens.
    double acc = 0;
    for (int e = 0; e < E; ++e) acc += step_fraction(e) * (psum[e] / Ng);
    stats_.aux_loss = spec_.alpha * E * acc;
  } else if (aux_loss_active()) {
    const double denom = spec_.kind == RouterKind::kGShard ? Ng : Ng * experts_per_token_;
    double acc = 0;
    for (int e = 0; e < E; ++e) acc += selections_[e] / denom * (psum[e] / Ng);
    stats_.aux_loss = spec_.alpha * E * acc;
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

template class Router<float>;
template class Router<double>;

}  // namespace moe
