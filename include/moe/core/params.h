// ParamStore: every trainable tensor of a model, registered by name and shape, then placed in
// one aligned arena for weights and one for gradients (same layout), so zeroing gradients is a
// single memset and the optimizer sees flat arrays. Names are the checkpoint's tensor names.
#pragma once
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "moe/core/arena.h"

namespace moe {

struct SparseRowRule;  // nn/adamw.h

enum class Init { kNormal, kOnes, kZeros, kUniform };

struct Param {
  std::string name;
  std::vector<int64_t> shape;
  std::size_t numel = 0;
  std::size_t offset = 0;  // in floats, into the weight and gradient arenas
  Init init = Init::kNormal;
  float scale = 0.02f;  // std for kNormal, bound for kUniform
  bool decay = true;    // weight decay applies
  bool is_embedding = false;
  bool trainable = true;  // false: state kept in checkpoints but never touched by the optimizer
                          // (e.g. the DeepSeek-V3 routing bias, updated by its own rule)
  float* w = nullptr;
  float* g = nullptr;
  // Row-sparse parameters (PEER's expert tables): only the rows a step touched get gradients.
  // The layer calls touch(row) for each row it will write; zero_grad() clears just those rows,
  // and the optimizer updates just those (lazy Adam with per-row step counts).
  bool sparse_rows = false;
  // Expert parallelism: this rank holds rows [shard_first, shard_first + shape[0]) of a tensor
  // whose first dimension is global_rows (0 = whole tensor). Checkpoints store the whole tensor
  // (gathered on save, sliced on load) and initialisation gives each element the value it has
  // in the whole tensor, so any number of ranks starts from the same model.
  int64_t global_rows = 0, shard_first = 0;
  bool sharded() const { return global_rows > 0; }
  std::vector<int64_t> global_shape() const {
    std::vector<int64_t> s = shape;
    if (sharded()) s[0] = global_rows;
    return s;
  }
  std::size_t row_numel() const { return shape.empty() ? 1 : numel / std::size_t(shape[0]); }
  int64_t row_len = 0;                // floats per row (shape[1])
  std::vector<int32_t> touched;       // rows touched since the last zero_grad(), unsorted
  std::vector<uint8_t> touched_mark;  // [rows] 1 if in `touched`
  // Set by AdamWOptimizer::prepare() for this step only: the layer updates each row with it as
  // soon as the row's gradient is complete, instead of accumulating into g (see SparseRowRule).
  SparseRowRule* row_rule = nullptr;
  void make_row_sparse();
  void touch(int32_t row) {
    if (!touched_mark[row]) {
      touched_mark[row] = 1;
      touched.push_back(row);
    }
  }
  // touch() for rows[0..n), without a branch per row: whether a row is new is as good as random
  // (PEER touches ~2.6·10^5 rows per table and step), and each mispredicted branch cost more
  // than the rest of the call.
  void touch_rows(const int32_t* rows, std::size_t n);
  // Forgets the touched rows (their gradient rows must already be zero).
  void clear_touched() {
    for (int32_t r : touched) touched_mark[r] = 0;
    touched.clear();
  }
};

class ParamStore {
 public:
  // Pointers stay valid for the store's lifetime (deque storage).
  // The next tensor starts on a cache line, unless contiguous_next: then it starts right after
  // this one, so tensors added that way form one matrix (e.g. w_gate and w_up of a SwiGLU FFN
  // are multiplied by one GEMM as a [2H, C] matrix while staying two tensors in checkpoints).
  Param* add(std::string name, std::vector<int64_t> shape, Init init, float scale, bool decay,
             bool contiguous_next = false);
  void allocate();                 // after all add(); fills w and g pointers
  void initialize(uint64_t seed);  // deterministic: parameter i uses Philox stream (init, i)
  void zero_grad();

  std::deque<Param>& all() { return params_; }
  const std::deque<Param>& all() const { return params_; }
  Param* find(const std::string& name);
  std::size_t numel() const { return total_; }
  float* weights() { return base_w_; }
  float* grads() { return base_g_; }
  bool allocated() const { return base_w_ != nullptr; }

 private:
  std::deque<Param> params_;
  std::size_t total_ = 0;
  Arena weights_, grads_;
  float* base_w_ = nullptr;
  float* base_g_ = nullptr;
};

}  // namespace moe
