#include "train_progress.h"

#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "moe/train/trainer.h"

namespace moe::cli {

namespace {

std::string fmt_duration(std::optional<double> s) {
  if (!s || *s < 0 || !std::isfinite(*s)) return "?";
  const int t = int(*s + 0.5);
  return t >= 3600 ? fmt::format("{}h{:02d}m", t / 3600, t / 60 % 60)
                   : fmt::format("{}m{:02d}s", t / 60, t % 60);
}

std::atomic<bool> g_stop{false};

void on_stop_signal(int sig) {
  // A second Ctrl-C kills at once (as the default action would) for a user who does not want to
  // wait for the step and the checkpoint.
  if (g_stop.exchange(true)) std::_Exit(128 + sig);
}

}  // namespace

void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

bool stop_requested() { return g_stop.load(std::memory_order_relaxed); }

TrainProgress::~TrainProgress() {
  if (bar_open_) {
    fmt::print("\n");
    std::fflush(stdout);
  }
}

const char* TrainProgress::after_bar() {
  bar_open_ = false;
  return tty_ ? "\n" : "";
}

void TrainProgress::on_upcycle(int tensors, const std::string& from) {
  fmt::print("upcycled {} tensors from {}\n", tensors, from);
}

void TrainProgress::on_start(const RunInfo& r) {
  fmt::print(
      "moe train: {} parameters, {} layers × [{}], tokenizer {} (vocab {}), {} train / "
      "{} val tokens, {} threads\n  BLAS: {}\n",
      r.parameters, r.n_layers, r.ffn, r.tokenizer, r.vocab_size, r.train_tokens, r.val_tokens,
      r.threads, r.blas);
  if (r.first_step > 0) fmt::print("  resuming at step {}\n", r.first_step);
  std::fflush(stdout);
}

void TrainProgress::on_log(const LogLine& l) {
  if (tty_) {
    const int width = 30, done = int(width * l.step / l.steps);
    fmt::print("\r[{}{}] {}/{} loss {:.4f} lr {:.2e} |g| {:.2f} {:.0f} tok/s ETA {}   ",
               std::string(done, '='), std::string(width - done, ' '), l.step, l.steps, l.loss,
               l.lr, l.grad_norm, l.tokens_per_s, fmt_duration(l.eta_s));
    bar_open_ = true;
  } else {
    fmt::print("step {}/{} loss {:.4f} lr {:.2e} grad_norm {:.3f} tok/s {:.0f} elapsed {} ETA {}\n",
               l.step, l.steps, l.loss, l.lr, l.grad_norm, l.tokens_per_s,
               fmt_duration(l.elapsed_s), fmt_duration(l.eta_s));
  }
  std::fflush(stdout);
}

void TrainProgress::on_eval(int64_t step, const EvalResult& r) {
  fmt::print("{}step {} val loss {:.4f} val bpb {:.4f}\n", after_bar(), step, r.loss, r.bpb);
  std::fflush(stdout);
}

void TrainProgress::on_checkpoint(const CheckpointSaved& c) {
  if (c.kind != CheckpointKind::kFinal) return;  // periodic ones are silent; a stop has its line
  fmt::print("{}saved {}\n", after_bar(), c.path);
  std::fflush(stdout);
}

void TrainProgress::on_stop(const RunStopped& s) {
  fmt::print("{}{} at step {}: checkpoint saved to {} (continue with --resume {})\n", after_bar(),
             s.reason == StopReason::kTimeLimit ? "time limit reached" : "interrupted", s.step,
             s.checkpoint, s.checkpoint);
  std::fflush(stdout);
}

}  // namespace moe::cli
