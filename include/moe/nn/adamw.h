// AdamW (Loshchilov & Hutter), as torch.optim.AdamW computes it: decoupled weight decay
// p ← p − lr·wd·p, then the bias-corrected Adam step. Plus the learning-rate schedule
// (linear warmup, cosine decay to min_lr) and global-norm gradient clipping.
#pragma once
#include <cstddef>
#include <cstdint>

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

// The row-lazy rule of row-sparse tables: adamw_update (no decay) on each listed row with that
// row's own step count, steps[r] incremented first, then the row's gradient zeroed. Rows must be
// distinct. With sum_sq, also *sum_sq = Σ g² over the rows before the update, exactly as
// sum_squares_rows returns it.
void adamw_update_rows(float* p, float* m, float* v, float* g, std::size_t row_len,
                       const int32_t* rows, std::size_t n_rows, int32_t* steps, const AdamWHyper& h,
                       double* sum_sq = nullptr);

}  // namespace moe
