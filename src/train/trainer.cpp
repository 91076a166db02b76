#include "moe/train/trainer.h"

#include <fnmatch.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/rng.h"
#include "moe/data/corpus.h"
#include "moe/kernels/gemm.h"

namespace moe {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::atomic<bool> g_stop_requested{false};

static void on_sigint(int) {
  // A second Ctrl-C kills at once (the default action) for a user who does not want to wait.
  if (g_stop_requested.exchange(true)) std::_Exit(130);
}

void install_sigint_handler() { std::signal(SIGINT, on_sigint); }

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
                    int64_t max_windows) {
  EvalResult r;
  collect_moe_metrics(model);  // start the routing metrics afresh for this evaluation
  const int64_t n = int64_t(s.ids.size());
  if (n < 2) return r;
  // Window w predicts tokens [w·T + 1, w·T + T]; the last window may be shorter.
  const int64_t total = (n - 1 + T - 1) / T;
  const int64_t use = max_windows > 0 && max_windows < total ? max_windows : total;
  std::vector<int32_t> x(std::size_t(B) * T), y(std::size_t(B) * T);
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
    const float* l = model.token_losses();
    for (int i = 0; i < b * len; ++i) nats += l[i];
    r.tokens += int64_t(b) * len;
  }
  r.loss = nats / double(r.tokens);
  r.bpb = data::bits_per_byte(nats, r.bytes);
  r.moe = collect_moe_metrics(model);
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

Trainer::Trainer(const Config& cfg, TrainOptions opts)
    : cfg_(cfg), opts_(std::move(opts)), comm_(&world()) {
  const int P = comm_->size();
  MOE_CHECK(cfg_.train.batch_size % P == 0,
            "config: field train.batch_size: got {}, data parallelism over {} ranks needs a "
            "multiple of {}",
            cfg_.train.batch_size, P, P);
  local_batch_ = cfg_.train.batch_size / P;
  MOE_CHECK(opts_.expert_parallel == 1 || opts_.expert_parallel == P,
            "--expert-parallel {}: expected 1 (off) or the number of MPI ranks ({})",
            opts_.expert_parallel, P);
  cfg_.model.expert_parallel = opts_.expert_parallel;
  if (P > 1) {
    // Every rank must run the same config: compare a hash of it across ranks.
    MOE_CHECK(same_on_all_ranks(*comm_, std::hash<std::string>{}(cfg_.to_json().dump())),
              "ranks were started with different configs (rank {})", comm_->rank());
    if (!comm_->is_root()) opts_.quiet = true;  // one rank speaks
  }
  if (cfg_.train.threads > 0) omp_set_num_threads(cfg_.train.threads);
  check_blas_is_openmp();
  make_dirs(cfg_.train.out_dir);
  CheckpointMeta resume_meta;
  if (!opts_.resume.empty()) {
    resume_meta = read_checkpoint_meta(opts_.resume);
    // The model must be the one in the checkpoint; training settings may differ (e.g. more steps).
    MOE_CHECK(resume_meta.config.model.d_model == cfg_.model.d_model &&
                  resume_meta.config.model.n_layers == cfg_.model.n_layers &&
                  resume_meta.config.model.vocab_size == cfg_.model.vocab_size,
              "{}: checkpoint model (d_model {}, n_layers {}, vocab {}) does not match the config "
              "(d_model {}, n_layers {}, vocab {})",
              opts_.resume, resume_meta.config.model.d_model, resume_meta.config.model.n_layers,
              resume_meta.config.model.vocab_size, cfg_.model.d_model, cfg_.model.n_layers,
              cfg_.model.vocab_size);
    tokenizer_ =
        data::tokenizer_from_serialized(resume_meta.tokenizer_kind, resume_meta.tokenizer_blob);
  } else {
    tokenizer_ = make_tokenizer(cfg_);
  }
  MOE_CHECK(tokenizer_->vocab_size() <= cfg_.model.vocab_size,
            "tokenizer has {} tokens but model.vocab_size is {}", tokenizer_->vocab_size(),
            cfg_.model.vocab_size);
  train_ = data::tokenize_file(*tokenizer_, cfg_.data.dir + "/train.txt");
  val_ = data::tokenize_file(*tokenizer_, cfg_.data.dir + "/val.txt");
  MOE_CHECK(int64_t(train_.ids.size()) > cfg_.train.seq_len + 1,
            "{}/train.txt: {} tokens, need more than seq_len + 1 = {}", cfg_.data.dir,
            train_.ids.size(), cfg_.train.seq_len + 1);
  model_ = std::make_unique<Transformer>(cfg_.model, local_batch_, cfg_.train.seq_len);
  model_->params().initialize(cfg_.train.seed);
  opt_ = std::make_unique<AdamWOptimizer>(model_->params(), cfg_.train);
  if (!opts_.resume.empty()) {
    load_checkpoint(opts_.resume, *model_, opt_.get());
    state_ = resume_meta.state;
  } else if (comm_->is_root()) {
    // A fresh run starts a fresh log (a resumed one appends).
    std::ofstream(cfg_.train.out_dir + "/metrics.jsonl", std::ios::trunc);
  }
  if (opts_.resume.empty() && !opts_.init_from.empty()) {
    load_checkpoint(opts_.init_from, *model_, nullptr);
  }
  if (opts_.resume.empty() && !opts_.upcycle_from.empty()) {
    const int n = upcycle_from_dense(opts_.upcycle_from, *model_);
    if (!opts_.quiet) fmt::print("upcycled {} tensors from {}\n", n, opts_.upcycle_from);
  }
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
  // Fault injection, for the test that the replica check can fail (tests/python/
  // test_data_parallel.py): MOE_FAULT_REPLICA_RANK=r adds 0.5 to rank r's first replicated
  // weight, a divergence no bug-free run produces and the shared updates do not erase.
  if (const char* f = std::getenv("MOE_FAULT_REPLICA_RANK"); f && P > 1) {
    char* end = nullptr;
    const long r = std::strtol(f, &end, 10);
    MOE_CHECK(*f != '\0' && *end == '\0',
              "environment variable MOE_FAULT_REPLICA_RANK: got \"{}\", expected a rank number", f);
    if (r == comm_->rank())
      for (Param& p : model_->params().all())
        if (!p.sharded() && p.numel > 0) {
          p.w[0] += 0.5f;
          break;
        }
  }
}

