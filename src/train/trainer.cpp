#include "moe/train/trainer.h"

#include <fnmatch.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/rng.h"
#include "moe/core/threading.h"
#include "moe/data/corpus.h"
#include "moe/formats/model_file.h"
#include "moe/kernels/gemm.h"
#include "moe/train/memory_estimate.h"
#include "moe/train/model_identity.h"
#include "moe/train/run_dir.h"

namespace moe {

using json = nlohmann::json;

// The observer of a run nobody watches: every hook does nothing.
static TrainObserver& silent_observer() {
  static TrainObserver silent;
  return silent;
}

json collect_moe_metrics(Transformer& model) {
  json all = json::array();
  for (auto& f : model.ffns()) {
    json m = f->metrics();
    if (!m.is_null()) all.push_back(std::move(m));
    f->reset_metrics();
  }
  return all.empty() ? json(nullptr) : all;
}

EvalResult evaluate(Transformer& model, const data::TokenStream& s, int B, int T,
                    int64_t max_windows, const TokenGroups* groups) {
  EvalResult r;
  collect_moe_metrics(model);  // start the routing metrics afresh for this evaluation
  const int64_t n = int64_t(s.ids.size());
  // A loss over nothing is no loss: an empty or one-token text used to report 0 bits per byte.
  MOE_CHECK(n >= 2,
            "nothing to evaluate: the text is {} token(s) long; at least 2 are needed (one to "
            "predict from, one to predict)",
            n);
  // Window w predicts tokens [w·T + 1, w·T + T]; the last window may be shorter.
  const int64_t total = (n - 1 + T - 1) / T;
  const int64_t use = max_windows > 0 && max_windows < total ? max_windows : total;
  std::vector<int32_t> x(std::size_t(B) * T), y(std::size_t(B) * T);
  if (groups)
    MOE_CHECK(groups->of_token.size() == s.ids.size(),
              "internal: {} token groups for a stream of {} tokens", groups->of_token.size(), n);
  std::optional<GroupRoutingCounter> by_group;
  if (groups) by_group.emplace(*groups);
  std::vector<int64_t> starts(B);
  StepInfo info;
  info.training = false;
  double nats = 0;
  auto start_of = [&](int64_t i) { return (use == total ? i : i * total / use) * T; };
  int64_t w = 0;
  while (w < use) {
    // Full-length windows go in batches of B; a short (last) window runs alone.
    int b = 0, len = T;
    while (b < B && w < use) {
      const int64_t st = start_of(w);
      const int l = int(std::min<int64_t>(T, n - 1 - st));
      if (l < T && b > 0) break;
      len = l;
      starts[b] = st;
      for (int t = 0; t < len; ++t) {
        x[std::size_t(b) * len + t] = s.ids[st + t];
        y[std::size_t(b) * len + t] = s.ids[st + t + 1];
      }
      r.bytes += data::count_bytes(s, st + 1, st + 1 + len);
      ++b;
      ++w;
      if (l < T) break;
    }
    model.forward(x.data(), y.data(), b, len, info, 0.f);
    if (by_group) by_group->add(model, starts, b, len);
    const float* l = model.token_losses();
    for (int i = 0; i < b * len; ++i) nats += l[i];
    r.tokens += int64_t(b) * len;
  }
  r.loss = nats / double(r.tokens);
  r.bpb = data::bits_per_byte(nats, r.bytes);
  r.moe = collect_moe_metrics(model);
  if (by_group) r.by_group = by_group->result();
  return r;
}

std::unique_ptr<data::Tokenizer> make_tokenizer(const Config& cfg) {
  if (cfg.tokenizer.kind == TokenizerConfig::Kind::kByte) return data::make_byte_tokenizer();
  const std::string cache = cfg.train.out_dir + "/tokenizer.blob";
  if (file_exists(cache)) return data::tokenizer_from_serialized("bpe", read_file(cache));
  auto tok = data::train_bpe(cfg.data.dir + "/train.txt", cfg.tokenizer.vocab_size);
  make_dirs(cfg.train.out_dir);
  write_file_atomic(cache, tok->serialize());
  return tok;
}

Trainer::Trainer(const Config& cfg, Communicator& comm, TrainOptions opts)
    : Trainer(cfg, comm, std::move(opts), silent_observer()) {}

Trainer::Trainer(const Config& cfg, Communicator& comm, TrainOptions opts, TrainObserver& observer)
    : cfg_(cfg), opts_(std::move(opts)), comm_(comm), observer_(observer) {
  const int P = comm_.size();
  MOE_CHECK(cfg_.train.batch_size % P == 0,
            "config: field train.batch_size: got {}, data parallelism over {} ranks needs a "
            "multiple of {}",
            cfg_.train.batch_size, P, P);
  local_batch_ = cfg_.train.batch_size / P;
  MOE_CHECK(opts_.expert_parallel == 1 || opts_.expert_parallel == P,
            "expert_parallel {}: expected 1 (off) or the number of MPI ranks ({})",
            opts_.expert_parallel, P);
  std::unique_ptr<formats::ModelReader> foreign = adopt_foreign_model();
  cfg_.model.expert_parallel = opts_.expert_parallel;
  if (P > 1) {
    // Every rank must run the same config: compare a hash of it across ranks.
    MOE_CHECK(same_on_all_ranks(comm_, std::hash<std::string>{}(cfg_.to_json().dump())),
              "ranks were started with different configs (rank {})", comm_.rank());
  }
  set_threads(cfg_.train.threads, "config: field train.threads");
  check_blas_is_openmp();
  // A new run must not silently replace an earlier one; one rank removes (with overwrite).
  if (opts_.resume.empty() && (comm_.is_root() || !opts_.overwrite))
    claim_run_dir(cfg_.train.out_dir, opts_.overwrite, {opts_.init_from, opts_.upcycle_from});
  // Every rank has looked before any writes: otherwise rank 0 could create metrics.jsonl while a
  // slower rank was still checking, and that rank refused the directory as an earlier run
  // (seen as a flaky 4-rank test_global_batch).
  if (P > 1) comm_.barrier();
  make_dirs(cfg_.train.out_dir);
  // A kill during an earlier checkpoint write may have left its temporary behind.
  if (comm_.is_root()) remove_stale_temp_files(cfg_.train.out_dir);
  CheckpointMeta resume_meta;
  if (!opts_.resume.empty()) {
    resume_meta = read_checkpoint_meta(opts_.resume);
    check_model_matches(resume_meta.config.model, opts_.resume, /*resume=*/true);
    tokenizer_ =
        data::tokenizer_from_serialized(resume_meta.tokenizer_kind, resume_meta.tokenizer_blob);
  } else if (!opts_.init_from.empty() && !foreign) {
    // The weights come with their tokenizer: the embedding rows mean its tokens (a BPE config
    // would otherwise train a new tokenizer on this run's data).
    const CheckpointMeta m = read_checkpoint_meta(opts_.init_from);
    check_model_matches(m.config.model, opts_.init_from, /*resume=*/false);
    tokenizer_ = data::tokenizer_from_serialized(m.tokenizer_kind, m.tokenizer_blob);
  } else if (foreign) {
    tokenizer_ = foreign->tokenizer();
    MOE_CHECK(tokenizer_ != nullptr, "{}: the file carries no tokenizer", opts_.init_from);
  } else {
    tokenizer_ = make_tokenizer(cfg_);
  }
  MOE_CHECK(tokenizer_->vocab_size() <= cfg_.model.vocab_size,
            "tokenizer has {} tokens but model.vocab_size is {}", tokenizer_->vocab_size(),
            cfg_.model.vocab_size);
  train_ = data::tokenize_file(*tokenizer_, cfg_.data.dir + "/train.txt");
  val_ = data::tokenize_file(*tokenizer_, cfg_.data.dir + "/val.txt");
  MOE_CHECK(val_.ids.size() >= 2,
            "{}/val.txt: {} token(s); validation needs at least 2 (prepare the data with `moe data "
            "prepare` or `moe data fetch brown`)",
            cfg_.data.dir, val_.ids.size());
  MOE_CHECK(int64_t(train_.ids.size()) > cfg_.train.seq_len + 1,
            "{}/train.txt: {} tokens, need more than seq_len + 1 = {}", cfg_.data.dir,
            train_.ids.size(), cfg_.train.seq_len + 1);
  // Refuse what cannot fit before allocating (n_layers = 1e8 used to grow past 6.8 GB).
  check_memory(estimate_memory(cfg_.model, local_batch_, cfg_.train.seq_len, MemoryUse::kTrain, 0,
                               cfg_.train.precision),
               cfg_.model, local_batch_, cfg_.train.seq_len, "training");
  model_ = std::make_unique<Transformer>(cfg_.model, local_batch_, cfg_.train.seq_len, comm_);
  model_->params().initialize(cfg_.train.seed);
  opt_ = std::make_unique<AdamWOptimizer>(model_->params(), cfg_.train, comm_);
  load_weights(resume_meta);
  if (foreign) formats::load_weights(*foreign, *model_);
  // train.precision: bf16 shadows made from the masters just initialised or loaded (so a resumed
  // run sees the same rounded weights the interrupted one would have).
  model_->set_precision(cfg_.train.precision);
  freeze_parameters();
  inject_replica_fault();
  batch_x_.resize(std::size_t(local_batch_) * cfg_.train.seq_len);
  batch_y_.resize(batch_x_.size());
}

namespace {

// A resumed run repeats the steps after its checkpoint: the log lines of those steps (written by
// the run that was interrupted) go, so no step appears twice. Lines without a step and
// unreadable lines are kept as they are. Rewritten atomically.
void trim_metrics(const std::string& path, int64_t step) {
  if (!file_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string kept, line;
  bool dropped = false;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
        j["step"].get<int64_t>() > step) {
      dropped = true;
      continue;
    }
    kept += line + "\n";
  }
  if (dropped) write_file_atomic(path, kept);
}

}  // namespace

