// The engine's parts (src/infer only): how weights are taken from a model file, and the FFN of one
// block as the engine runs it.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "moe/formats/model_file.h"
#include "moe/kernels/qmatmul.h"
#include "moe/model/config.h"

namespace moe::infer::detail {

// Takes each parameter from the file: the large matrices in place (StoredTensor) when the file
// stores them in a type the kernels read, else as an f32 copy this loader owns (a Q4_K tensor, a
// permuted or interleaved layout); small vectors always as f32 copies.
class WeightLoader {
 public:
  explicit WeightLoader(const formats::ModelReader& r) : r_(r) {}
  const formats::ModelReader& reader() const { return r_; }
  std::vector<float> vec(const std::string& name, const std::vector<int64_t>& shape);
  WeightMatrix matrix(const std::string& name, int64_t rows, int64_t cols);
  // [E, rows, cols]: one matrix per leading index.
  std::vector<WeightMatrix> stack(const std::string& name, int64_t E, int64_t rows, int64_t cols);

  uint64_t stored_bytes = 0;  // read in place from the map
  uint64_t owned_bytes = 0;   // f32 copies (owned below, and the small vectors)
  std::deque<std::vector<float>> owned;

 private:
  WeightMatrix own(const std::string& name, const std::vector<int64_t>& shape, int64_t rows,
                   int64_t cols);
  const formats::ModelReader& r_;
};

inline uint64_t matrix_bytes(const WeightMatrix& w) { return uint64_t(w.rows) * w.row_bytes; }

// The FFN of one block at inference: y [n, C] (written) from x [n, C], n ≤ max_tokens.
class FfnBlock {
 public:
  virtual ~FfnBlock() = default;
  virtual void forward(float* y, const float* x, int n) = 0;
  // Bytes of weights one token reads (the k routed experts on average for MoE).
  virtual uint64_t active_bytes() const = 0;
};

// Dense and MoE FFNs run on the stored weights; a PEER FFN runs its own fp32 layer.
std::unique_ptr<FfnBlock> make_ffn_block(const ModelConfig& cfg, int layer, WeightLoader& w,
                                         int max_tokens);

}  // namespace moe::infer::detail
