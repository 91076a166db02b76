// AdamW (Loshchilov & Hutter), as torch.optim.AdamW computes it: decoupled weight decay
// p ← p − lr·wd·p, then the bias-corrected Adam step. Plus the learning-rate schedule
// (linear warmup, cosine decay to min_lr) and global-norm gradient clipping.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe {

struct AdamWHyper {
  float lr, beta1, beta2, eps, weight_decay;
};

// One tensor: p, m, v [n] updated in place; g [n] read. t is the 1-based step count.
void adamw_update(float* p, float* m, float* v, const float* g, std::size_t n, const AdamWHyper& h,
                  bool decay, int64_t t);

// Learning rate for optimizer step s (0-based): linear warmup over `warmup` steps to lr, then
// cosine decay to min_lr at step `total`.
double lr_schedule(int64_t s, double lr, double min_lr, int64_t warmup, int64_t total);

// Sum of squares in double, over n floats, in a fixed reduction order (deterministic).
double sum_squares(const float* g, std::size_t n);

// The same over rows[0..n_rows) of a row-major table with rows of row_len floats, added in that
// order (parallel over rows; the result does not depend on the thread count).
double sum_squares_rows(const float* g, std::size_t row_len, const int32_t* rows,
                        std::size_t n_rows);

// 1 − β1^t and 1 − β2^t for t = 0 .. size−1, kept across steps and grown as step counts grow:
// the row-lazy rule needs them for each row's own t, and two std::pow per 1 KiB row were ~2% of a
// PEER step at 2^20 experts.
struct BiasCorrections {
  std::vector<double> bc1, bc2;
  float b1 = 0, b2 = 0;
  void cover(int64_t t_max, float beta1, float beta2);  // entries up to t_max
};

// The row-lazy rule of row-sparse tables: adamw_update (no decay) on each listed row with that
// row's own step count, steps[r] incremented first, then the row's gradient zeroed. Rows must be
// distinct. bias (optional): the bias corrections by step count, for rows whose count it covers.
// With sum_sq, also *sum_sq = Σ g² over the rows before the update, exactly as
// sum_squares_rows returns it.
void adamw_update_rows(float* p, float* m, float* v, float* g, std::size_t row_len,
                       const int32_t* rows, std::size_t n_rows, int32_t* steps, const AdamWHyper& h,
                       const BiasCorrections* bias = nullptr, double* sum_sq = nullptr);

// The same rule handed to the layer that forms the rows' gradients, to apply to each row as soon
// as its gradient is complete (optimizer in backward): the gradient row then lives in the
// layer's scratch and never goes to memory. PEER's tables at 2^20 experts touch ~2·10^5 rows of
// 1 KiB per step; the separate pass had to write each gradient row, read it back and zero it.
// apply() does exactly what adamw_update_rows does to one row (same arithmetic, same bits).
struct SparseRowRule {
  float *p = nullptr, *m = nullptr, *v = nullptr;  // the table, its moments [rows, row_len]
  std::size_t row_len = 0;
  int32_t* steps = nullptr;  // [rows] per-row step counts
  AdamWHyper h{};
  const BiasCorrections* bias = nullptr;  // optional; rows with a step count beyond it use pow
  // Reported back by the layer: how many rows it updated, and Σ g² over them — each row's sum as
  // sum_squares_rows forms it, the rows added in ascending order — for the gradient norm.
  std::size_t rows_done = 0;
  double sum_sq = 0;
  // Updates row r with its complete gradient g [row_len] (steps[r] incremented first) and
  // returns the row's Σ g². Calls for distinct rows may run concurrently.
  double apply(int64_t r, const float* g) const;
};

}  // namespace moe