// The model must be the one in the checkpoint: every field that gives its weights their meaning
// (sizes, heads, RoPE, norms, routing, top-k, experts…) must agree; training settings may
// differ (e.g. more steps, another balancing coefficient). A resumed run must keep the model; a
// run started --init-from may change it only when asked to (allow_model_change), and then
// records what changed (allowed_model_change()).
void Trainer::check_model_matches(const ModelConfig& stored, const std::string& path, bool resume) {
  const std::vector<std::string> diffs = model_identity_diff(stored, cfg_.model);
  if (diffs.empty()) return;
  std::string list;
  for (std::size_t i = 0; i < diffs.size() && i < 6; ++i) list += (i ? ", " : "") + diffs[i];
  if (diffs.size() > 6) list += fmt::format(" and {} more", diffs.size() - 6);
  const std::string what =
      fmt::format("{}: the checkpoint's model (identity {}) differs from the config's ({}): {}",
                  path, model_identity_hash(stored), model_identity_hash(cfg_.model), list);
  MOE_CHECK(!resume,
            "{}; a resumed run must keep the model (start a new run with --init-from "
            "and --allow-model-change to change it)",
            what);
  MOE_CHECK(opts_.allow_model_change,
            "{}; --init-from loads the weights into the config's model: give "
            "--allow-model-change if the change is meant (the weights are then read with the "
            "config's meaning)",
            what);
  allowed_model_change_ = what;  // the caller (cli) tells the person
}

