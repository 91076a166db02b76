#include "moe/train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "moe/core/error.h"
#include "moe/dist/communicator.h"
#include "moe/nn/adamw.h"

namespace moe {

AdamWOptimizer::AdamWOptimizer(ParamStore& params, const TrainConfig& cfg)
    : AdamWOptimizer(params, cfg, single_process_communicator()) {}

AdamWOptimizer::AdamWOptimizer(ParamStore& params, const TrainConfig& cfg, Communicator& comm)
    : params_(params),
      comm_(comm),
      cfg_(cfg),
      state_(2 * params.numel() * sizeof(float) + 2 * kAlign) {
  for (const Param& p : params.all())
    MOE_CHECK(!p.sharded() || comm.size() > 1,
              "optimizer: parameter {} is sharded over ranks (expert parallel), but the optimizer "
              "was given no communicator to sum its gradient norm over",
              p.name);
  m_ = state_.take<float>(params.numel());
  v_ = state_.take<float>(params.numel());
}

AdamWOptimizer::~AdamWOptimizer() {
  for (Param& p : params_.all()) {
    auto it = rules_.find(&p);
    if (it != rules_.end() && p.row_rule == &it->second) p.row_rule = nullptr;
  }
}

bool AdamWOptimizer::decays(const Param& p) const {
  if (p.is_embedding) return cfg_.decay_embeddings;
  return p.decay;
}

int32_t* AdamWOptimizer::row_steps(const Param& p) {
  auto it = row_steps_.find(&p);
  return it == row_steps_.end() ? nullptr : it->second.data();
}

void AdamWOptimizer::ensure_row_steps(const Param& p) {
  if (p.sparse_rows && !row_steps_.count(&p)) row_steps_[&p].assign(std::size_t(p.shape[0]), 0);
}

namespace {

// p.touched in ascending order. When a step touched a good part of the table (PEER at 2^20
// experts touches ~20% of the rows), one pass over the touched marks (1 byte per row) beats
// sorting ~10^5 indices; otherwise sort.
void sort_touched(Param& p) {
  std::vector<int32_t>& t = p.touched;
  const std::size_t rows = p.touched_mark.size();
  if (t.size() * 16 < rows) {
    std::sort(t.begin(), t.end());
    return;
  }
  std::size_t n = 0;
  for (std::size_t r = 0; r < rows; ++r)
    if (p.touched_mark[r]) t[n++] = int32_t(r);
  MOE_CHECK(n == t.size(), "internal: parameter '{}' lists {} touched rows but marks {}", p.name,
            t.size(), n);
}

}  // namespace

AdamWHyper AdamWOptimizer::sparse_hyper(int64_t s) const {
  const float lr = float(lr_schedule(s, cfg_.lr, cfg_.min_lr, cfg_.warmup_steps, cfg_.steps));
  return {cfg_.sparse_lr > 0 ? cfg_.sparse_lr : lr, cfg_.beta1, cfg_.beta2, cfg_.eps,
          cfg_.weight_decay};
}

bool AdamWOptimizer::prepare(int64_t s) {
  if (cfg_.grad_clip > 0) return false;
  bool any = false;
  for (Param& p : params_.all()) {
    if (!p.sparse_rows || !p.trainable || p.sharded()) continue;
    // A row's step count is at most the steps taken so far plus this one (after a resume, at
    // most the checkpoint's); a larger one would fall back to std::pow.
    bias_.cover(s + 1, cfg_.beta1, cfg_.beta2);
    ensure_row_steps(p);
    SparseRowRule& r = rules_[&p];
    r = SparseRowRule{};
    r.p = p.w;
    r.m = m_ + p.offset;
    r.v = v_ + p.offset;
    r.row_len = p.row_len;
    r.steps = row_steps_[&p].data();
    r.h = sparse_hyper(s);
    r.bias = &bias_;
    p.row_rule = &r;
    any = true;
  }
  return any;
}

OptimStats AdamWOptimizer::step(int64_t s) {
  OptimStats st;
  st.lr = lr_schedule(s, cfg_.lr, cfg_.min_lr, cfg_.warmup_steps, cfg_.steps);
  // Tables updated in the backward (prepare()): every touched row, and nothing else, must have
  // been updated; their norm share is the layer's.
  for (Param& p : params_.all())
    if (p.row_rule) {
      MOE_CHECK(p.row_rule->rows_done == p.touched.size(),
                "internal: parameter '{}': the backward updated {} rows of the {} it touched",
                p.name, p.row_rule->rows_done, p.touched.size());
    }
  // Row-sparse tables: visit touched rows in ascending order (a canonical order for the sums).
  for (Param& p : params_.all())
    if (p.sparse_rows && !p.row_rule) {
      sort_touched(p);
      ensure_row_steps(p);
    }
  // Global gradient norm, parameter by parameter in registration order. Expert-parallel shards
  // hold different experts on each rank: their part is summed over the ranks (every rank then
  // clips with the same norm). Without clipping the norm is only reported, so a trainable
  // row-sparse table's part comes out of its update pass below (each row's sum while the row is
  // in cache: one pass over ~10^5 scattered rows less, and the same value, as the per-row sums
  // and their order are those of sum_squares_rows).
  const bool defer = cfg_.grad_clip <= 0;
  auto& params = params_.all();
  std::vector<double>& part = norm_parts_;
  part.assign(params.size(), 0.0);
  double ss = 0, ss_sharded = 0;
  bool any_sharded = false;
  for (std::size_t i = 0; i < params.size(); ++i) {
    Param& p = params[i];
    if (p.sharded()) {
      any_sharded = true;
      ss_sharded += sum_squares(p.g, p.numel);
    } else if (!p.sparse_rows) {
      part[i] = sum_squares(p.g, p.numel);
    } else if (p.row_rule) {
      part[i] = p.row_rule->sum_sq;
    } else if (!(defer && p.trainable)) {
      part[i] = sum_squares_rows(p.g, p.row_len, p.touched.data(), p.touched.size());
    }
  }
  if (any_sharded) comm_.allreduce_sum(&ss_sharded, 1);
  auto total = [&] {
    double t = 0;
    for (double x : part) t += x;
    return t + ss_sharded;
  };
  if (!defer) ss = total();
  st.grad_norm = std::sqrt(ss);
  if (cfg_.grad_clip > 0) {
    // torch.nn.utils.clip_grad_norm_: coef = max/(norm + 1e-6), applied when < 1.
    const double coef = cfg_.grad_clip / (st.grad_norm + 1e-6);
    if (coef < 1) {
      const float c = float(coef);
      auto scale = [c](float* g, std::size_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
        for (std::size_t i = 0; i < n; ++i) g[i] *= c;
      };
      for (Param& p : params_.all()) {
        if (!p.sparse_rows) {
          scale(p.g, p.numel);
          continue;
        }
        // One parallel loop over the rows (not one per row: a nested OpenMP region per
        // ~256-float row costs more than the row).
        const int32_t* rows = p.touched.data();
        const std::size_t L = p.row_len;
        const auto nr = std::ptrdiff_t(p.touched.size());
#pragma omp parallel for schedule(static) if (nr > 64)
        for (std::ptrdiff_t i = 0; i < nr; ++i) {
          float* g = p.g + std::size_t(rows[i]) * L;
          for (std::size_t j = 0; j < L; ++j) g[j] *= c;
        }
      }
    }
  }
  const AdamWHyper h{float(st.lr), cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay};
  const AdamWHyper hs = sparse_hyper(s);
  for (std::size_t i = 0; i < params.size(); ++i) {
    Param& p = params[i];
    if (!p.trainable) continue;
    if (p.row_rule) {  // already updated, row by row, in the backward
      p.row_rule = nullptr;
      p.clear_touched();
      continue;
    }
    if (!p.sparse_rows) {
      adamw_update(p.w, m_ + p.offset, v_ + p.offset, p.g, p.numel, h, decays(p), s + 1);
      continue;
    }
    bias_.cover(s + 1, cfg_.beta1, cfg_.beta2);  // row step counts reach at most s + 1
    adamw_update_rows(p.w, m_ + p.offset, v_ + p.offset, p.g, p.row_len, p.touched.data(),
                      p.touched.size(), row_steps_[&p].data(), hs, &bias_,
                      defer ? &part[i] : nullptr);
    p.clear_touched();  // its gradient rows are zero again: nothing for zero_grad() to clear
  }
  if (defer) st.grad_norm = std::sqrt(total());
  return st;
}

}  // namespace moe
