// How `moe train` shows a run on stdout (the trainer reports to a TrainObserver and prints
// nothing itself): on a terminal one progress bar redrawn in place, otherwise one plain line per
// log, so a log file reads line by line; evaluations, the stop and the final checkpoint get a line
// of their own either way.
#pragma once
#include "moe/train/observer.h"

namespace moe::cli {

class TrainProgress final : public TrainObserver {
 public:
  explicit TrainProgress(bool tty) : tty_(tty) {}
  // Ends a bar left open (a run that failed mid-line), so the error starts a line of its own.
  ~TrainProgress() override;
  void on_upcycle(int tensors, const std::string& from) override;
  void on_start(const RunInfo& info) override;
  void on_log(const LogLine& line) override;
  void on_eval(int64_t step, const EvalResult& result) override;
  void on_checkpoint(const CheckpointSaved& saved) override;
  void on_stop(const RunStopped& stopped) override;

 private:
  // On a terminal a line after the bar starts with a newline (the bar has none of its own).
  const char* after_bar();

  bool tty_;
  bool bar_open_ = false;  // the cursor stands at the end of a progress bar
};

// `moe train`'s stop request: SIGINT (Ctrl-C) and SIGTERM set it, and the trainer, asking after
// every step, saves last.safetensors and stops. A second signal ends the process at once.
void install_stop_handlers();
bool stop_requested();

}  // namespace moe::cli