// A GGUF file or a Hugging Face directory given as --init-from brings its own model and
// tokenizer: the run fine-tunes that model. The config's model section gives way to the file's,
// except the training-only knobs of its MoE layers (balancing and z-loss coefficients, capacity,
// expert dropout), which the run keeps.
std::unique_ptr<formats::ModelReader> Trainer::adopt_foreign_model() {
  if (opts_.init_from.empty() || !formats::is_foreign_model(opts_.init_from)) return nullptr;
  MOE_CHECK(opts_.resume.empty() && opts_.upcycle_from.empty(),
            "--init-from {}: a GGUF or Hugging Face model cannot be combined with --resume or "
            "--upcycle-from",
            opts_.init_from);
  std::unique_ptr<formats::ModelReader> r = formats::open_model(opts_.init_from);
  const FfnConfig knobs = cfg_.model.ffn;
  cfg_.model = r->config();
  auto keep_knobs = [&](FfnConfig& f) {
    if (f.kind != FfnConfig::Kind::kMoe) return;
    f.moe.aux_loss_coef = knobs.moe.aux_loss_coef;
    f.moe.z_loss_coef = knobs.moe.z_loss_coef;
    f.moe.capacity_factor = knobs.moe.capacity_factor;
    f.moe.expert_dropout = knobs.moe.expert_dropout;
  };
  keep_knobs(cfg_.model.ffn);
  for (auto& [l, f] : cfg_.model.ffn_overrides) keep_knobs(f);
  MOE_CHECK(cfg_.train.seq_len <= cfg_.model.max_seq_len,
            "config: field train.seq_len: got {}, but {} has a context of {}", cfg_.train.seq_len,
            opts_.init_from, cfg_.model.max_seq_len);
  return r;
}

