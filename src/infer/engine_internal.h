// The engine's parts (src/infer only): how weights are taken from a model file, and the FFN of one
// block as the engine runs it.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "moe/formats/model_file.h"
#include "moe/infer/engine.h"
#include "moe/kernels/qmatmul.h"
#include "moe/model/config.h"

namespace moe::infer::detail {

// One layer's KV cache: K and V [context, row] each (row = n_kv_heads · head_dim), row-major,
// as f32 or as bf16 bits (uint16_t) per `type`.
struct KvLayer {
  KvType type = KvType::kF32;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t row = 0;
};

// Attention of one query head over positions 0..len−1 of kv head kh:
//   s [len] (written, scratch) = softmax_j(scale · q · K_j),  o [hd] (written) = Σ_j s_j · V_j,
// with q [hd], K_j and V_j the hd elements of head kh at position j. f32 products and sums in a
// fixed order (the same bits for any thread count); a bf16 cache is widened to f32 exactly as it
// is read, so the result is the f32 computation on the stored (rounded) K and V.
void attend_head(float* o, float* s, const float* q, const KvLayer& kv, int64_t kh, int64_t hd,
                 int64_t len, float scale);

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

// Scratch the FFN blocks share (they run one after another): each buffer grows to the largest
// request at construction and is never cleared, so only the rows a pass writes are touched (a
// decode step touches a few rows of buffers sized for a 512-token prefill).
class Buffer {
 public:
  void reserve(std::size_t n) {
    if (n > n_) {
      p_ = std::make_unique_for_overwrite<float[]>(n);
      n_ = n;
    }
  }
  float* data() { return p_.get(); }
  std::size_t size() const { return n_; }

 private:
  std::unique_ptr<float[]> p_;
  std::size_t n_ = 0;
};

struct FfnScratch {
  Buffer xg, g, u, ye, sy, tmp;
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
                                         int max_tokens, FfnScratch& scratch);

}  // namespace moe::infer::detail
