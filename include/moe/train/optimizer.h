// AdamW over a whole ParamStore: moments in one arena with the store's layout, global-norm
// clipping, the warmup + cosine schedule. Row-sparse parameters (PEER's expert tables) get the
// lazy rule: only rows touched this step are updated, each with its own step count t_r for the
// bias corrections (so an untouched row's moments do not decay and the row stays bit-identical),
// at train.sparse_lr when set (a constant rate, as memory-layer practice uses) else the
// scheduled rate, without weight decay. Which tensors decay: matrices yes; norm weights never;
// the embedding only with train.decay_embeddings (a tied head shares the embedding's rule).
#pragma once
#include <cstdint>
#include <map>
#include <vector>

#include "moe/core/arena.h"
#include "moe/core/params.h"
#include "moe/dist/communicator.h"
#include "moe/nn/adamw.h"
#include "moe/train/train_config.h"

namespace moe {

struct OptimStats {
  double lr = 0;
  double grad_norm = 0;  // before clipping
};

class AdamWOptimizer {
 public:
  // `comm`: the ranks the parameters are trained over. Expert-parallel shards hold different
  // experts on each rank, so their part of the gradient norm is summed over `comm`; a store with
  // no shards (one process, or data parallel) needs no communicator: the first form.
  AdamWOptimizer(ParamStore& params, const TrainConfig& cfg);
  AdamWOptimizer(ParamStore& params, const TrainConfig& cfg, Communicator& comm);
  // Takes back any rule prepare() handed out and step() has not consumed (e.g. a step abandoned
  // on a non-finite loss), so no Param keeps a pointer into this optimizer.
  ~AdamWOptimizer();
  AdamWOptimizer(const AdamWOptimizer&) = delete;
  AdamWOptimizer& operator=(const AdamWOptimizer&) = delete;
  // Applies optimizer step `step` (0-based): schedule, clip, update. Gradients must be complete.
  // Trainable row-sparse tables leave it with their touched gradient rows zeroed and their
  // touched lists cleared (each row is zeroed while the update has it in cache, so the next
  // zero_grad() has nothing left to do for them).
  OptimStats step(int64_t step);
  // Before the backward of step `step`, when that one backward forms the whole gradient (no
  // accumulation over micro-batches, one process): gives each trainable row-sparse table its
  // rule for this step (Param::row_rule), so the layer updates each row as soon as it has the
  // row's gradient; step() then only checks that every touched row was updated, takes the
  // table's share of the gradient norm and clears the marks. Same bits as without prepare().
  // Does nothing with gradient clipping on: that needs the whole gradient's norm before any
  // update. Returns whether any table took a rule.
  bool prepare(int64_t step);
  float* m() { return m_; }
  float* v() { return v_; }
  // Per-row step counts of a row-sparse parameter (lazy Adam), or null for a dense one.
  int32_t* row_steps(const Param& p);
  void ensure_row_steps(const Param& p);
  std::size_t numel() const { return params_.numel(); }
  bool decays(const Param& p) const;

 private:
  AdamWHyper sparse_hyper(int64_t step) const;  // the row-sparse tables' rule at this step
  ParamStore& params_;
  Communicator& comm_;
  TrainConfig cfg_;
  Arena state_;
  float *m_ = nullptr, *v_ = nullptr;
  std::map<const Param*, std::vector<int32_t, HugePageAllocator<int32_t>>> row_steps_;
  std::map<const Param*, SparseRowRule> rules_;  // prepare()'s rules, by table
  BiasCorrections bias_;            // bias corrections by row step count, for both row-lazy paths
  std::vector<double> norm_parts_;  // per parameter Σg², reused every step
};

}  // namespace moe