void Trainer::load_weights(const CheckpointMeta& resume_meta) {
  if (!opts_.resume.empty()) {
    load_checkpoint(opts_.resume, *model_, opt_.get());
    state_ = resume_meta.state;
    if (comm_.is_root()) trim_metrics(cfg_.train.out_dir + "/metrics.jsonl", state_.step);
    return;
  }
  // A fresh run starts a fresh log (a resumed one appends).
  if (comm_.is_root()) std::ofstream(cfg_.train.out_dir + "/metrics.jsonl", std::ios::trunc);
  if (!opts_.init_from.empty() && !formats::is_foreign_model(opts_.init_from))
    load_checkpoint(opts_.init_from, *model_, nullptr);
  if (!opts_.upcycle_from.empty()) {
    const int n = upcycle_from_dense(opts_.upcycle_from, *model_);
    observer_.on_upcycle(n, opts_.upcycle_from);
  }
}

void Trainer::freeze_parameters() {
  // Frozen parameters keep their values: the optimizer skips them. On resume the same patterns
  // apply (they are part of the config).
  for (const std::string& pat : cfg_.train.freeze) {
    int matched = 0;
    for (Param& p : model_->params().all())
      if (::fnmatch(pat.c_str(), p.name.c_str(), 0) == 0) {
        p.trainable = false;
        ++matched;
      }
    MOE_CHECK(matched > 0,
              "config: field train.freeze: pattern \"{}\" matches no parameter (names look like "
              "layers.0.attn.wq, layers.1.ffn.experts.w_up; see docs/FORMATS.md)",
              pat);
  }
}

void Trainer::inject_replica_fault() {
  // TrainOptions::fault_replica_rank: a weight only this rank moves, for the replica check to find.
  if (!opts_.fault_replica_rank || comm_.size() == 1) return;
  if (*opts_.fault_replica_rank != comm_.rank()) return;
  for (Param& p : model_->params().all())
    if (!p.sharded() && p.numel > 0) {
      p.w[0] += 0.5f;
      return;
    }
}

void Trainer::count_pass(int64_t s, const StepInfo& info) {
  // aux_loss_scope global_batch (FeedForward::needs_count_pass): a forward of each micro-batch
  // of the step, before any backward, so the routers hold the step's expert counts. One extra
  // forward per micro-batch; none with one micro-batch, whose forward already sees the step.
  const TrainConfig& tc = cfg_.train;
  if (tc.grad_accum == 1) return;
  const auto& ffns = model_->ffns();
  if (std::none_of(ffns.begin(), ffns.end(), [](auto& f) { return f->needs_count_pass(); })) return;
  StepInfo ci = info;
  ci.count_pass = true;
  for (int m = 0; m < tc.grad_accum; ++m) {
    sample_batch(s, m, batch_x_.data(), batch_y_.data());
    model_->forward(batch_x_.data(), batch_y_.data(), local_batch_, tc.seq_len, ci, 0.f);
  }
}