void Trainer::sample_batch(int64_t step, int micro, int32_t* x, int32_t* y) const {
  // The global batch is drawn identically on every rank; this rank keeps its contiguous slice
  // of sequences, so P ranks together see exactly the batch one process would.
  const int T = cfg_.train.seq_len, b0 = comm_->rank() * local_batch_;
  const uint64_t range = train_.ids.size() - T - 1;
  Rng rng(cfg_.train.seed, stream_id(kPurposeData, uint32_t(step), uint32_t(micro)));
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

void Trainer::save(const std::string& path) {
  // Every rank calls this: expert-parallel shards are gathered (a collective), then rank 0 writes.
  check_replicas();  // what is written must be what every rank holds
  CheckpointMeta m;
  m.config = cfg_;
  m.state = state_;
  m.tokenizer_kind = tokenizer_->kind();
  m.tokenizer_blob = tokenizer_->serialize();
  save_checkpoint(path, *model_, opt_.get(), m);
}

void Trainer::log_json(const json& j) {
  if (!comm_->is_root()) return;
  std::ofstream f(cfg_.train.out_dir + "/metrics.jsonl", std::ios::app);
  f << j.dump() << "\n";
}

static std::string fmt_duration(double s) {
  if (s < 0 || !std::isfinite(s)) return "?";
  const int t = int(s + 0.5);
  return t >= 3600 ? fmt::format("{}h{:02d}m", t / 3600, t / 60 % 60)
                   : fmt::format("{}m{:02d}s", t / 60, t % 60);
}

void Trainer::check_replicas() {
  // Replicated parameters must hold the same bits on every rank (the same summed gradients and
  // the same AdamW step keep them so; a bug or a flaky network would not). A 52-bit hash of
  // them, compared across ranks like the config.
  if (comm_->size() == 1) return;
  uint64_t h = 1469598103934665603ull;
  for (const Param& p : model_->params().all()) {
    if (p.sharded()) continue;
    const uint32_t* u = reinterpret_cast<const uint32_t*>(p.w);
    for (std::size_t i = 0; i < p.numel; ++i) h = (h ^ u[i]) * 1099511628211ull;
  }
  MOE_CHECK(same_on_all_ranks(*comm_, h),
            "step {}: the replicated parameters differ between ranks (rank {}); stopping",
            state_.step, comm_->rank());
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
    if (p.offset > start) comm_->allreduce_sum(ps.grads() + start, p.offset - start);
    start = p.offset + p.numel;
    if (!p.sparse_rows) continue;
    const std::size_t rows = std::size_t(p.shape[0]), L = p.row_len;
    std::vector<float>& mark = sparse_mark_;  // members: no allocation after the first step
    mark.assign(rows, 0.f);
    for (int32_t r : p.touched) mark[r] = 1.f;
    comm_->allreduce_sum(mark.data(), rows);
    std::vector<int32_t>& all = sparse_rows_;
    all.clear();
    for (std::size_t r = 0; r < rows; ++r)
      if (mark[r] > 0) all.push_back(int32_t(r));
    std::vector<float>& buf = sparse_buf_;  // a row this rank did not touch has zero gradient
    buf.resize(all.size() * L);
    for (std::size_t i = 0; i < all.size(); ++i)
      std::copy(p.g + all[i] * L, p.g + (all[i] + 1) * L, buf.begin() + i * L);
    comm_->allreduce_sum(buf.data(), buf.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
      std::copy(buf.begin() + i * L, buf.begin() + (i + 1) * L, p.g + all[i] * L);
      p.touch(all[i]);
    }
  }
  if (ps.numel() > start) comm_->allreduce_sum(ps.grads() + start, ps.numel() - start);
}

