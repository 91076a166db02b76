#include "moe/ffn/moe/moe_layer.h"

#include <algorithm>
#include <cmath>

#include "moe/core/error.h"

namespace moe {

MoeSpec MoeSpec::from_config(const FfnConfig& f, int d_model) {
  MoeSpec s;
  s.C = d_model;
  const MoeFfnConfig& m = f.moe;
  s.E = m.num_experts;
  s.H = m.d_expert;
  s.k = m.top_k;
  s.n_shared = m.shared_experts;
  s.Hs = m.shared_d_expert;
  s.shared_gate = m.shared_gate;
  s.routed_scale = m.router.routed_scaling_factor;
  s.act = f.activation;
  using Kind = RouterConfig::Kind;
  s.kind = m.router.kind == Kind::kNoisyTopK      ? RouterKind::kNoisyTopK
           : m.router.kind == Kind::kGShard       ? RouterKind::kGShard
           : m.router.kind == Kind::kExpertChoice ? RouterKind::kExpertChoice
           : m.router.kind == Kind::kRelu         ? RouterKind::kRelu
                                                  : RouterKind::kTopK;
  s.normalize = m.router.normalize;
  s.sigmoid = m.router.score == RouterConfig::Score::kSigmoid;
  s.bias_balance = m.router.bias_balance;
  s.bias_rate = m.router.bias_rate;
  s.bias_update = m.router.bias_update == RouterConfig::BiasUpdate::kSignCentred
                      ? BiasUpdate::kSignCentred
                      : BiasUpdate::kSign;
  s.n_group = m.router.n_group;
  s.topk_group = m.router.topk_group;
  s.aux_scope = m.aux_loss_scope == MoeFfnConfig::AuxLossScope::kSequence ? AuxLossScope::kSequence
                : m.aux_loss_scope == MoeFfnConfig::AuxLossScope::kGlobalBatch
                    ? AuxLossScope::kGlobalBatch
                    : AuxLossScope::kMicroBatch;
  s.jitter = m.router.jitter;
  s.expert_dropout = m.expert_dropout;
  s.capacity_factor = m.capacity_factor;
  s.eval_capacity_factor = m.eval_capacity_factor;
  s.alpha = m.aux_loss_coef;
  s.beta = m.z_loss_coef;
  // Which GEMM runs the experts changes the bits, so it is config (and in the checkpoint).
  s.expert_gemm = m.expert_gemm == MoeFfnConfig::ExpertGemm::kBlas    ? ExpertGemm::kBlas
                  : m.expert_gemm == MoeFfnConfig::ExpertGemm::kPanel ? ExpertGemm::kPanel
                                                                      : ExpertGemm::kAuto;
  return s;
}

void MoeSpec::validate() const {
  MOE_CHECK(C >= 1, "model.d_model: got {}, an MoE layer needs a width >= 1", C);
  MOE_CHECK(E >= 1, "model.ffn.num_experts: got {}, an MoE layer needs at least 1 expert", E);
  MOE_CHECK(H >= 1, "model.ffn.d_expert: got {}, expected >= 1", H);
  MOE_CHECK(k >= 1 && k <= E, "model.ffn.top_k: got {}, expected 1..num_experts = {}", k, E);
  MOE_CHECK(kind != RouterKind::kGShard || k == 2,
            "model.ffn.top_k: got {}, the gshard router is top-2", k);
  MOE_CHECK(n_shared >= 0, "model.ffn.shared_experts: got {}, expected >= 0", n_shared);
  MOE_CHECK(Hs >= 0, "model.ffn.shared_d_expert: got {}, expected >= 0 (0: d_expert)", Hs);
  MOE_CHECK(!shared_gate || n_shared > 0,
            "model.ffn.shared_gate: true needs shared experts (model.ffn.shared_experts >= 1)");
  MOE_CHECK(routed_scale == 1.f ||
                (kind == RouterKind::kTopK && routed_scale > 0 && std::isfinite(routed_scale)),
            "model.ffn.router.routed_scaling_factor: got {}, expected > 0 with the topk router "
            "(1 otherwise)",
            routed_scale);
  MOE_CHECK(capacity_factor >= 0 && std::isfinite(capacity_factor),
            "model.ffn.capacity_factor: got {}, expected >= 0 (0: dropless)", capacity_factor);
  MOE_CHECK(eval_capacity_factor >= 0 && std::isfinite(eval_capacity_factor),
            "model.ffn.eval_capacity_factor: got {}, expected >= 0 (0: dropless)",
            eval_capacity_factor);
  MOE_CHECK(jitter >= 0 && jitter < 1, "model.ffn.router.jitter: got {}, expected [0, 1)", jitter);
  MOE_CHECK(expert_dropout >= 0 && expert_dropout < 1,
            "model.ffn.expert_dropout: got {}, expected [0, 1)", expert_dropout);
  MOE_CHECK(!sigmoid || kind == RouterKind::kTopK,
            "model.ffn.router.score: sigmoid scores are only for the topk router");
  MOE_CHECK(!bias_balance || kind != RouterKind::kExpertChoice,
            "model.ffn.router.bias_balance: expert choice balances by construction; "
            "bias_balance is for token-choice routers");
  validate_groups();
  // ReMoE: dropless ReLU gates used as they are, balanced by its own L1 loss.
  if (kind == RouterKind::kRelu) {
    MOE_CHECK(capacity_factor == 0 && eval_capacity_factor == 0,
              "model.ffn.capacity_factor: got {} (eval {}), the relu router is dropless "
              "(expected 0)",
              capacity_factor, eval_capacity_factor);
    MOE_CHECK(!bias_balance,
              "model.ffn.router.bias_balance: the relu router balances with its L1 loss "
              "(expected false)");
    MOE_CHECK(!normalize,
              "model.ffn.router.normalize: relu gates are never renormalised (expected false)");
  }
}

void MoeSpec::validate_groups() const {
  // Group-limited routing (DeepSeek-V3): whole groups, each with the two experts its score
  // sums, and enough experts in the chosen groups for the k.
  MOE_CHECK(n_group == 1 || (n_group > 1 && kind == RouterKind::kTopK),
            "model.ffn.router.n_group: got {}, expected 1 (off) or > 1 with the topk router",
            n_group);
  if (n_group == 1) return;
  MOE_CHECK(E % n_group == 0 && E / n_group >= 2,
            "model.ffn.router.n_group: got {}, expected a divisor of num_experts = {} leaving "
            ">= 2 experts per group",
            n_group, E);
  MOE_CHECK(topk_group >= 1 && topk_group <= n_group,
            "model.ffn.router.topk_group: got {}, expected 1..n_group = {}", topk_group, n_group);
  MOE_CHECK(int64_t(k) <= int64_t(topk_group) * (E / n_group),
            "model.ffn.top_k: got {}, expected <= topk_group·num_experts/n_group = {}·{}/{} = {} "
            "(the experts of the chosen groups)",
            k, topk_group, E, n_group, int64_t(topk_group) * (E / n_group));
}

template <typename T>
MoeLayer<T>::MoeLayer(const MoeSpec& spec)
    : spec_(spec), router_(spec), experts_(spec), exchange_(spec) {
  spec_.validate();
}

template <typename T>
void MoeLayer<T>::set_parallel(Communicator* comm, bool expert_parallel) {
  ranks_ = comm ? comm->size() : 1;
  expert_parallel_ = expert_parallel && ranks_ > 1;
  router_.set_parallel(comm);
  if (expert_parallel_) exchange_.set_parallel(comm);
}

template <typename T>
void MoeLayer<T>::bind(Arena& a, int max_batch, int max_seq) {
  const int E = spec_.E, C = spec_.C, H = spec_.H, W1 = spec_.w1_rows();
  const int64_t N = int64_t(max_batch) * max_seq;
  // Bound on routed rows: token choice ≤ N·k; expert choice ≤ T·E·c with c ≤ min(B, ⌈B·cf/E⌉);
  // the decode fallback of expert choice routes ≤ N·round(cf) ≤ N·E.
  int64_t rows = N * spec_.k;
  if (spec_.kind == RouterKind::kExpertChoice) {
    // Distributed training selects over the global batch of max_batch·P sequences; this rank
    // keeps at most all c of each (position, expert) group, and at most E per token.
    const float cf = std::max(spec_.capacity_factor, spec_.eval_capacity_factor);
    const int64_t Bg = int64_t(max_batch) * ranks_;
    const int64_t c = std::min<int64_t>(Bg, int64_t(std::ceil(Bg * double(cf) / E)));
    const int64_t kk = std::min<int64_t>(E, std::max<int64_t>(1, std::lround(cf)));
    rows = std::max(std::min(int64_t(max_seq) * E * c, N * E), N * kk);
  }
  // ReMoE: any number of experts per token, up to all E (early in training about half).
  if (spec_.kind == RouterKind::kRelu) rows = N * E;
  MOE_CHECK(N * ranks_ <= INT32_MAX && rows * ranks_ <= INT32_MAX,
            "MoE layer: {} tokens routing up to {} rows on {} ranks exceed 2^31 rows", N, rows,
            ranks_);
  const int max_rows = int(rows);
  router_.bind(a, max_batch, max_seq, max_rows);
  dispatch_.bind(a, E, int(N), max_rows, max_rows);
  rows_gu_ = a.take<T>(std::size_t(max_rows) * W1);
  rows_hid_ = a.take<T>(std::size_t(max_rows) * H);
  rows_y_ = a.take<T>(std::size_t(max_rows) * C);
  if (expert_parallel_) exchange_.bind(a, max_rows);
  // An expert gets each token at most once (token choice, and expert choice's groups), so
  // ≤ N rows here, ≤ P·N on an owner under expert parallelism.
  experts_.bind(a, E, int(expert_parallel_ ? ranks_ * N : N), int(N), !expert_parallel_);
  // The fused path's gates per row whenever the bank may fuse (bf16 does, whatever the f32
  // GEMM); the gathered panels only where f32 does not.
  if (!expert_parallel_) {
    row_gate_ = a.take<T>(max_rows);
    row_dgate_ = a.take<T>(max_rows);
  }
  if (!experts_.fused()) {
    rows_x_ = a.take<T>(std::size_t(max_rows) * C);
    rows_dy_ = a.take<T>(std::size_t(max_rows) * C);
  }
}

template <typename T>
ExpertPanels<T> MoeLayer<T>::local_panels(const T* x) const {
  ExpertPanels<T> q;
  q.gu = rows_gu_;
  q.hid = rows_hid_;
  q.ye = rows_y_;
  q.offsets = dispatch_.expert_offsets;
  q.experts = spec_.E;
  if (experts_.fused()) {
    q.x = x;  // the token matrix, read through the rows' tokens
    q.rows = dispatch_.row_token;
    q.tokens = tokens_;
  } else {
    q.x = rows_x_;
    q.dye = rows_dy_;
  }
  return q;
}

template <typename T>
void MoeLayer<T>::forward(T* y, const T* x, const MoeParams<T>& p, const MoeStep<T>& step) {
  const int N = step.batch * step.seq_len, C = spec_.C;
  tokens_ = N;
  distributed_step_ = step.training && ranks_ > 1;
  dropout_ = {step.training && spec_.expert_dropout > 0, step.seed, step.step, step.layer};
  router_.forward(x, p, step);                                   // scores, selection, capacity
  dispatch_build(dispatch_, router_.assignments(), N, spec_.E);  // rows sorted by expert
  if (!experts_.fused()) gather_forward(rows_x_, x, dispatch_, C);
  experts_forward(x, p);
  combine_forward(y, rows_y_, router_.assignments().gate, dispatch_, N, C);
  if (expert_parallel_ && !distributed_step_) exchange_.sum_partial_outputs(y, std::size_t(N) * C);
  experts_.shared_forward(y, x, p, N);
  router_.finish_stats();  // aux and z losses, loads
}

template <typename T>
void MoeLayer<T>::experts_forward(const T* x, const MoeParams<T>& p) {
  const int C = spec_.C;
  if (expert_parallel_ && distributed_step_) {
    // Expert parallel training: rows to their experts' owners, experts there, results back.
    exchange_.plan(dispatch_.expert_offsets);
    exchange_.to_owners(rows_x_, exchange_.panel_x());
    experts_.forward(exchange_.owner_panels(), p, dropout_);
    exchange_.from_owners(exchange_.panel_y(), rows_y_);
  } else if (expert_parallel_) {
    // Evaluation: every rank holds the same tokens and routes them alike; each runs its own
    // experts' rows, the others' contribute zero, and the partial outputs are summed.
    ExpertPanels<T> q = local_panels(x);
    const int El = exchange_.local_experts();
    q.offsets = dispatch_.expert_offsets + exchange_.first_local_expert();
    q.experts = El;
    experts_.forward(q, p, dropout_);
    std::fill(rows_y_, rows_y_ + std::size_t(q.offsets[0]) * C, T(0));
    std::fill(rows_y_ + std::size_t(q.offsets[El]) * C, rows_y_ + std::size_t(dispatch_.rows) * C,
              T(0));
  } else {
    experts_.forward(local_panels(x), p, dropout_);
  }
}

template <typename T>
void MoeLayer<T>::backward(T* dx, const MoeGrads<T>& g, const T* dy, const T* x,
                           const MoeParams<T>& p) {
  const int N = tokens_, C = spec_.C;
  Assignments<T>& a = router_.assignments();
  experts_.shared_backward(dx, g, dy, x, p, N);
  std::fill(a.dgate, a.dgate + a.count, T(0));  // dropped and skipped assignments stay 0
  // Unfused, the combine's backward forms d(ye) and d(gate) here; fused, inside the experts.
  if (!experts_.fused()) combine_backward(rows_dy_, a.dgate, dy, rows_y_, a.gate, dispatch_, C);
  T* dx_rows = rows_y_;  // the outputs are no longer needed once d(gate) is known
  experts_backward(dx_rows, g, dy, x, p);
  gather_backward(dx, dx_rows, dispatch_, N, C);
  // dx_rows is scattered: its [N, C] (rows ≥ N) are scratch for the router's backward.
  router_.backward(dx, g, x, p, rows_y_);
}

template <typename T>
void MoeLayer<T>::experts_backward(T* dx_rows, const MoeGrads<T>& g, const T* dy, const T* x,
                                   const MoeParams<T>& p) {
  if (experts_.fused()) {
    Assignments<T>& a = router_.assignments();
    gates_to_rows(row_gate_, a.gate, dispatch_);
    ExpertPanels<T> q = local_panels(x);
    q.dy = dy;
    q.gate = row_gate_;
    q.dgate = row_dgate_;
    experts_.backward(q, g, p, dx_rows);
    rows_to_gates(a.dgate, row_dgate_, dispatch_);
  } else if (expert_parallel_ && distributed_step_) {
    // The mirror of the forward exchange: d(ye) rows to the owners, dX rows back.
    exchange_.to_owners(rows_dy_, exchange_.panel_dy());
    experts_.backward(exchange_.owner_panels(), g, p, exchange_.panel_y());
    exchange_.from_owners(exchange_.panel_y(), dx_rows);
  } else {
    MOE_CHECK(!expert_parallel_,
              "internal: MoE backward after an expert-parallel evaluation forward");
    experts_.backward(local_panels(x), g, p, dx_rows);
  }
}

template <typename T>
std::vector<int32_t> MoeLayer<T>::selected_experts() const {
  const Assignments<T>& a = router_.assignments();
  const int n = router_.fixed_slots() ? tokens_ * router_.experts_per_token() : 0;
  return std::vector<int32_t>(a.expert, a.expert + n);
}

template <typename T>
std::vector<int32_t> MoeLayer<T>::dropped_mask() const {
  const Assignments<T>& a = router_.assignments();
  std::vector<int32_t> m(router_.fixed_slots() ? tokens_ * router_.experts_per_token() : 0);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = a.fate[i] != AssignmentFate::kKept;
  return m;
}

template class MoeLayer<float>;
template class MoeLayer<double>;

}  // namespace moe