void Trainer::sample_batch(int64_t step, int micro, int32_t* x, int32_t* y) const {
  // The global batch is drawn identically on every rank; this rank keeps its contiguous slice
  // of sequences, so P ranks together see exactly the batch one process would. With
  // train.sample_by_step the step's sequences are numbered across its micro-batches too (micro
  // m, rank r, row lb: m·batch_size + r·local + lb, all from one stream per step), so any split
  // into grad_accum × ranks of the same step batch draws the same sequences; with one
  // micro-batch that is the default order.
  const int T = cfg_.train.seq_len;
  const bool by_step = cfg_.train.sample_by_step;
  const int b0 = comm_.rank() * local_batch_ + (by_step ? micro * cfg_.train.batch_size : 0);
  const uint64_t range = train_.ids.size() - T - 1;
  Rng rng(cfg_.train.seed, stream_id(kPurposeData, uint32_t(step), uint32_t(by_step ? 0 : micro)));
  for (int lb = 0; lb < local_batch_; ++lb) {
    const int b = b0 + lb;
    const uint64_t r = (uint64_t(rng.u32(2 * b)) << 32) | rng.u32(2 * b + 1);
    const uint64_t st = r % (range + 1);
    for (int t = 0; t < T; ++t) {
      x[lb * T + t] = train_.ids[st + t];
      y[lb * T + t] = train_.ids[st + t + 1];
    }
  }
}

void Trainer::save(const std::string& path, CheckpointKind kind) {
  // Every rank calls this: expert-parallel shards are gathered (a collective), then rank 0 writes.
  check_replicas();  // what is written must be what every rank holds
  CheckpointMeta m;
  m.config = cfg_;
  m.state = state_;
  m.tokenizer_kind = tokenizer_->kind();
  m.tokenizer_blob = tokenizer_->serialize();
  save_checkpoint(path, *model_, opt_.get(), m);
  observer_.on_checkpoint({state_.step, path, kind});
}

void Trainer::log_json(const json& j) {
  if (!comm_.is_root()) return;
  std::ofstream f(cfg_.train.out_dir + "/metrics.jsonl", std::ios::app);
  f << j.dump() << "\n";
}

void Trainer::check_replicas() {
  // Replicated parameters must hold the same bits on every rank (the same summed gradients and
  // the same AdamW step keep them so; a bug or a flaky network would not). A 52-bit hash of
  // them, compared across ranks like the config.
  if (comm_.size() == 1) return;
  uint64_t h = 1469598103934665603ull;
  for (const Param& p : model_->params().all()) {
    if (p.sharded()) continue;
    const uint32_t* u = reinterpret_cast<const uint32_t*>(p.w);
    for (std::size_t i = 0; i < p.numel; ++i) h = (h ^ u[i]) * 1099511628211ull;
  }
  MOE_CHECK(same_on_all_ranks(comm_, h),
            "step {}: the replicated parameters differ between ranks (rank {}); stopping",
            state_.step, comm_.rank());
}

void Trainer::allreduce_replicated_grads() {
  // One allreduce per contiguous run of dense replicated parameters. Expert-parallel shards are
  // left out: each rank's experts already hold the gradient of the whole global batch (every
  // row routed to them, from every rank, came through the exchange). Row-sparse tables (PEER)
  // go by rows: the union of the rows any rank touched, packed, summed, unpacked.
  auto& ps = model_->params();
  std::size_t start = 0;
  for (Param& p : ps.all()) {
    if (!p.sharded() && !p.sparse_rows) continue;
    if (p.offset > start) comm_.allreduce_sum(ps.grads() + start, p.offset - start);
    start = p.offset + p.numel;
    if (!p.sparse_rows) continue;
    const std::size_t rows = std::size_t(p.shape[0]), L = p.row_len;
    std::vector<float>& mark = sparse_mark_;  // members: no allocation after the first step
    mark.assign(rows, 0.f);
    for (int32_t r : p.touched) mark[r] = 1.f;
    comm_.allreduce_sum(mark.data(), rows);
    std::vector<int32_t>& all = sparse_rows_;
    all.clear();
    for (std::size_t r = 0; r < rows; ++r)
      if (mark[r] > 0) all.push_back(int32_t(r));
    std::vector<float>& buf = sparse_buf_;  // a row this rank did not touch has zero gradient
    buf.resize(all.size() * L);
    for (std::size_t i = 0; i < all.size(); ++i)
      std::copy(p.g + all[i] * L, p.g + (all[i] + 1) * L, buf.begin() + i * L);
    comm_.allreduce_sum(buf.data(), buf.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
      std::copy(buf.begin() + i * L, buf.begin() + (i + 1) * L, p.g + all[i] * L);
      p.touch(all[i]);
    }
  }
  if (ps.numel() > start) comm_.allreduce_sum(ps.grads() + start, ps.numel() - start);
}