TrainResult Trainer::run() {
  const TrainConfig& tc = cfg_.train;
  const int B = local_batch_, T = tc.seq_len, P = comm_->size();
  const bool tty = !opts_.quiet && ::isatty(STDOUT_FILENO);
  std::vector<int32_t> x(std::size_t(B) * T), y(std::size_t(B) * T);
  TrainResult res;
  if (!opts_.quiet) {
    std::size_t nparams = 0;
    for (auto& p : model_->params().all()) nparams += p.numel;
    fmt::print(
        "moe train: {} parameters, {} layers × [{}], tokenizer {} (vocab {}), {} train / "
        "{} val tokens, {} threads\n  BLAS: {}\n",
        nparams, cfg_.model.n_layers, model_->ffns()[0]->describe(), tokenizer_->kind(),
        tokenizer_->vocab_size(), train_.ids.size(), val_.ids.size(), omp_get_max_threads(),
        blas_info());
    if (state_.step > 0) fmt::print("  resuming at step {}\n", state_.step);
    std::fflush(stdout);
  }
  const auto t0 = Clock::now();
  const double elapsed0 = state_.elapsed_s;
  auto elapsed = [&] {
    return elapsed0 + std::chrono::duration<double>(Clock::now() - t0).count();
  };
  auto window_t = Clock::now();
  int64_t window_tokens = 0;
  double window_allreduce_s = 0;  // data parallel: time in the gradient all-reduce this window
  const std::string last = tc.out_dir + "/last.safetensors";
  while (state_.step < tc.steps) {
    const int64_t s = state_.step;
    model_->params().zero_grad();
    StepInfo info;
    info.training = true;
    info.step = s;
    info.seed = tc.seed;
    // One backward forms the whole gradient: row-sparse tables (PEER) are then updated inside
    // it, each row as soon as its gradient is complete (the optimizer skips them in step()).
    if (tc.grad_accum == 1 && P == 1) opt_->prepare(s);
    double loss = 0, aux = 0;
    for (int m = 0; m < tc.grad_accum; ++m) {
      sample_batch(s, m, x.data(), y.data());
      // Mean over the global batch: each rank's share of the gradient is scaled by 1/P.
      loss += model_->forward(x.data(), y.data(), B, T, info, 1.f / float(tc.grad_accum * P));
      aux += model_->aux_loss();
      model_->backward();
    }
    loss /= tc.grad_accum;
    aux /= tc.grad_accum;
    if (P > 1) {
      // Data parallel: sum the gradient shares (every rank gets the same bits) and the losses.
      const auto ar0 = Clock::now();
      allreduce_replicated_grads();
      window_allreduce_s += std::chrono::duration<double>(Clock::now() - ar0).count();
      double l[2] = {loss / P, aux / P};
      comm_->allreduce_sum(l, 2);
      loss = l[0];
      aux = l[1];
    }
    if (!std::isfinite(loss) || !std::isfinite(aux)) {
      if (tty) fmt::print("\n");
      MOE_FAIL(
          "loss is {} (auxiliary routing loss {}) at step {}: stopping without saving; the "
          "last good checkpoint {} is kept (try a lower train.lr or train.grad_clip)",
          loss, aux, s, file_exists(last) ? last : std::string("(none yet)"));
    }
    const OptimStats st = opt_->step(s);
#ifndef NDEBUG
    check_replicas();  // debug builds: every step
#endif
    losses_.push_back(loss);
    state_.step = s + 1;
    state_.tokens_seen += int64_t(B) * P * T * tc.grad_accum;
    window_tokens += int64_t(B) * P * T * tc.grad_accum;
    res.final_loss = loss;

    const bool log_now = state_.step % tc.log_every == 0 || state_.step == tc.steps;
    if (log_now) {
      const double dt = std::chrono::duration<double>(Clock::now() - window_t).count();
      const double tps = dt > 0 ? window_tokens / dt : 0;
      window_t = Clock::now();
      window_tokens = 0;
      const double allreduce_s = window_allreduce_s;
      window_allreduce_s = 0;
      const double el = elapsed();
      json line = {{"step", state_.step},       {"loss", loss},        {"lr", st.lr},
                   {"grad_norm", st.grad_norm}, {"tokens_per_s", tps}, {"elapsed_s", el}};
      if (P > 1 && dt > 0) line["grad_allreduce_share"] = allreduce_s / dt;
      json moe = collect_moe_metrics(*model_);
      if (!moe.is_null()) {
        line["aux_loss"] = aux;
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
      if (!opts_.quiet) {
        const double eta =
            tps > 0 ? double(tc.steps - state_.step) * B * P * T * tc.grad_accum / tps : -1;
        if (tty) {
          const int width = 30, done = int(width * state_.step / tc.steps);
          fmt::print("\r[{}{}] {}/{} loss {:.4f} lr {:.2e} |g| {:.2f} {:.0f} tok/s ETA {}   ",
                     std::string(done, '='), std::string(width - done, ' '), state_.step, tc.steps,
                     loss, st.lr, st.grad_norm, tps, fmt_duration(eta));
        } else {
          fmt::print(
              "step {}/{} loss {:.4f} lr {:.2e} grad_norm {:.3f} tok/s {:.0f} elapsed {} "
              "ETA {}\n",
              state_.step, tc.steps, loss, st.lr, st.grad_norm, tps, fmt_duration(el),
              fmt_duration(eta));
        }
        std::fflush(stdout);
      }
    }
    const bool eval_now =
        (tc.eval_every > 0 && state_.step % tc.eval_every == 0) || state_.step == tc.steps;
    if (eval_now && !val_.ids.empty()) {
      // eval_batches counts global batches: the same windows whatever the number of ranks.
      res.last_val = evaluate(*model_, val_, B, T, int64_t(tc.eval_batches) * B * P);
      json line = {{"step", state_.step},
                   {"val_loss", res.last_val.loss},
                   {"val_bpb", res.last_val.bpb},
                   {"elapsed_s", elapsed()}};
      if (!res.last_val.moe.is_null()) line["val_moe"] = res.last_val.moe;
      log_json(line);
      if (!opts_.quiet) {
        fmt::print("{}step {} val loss {:.4f} val bpb {:.4f}\n", tty ? "\n" : "", state_.step,
                   res.last_val.loss, res.last_val.bpb);
        std::fflush(stdout);
      }
      window_t = Clock::now();  // evaluation time is not training throughput
    }
    state_.elapsed_s = elapsed();
    const bool time_up = tc.time_limit_s > 0 && state_.elapsed_s >= tc.time_limit_s;
    const bool stop_here = opts_.stop_after > 0 && state_.step >= opts_.stop_after;
    double stop = (g_stop_requested || time_up || stop_here) ? 1 : 0;
    comm_->allreduce_max(&stop, 1);  // all ranks stop at the same step, or none does
    if (stop > 0) {
      save(last);
      res.interrupted = true;
      res.checkpoint = last;
      if (!opts_.quiet)
        fmt::print("{}{} at step {}: checkpoint saved to {} (continue with --resume {})\n",
                   tty ? "\n" : "", time_up ? "time limit reached" : "interrupted", state_.step,
                   last, last);
      break;
    }
    if (tc.checkpoint_every > 0 && state_.step % tc.checkpoint_every == 0 && state_.step < tc.steps)
      save(last);
  }
  res.steps_done = state_.step;
  if (!res.interrupted) {
    res.checkpoint = tc.out_dir + "/final.safetensors";
    save(res.checkpoint);
    if (!opts_.quiet) fmt::print("{}saved {}\n", tty ? "\n" : "", res.checkpoint);
  }
  return res;
}

}  // namespace moe
