#include "moe/core/params.h"

#include <cstring>

#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"

namespace moe {

Param* ParamStore::add(std::string name, std::vector<int64_t> shape, Init init, float scale,
                       bool decay, bool contiguous_next) {
  MOE_CHECK(base_w_ == nullptr, "ParamStore::add('{}') after allocate()", name);
  MOE_CHECK(find(name) == nullptr, "duplicate parameter name '{}'", name);
  Param p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  // Shapes come from configs and checkpoints: a wrapped product would allocate too little.
  p.numel = std::size_t(checked_numel(p.shape, p.name.c_str()));
  p.init = init;
  p.scale = scale;
  p.decay = decay;
  // Tensors start on a cache line (16 floats) unless the previous one asked to be contiguous.
  // Padding stays zero in the gradient arena, so flat passes (norms) see only real entries.
  p.offset = total_;
  const int64_t padded = contiguous_next
                             ? int64_t(p.numel)
                             : checked_add(int64_t(p.numel), 15, p.name.c_str()) / 16 * 16;
  total_ = std::size_t(checked_add(int64_t(total_), padded, "parameter count"));
  params_.push_back(std::move(p));
  return &params_.back();
}

Param* ParamStore::find(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

void ParamStore::allocate() {
  checked_mul(int64_t(total_), int64_t(sizeof(float)), "parameter bytes");
  weights_ = Arena(total_ * sizeof(float));
  grads_ = Arena(total_ * sizeof(float));
  base_w_ = weights_.take<float>(total_);
  base_g_ = grads_.take<float>(total_);
  for (auto& p : params_) {
    p.w = base_w_ + p.offset;
    p.g = base_g_ + p.offset;
  }
}

void ParamStore::initialize(uint64_t seed) {
  MOE_CHECK(base_w_ != nullptr, "ParamStore::initialize before allocate()");
  uint32_t index = 0;
  for (auto& p : params_) {
    const Rng rng(seed, stream_id(kPurposeInit, index++));
    // Element i is a function of (seed, parameter index, i) only, so the parallel loop gives
    // the same values as a serial one, for any thread count.
    const std::ptrdiff_t n = std::ptrdiff_t(p.numel);
    const uint64_t first = uint64_t(p.shard_first) * p.row_numel();  // a shard's place
#pragma omp parallel for schedule(static) if (n > 65536)
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      switch (p.init) {
        case Init::kNormal:
          p.w[i] = p.scale * rng.normal(first + i);
          break;
        case Init::kUniform:
          p.w[i] = p.scale * (2.f * rng.uniform(first + i) - 1.f);
          break;
        case Init::kOnes:
          p.w[i] = 1.f;
          break;
        case Init::kZeros:
          p.w[i] = 0.f;
          break;
      }
    }
  }
}

void Param::make_row_sparse() {
  MOE_CHECK(shape.size() == 2, "parameter '{}': row-sparse needs a matrix, got {} dims", name,
            shape.size());
  sparse_rows = true;
  row_len = shape[1];
  touched_mark.assign(std::size_t(shape[0]), 0);
}

void Param::touch_rows(const int32_t* rows, std::size_t n) {
  std::size_t k = touched.size();
  touched.resize(k + n);
  int32_t* t = touched.data();
  uint8_t* mark = touched_mark.data();
  for (std::size_t i = 0; i < n; ++i) {
    const int32_t r = rows[i];
    t[k] = r;           // kept only if the row is new
    k += mark[r] ^ 1u;  // marks are 0 or 1
    mark[r] = 1;
  }
  touched.resize(k);
}

void ParamStore::zero_grad() {
  if (!base_g_) return;
  // Dense tensors: one memset over each contiguous run of them; row-sparse ones: just the rows
  // the last step touched (the rest are still zero), so a million-row table costs nothing here.
  std::size_t run_start = 0;
  for (auto& p : params_) {
    if (!p.sparse_rows) continue;
    std::memset(base_g_ + run_start, 0, (p.offset - run_start) * sizeof(float));
    for (int32_t r : p.touched)
      std::memset(p.g + std::size_t(r) * p.row_len, 0, p.row_len * sizeof(float));
    p.clear_touched();
    run_start = p.offset + (p.numel + 15) / 16 * 16;
    if (run_start > total_) run_start = total_;
  }
  std::memset(base_g_ + run_start, 0, (total_ - run_start) * sizeof(float));
}

}  // namespace moe