RunInfo Trainer::run_info() const {
  RunInfo r;
  for (const Param& p : model_->params().all()) r.parameters += p.numel;
  r.n_layers = cfg_.model.n_layers;
  r.ffn = model_->ffns()[0]->describe();
  r.tokenizer = tokenizer_->kind();
  r.vocab_size = tokenizer_->vocab_size();
  r.train_tokens = train_.ids.size();
  r.val_tokens = val_.ids.size();
  r.threads = omp_get_max_threads();
  r.blas = blas_info();
  r.first_step = state_.step;
  r.steps = cfg_.train.steps;
  return r;
}

double Trainer::elapsed() const {
  return elapsed_before_ + std::chrono::duration<double>(Clock::now() - run_start_).count();
}

Trainer::StepResult Trainer::train_step(int64_t s) {
  const TrainConfig& tc = cfg_.train;
  const int B = local_batch_, T = tc.seq_len, P = comm_.size();
  model_->params().zero_grad();
  // bf16: the masters changed in the last update; every micro-batch of this step sees one
  // rounding of them (a no-op in fp32).
  model_->refresh_low_precision();
  StepInfo info;
  info.training = true;
  info.step = s;
  info.seed = tc.seed;
  // One backward forms the whole gradient: row-sparse tables (PEER) are then updated inside
  // it, each row as soon as its gradient is complete (the optimizer skips them in step()).
  if (tc.grad_accum == 1 && P == 1) opt_->prepare(s);
  count_pass(s, info);
  StepResult r;
  for (int m = 0; m < tc.grad_accum; ++m) {
    sample_batch(s, m, batch_x_.data(), batch_y_.data());
    // Mean over the global batch: each rank's share of the gradient is scaled by 1/P.
    r.loss += model_->forward(batch_x_.data(), batch_y_.data(), B, T, info,
                              1.f / float(tc.grad_accum * P));
    r.aux += model_->aux_loss();
    model_->backward();
  }
  r.loss /= tc.grad_accum;
  r.aux /= tc.grad_accum;
  if (P > 1) {
    // Data parallel: sum the gradient shares (every rank gets the same bits) and the losses.
    const auto ar0 = Clock::now();
    allreduce_replicated_grads();
    window_.allreduce_s += std::chrono::duration<double>(Clock::now() - ar0).count();
    double l[2] = {r.loss / P, r.aux / P};
    comm_.allreduce_sum(l, 2);
    r.loss = l[0];
    r.aux = l[1];
  }
  if (!std::isfinite(r.loss) || !std::isfinite(r.aux)) {
    const std::string last = tc.out_dir + "/last.safetensors";
    MOE_FAIL(
        "loss is {} (auxiliary routing loss {}) at step {}: stopping without saving; the "
        "last good checkpoint {} is kept (try a lower train.lr or train.grad_clip)",
        r.loss, r.aux, s, file_exists(last) ? last : std::string("(none yet)"));
  }
  r.stats = opt_->step(s);
  for (auto& f : model_->ffns()) f->end_step();  // e.g. the MoE selection bias, once per step
#ifndef NDEBUG
  check_replicas();  // debug builds: every step
#endif
  losses_.push_back(r.loss);
  state_.step = s + 1;
  const int64_t tokens = int64_t(B) * P * T * tc.grad_accum;
  state_.tokens_seen += tokens;
  window_.tokens += tokens;
  return r;
}

void Trainer::log_step(const StepResult& r) {
  const TrainConfig& tc = cfg_.train;
  const int P = comm_.size();
  const double dt = std::chrono::duration<double>(Clock::now() - window_.start).count();
  const double tps = dt > 0 ? window_.tokens / dt : 0;
  const double allreduce_s = window_.allreduce_s;
  window_ = {Clock::now(), 0, 0};
  const double el = elapsed();
  json line = {{"step", state_.step}, {"loss", r.loss},
               {"lr", r.stats.lr},    {"grad_norm", r.stats.grad_norm},
               {"tokens_per_s", tps}, {"elapsed_s", el}};
  if (P > 1 && dt > 0) line["grad_allreduce_share"] = allreduce_s / dt;
  json moe = collect_moe_metrics(*model_);
  if (!moe.is_null()) {
    line["aux_loss"] = r.aux;
    // Expert parallelism: the share of this window's wall time spent in the exchanges.
    double a2a = 0;
    bool has_a2a = false;
    for (const json& m : moe)
      if (m.contains("a2a_s")) {
        a2a += m["a2a_s"].get<double>();
        has_a2a = true;
      }
    if (has_a2a && dt > 0) line["a2a_share"] = a2a / dt;
    line["moe"] = moe;
  }
  log_json(line);
  LogLine l;
  l.step = state_.step;
  l.steps = tc.steps;
  l.loss = r.loss;
  l.lr = r.stats.lr;
  l.grad_norm = r.stats.grad_norm;
  l.tokens_per_s = tps;
  l.elapsed_s = el;
  if (tps > 0)
    l.eta_s = double(tc.steps - state_.step) * local_batch_ * P * tc.seq_len * tc.grad_accum / tps;
  observer_.on_log(l);
}

void Trainer::evaluate_now(TrainResult& res) {
  const TrainConfig& tc = cfg_.train;
  const int B = local_batch_;
  model_->refresh_low_precision();  // bf16: the weights of the update just made
  // eval_batches counts global batches: the same windows whatever the number of ranks.
  res.last_val =
      evaluate(*model_, val_, B, tc.seq_len, int64_t(tc.eval_batches) * B * comm_.size());
  json line = {{"step", state_.step},
               {"val_loss", res.last_val.loss},
               {"val_bpb", res.last_val.bpb},
               {"elapsed_s", elapsed()}};
  if (!res.last_val.moe.is_null()) line["val_moe"] = res.last_val.moe;
  log_json(line);
  observer_.on_eval(state_.step, res.last_val);
  window_.start = Clock::now();  // evaluation time is not training throughput
}

std::optional<StopReason> Trainer::stop_reason() {
  const TrainConfig& tc = cfg_.train;
  const bool time_up = tc.time_limit_s > 0 && state_.elapsed_s >= tc.time_limit_s;
  const bool step_limit = opts_.stop_after > 0 && state_.step >= opts_.stop_after;
  const bool requested = opts_.stop_requested();
  double stop = (requested || time_up || step_limit) ? 1 : 0;
  comm_.allreduce_max(&stop, 1);  // all ranks stop at the same step, or none does
  if (stop == 0) return std::nullopt;
  if (time_up) return StopReason::kTimeLimit;
  if (step_limit) return StopReason::kStepLimit;
  return StopReason::kRequested;  // here, or on another rank
}

TrainResult Trainer::run() {
  const TrainConfig& tc = cfg_.train;
  observer_.on_start(run_info());
  run_start_ = Clock::now();
  elapsed_before_ = state_.elapsed_s;
  window_ = {Clock::now(), 0, 0};
  TrainResult res;
  const std::string last = tc.out_dir + "/last.safetensors";
  while (state_.step < tc.steps) {
    const StepResult r = train_step(state_.step);
    res.final_loss = r.loss;
    if (state_.step % tc.log_every == 0 || state_.step == tc.steps) log_step(r);
    const bool eval_now =
        (tc.eval_every > 0 && state_.step % tc.eval_every == 0) || state_.step == tc.steps;
    if (eval_now && !val_.ids.empty()) evaluate_now(res);
    state_.elapsed_s = elapsed();
    if (const std::optional<StopReason> why = stop_reason()) {
      save(last, CheckpointKind::kStop);
      res.interrupted = true;
      res.checkpoint = last;
      observer_.on_stop({state_.step, *why, last});
      break;
    }
    if (tc.checkpoint_every > 0 && state_.step % tc.checkpoint_every == 0 && state_.step < tc.steps)
      save(last, CheckpointKind::kPeriodic);
  }
  res.steps_done = state_.step;
  if (!res.interrupted) {
    res.checkpoint = tc.out_dir + "/final.safetensors";
    save(res.checkpoint, CheckpointKind::kFinal);
  }
  return res;
}

}  // namespace moe
