// Model files from outside, seen through our names. A GGUF file, a Hugging Face directory
// (config.json + *.safetensors, sharded or not) or our own checkpoint opens as a ModelReader: the
// ModelConfig it implies, its tokenizer, and each of our parameters (checkpoint names, docs/
// FORMATS.md) read as f32 on demand from the file's own layout and dtype. Readers never hold a
// second copy of the weights: tensors are read (dequantized, transposed, stacked) one at a time
// from the mapped file into the caller's buffer.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/core/safetensors.h"
#include "moe/data/tokenizer.h"
#include "moe/kernels/qmatmul.h"
#include "moe/model/config.h"
#include "moe/model/transformer.h"

namespace moe::formats {

// The "format" tag in the __metadata__ of our own checkpoints (train/checkpoint.h writes it).
inline constexpr const char* kCheckpointFormat = "moe.cpp/1";

// Where one of our parameters comes from, for `moe inspect` (dtype as the file stores it).
struct SourceTensor {
  std::string our_name;
  std::string file_name;       // the name in the file (first of several when stacked)
  std::string dtype;           // "F32", "BF16", "Q8_0", …
  std::vector<int64_t> shape;  // our shape
  uint64_t file_bytes = 0;     // bytes in the file (0 = compute from dtype and shape)
};

// A parameter as the file stores it, readable in place (no copy): the inference engine's view of
// the large matrices. `parts` holds one pointer when the tensor is one contiguous row-major block
// of our shape, or shape[0] pointers (one [shape[1], shape[2]] matrix each) when the file keeps the
// leading index (an expert) in separate tensors. Rows are packed: row_bytes =
// wtype_row_bytes(type, shape.back()). Valid while the reader lives.
struct StoredTensor {
  WType type = WType::kF32;
  std::vector<int64_t> shape;  // ours
  std::vector<const void*> parts;
  std::size_t row_bytes = 0;
  // The [rows, cols] matrix of leading index e (e = 0 for a rank-2 tensor).
  WeightMatrix matrix(int64_t e = 0) const;
};

// The kernels' type for a safetensors dtype (F32, F16, BF16), else nullopt.
std::optional<WType> wtype_of(DType d);

class ModelReader {
 public:
  virtual ~ModelReader() = default;
  virtual std::string format() const = 0;        // "moe" | "gguf" | "hf"
  virtual std::string architecture() const = 0;  // "olmoe", "OlmoeForCausalLM", "moe", …
  virtual const std::string& path() const = 0;
  // The model this file holds, resolved (ModelConfig::resolve() done).
  virtual const ModelConfig& config() const = 0;
  // The file's own tokenizer, or nullptr when it carries none.
  virtual std::unique_ptr<data::Tokenizer> tokenizer() const = 0;
  // One entry per parameter of a Transformer built from config() (names and shapes as ours).
  virtual std::vector<SourceTensor> tensors() const = 0;
  // dst[0..numel(shape)) = our parameter `our_name` in f32. Errors name the file and its tensor
  // (missing, shape that disagrees with the metadata, unsupported dtype).
  virtual void read(const std::string& our_name, const std::vector<int64_t>& shape,
                    float* dst) const = 0;
  // `our_name` as stored, when the file holds it in one of the types the kernels read (f32, f16,
  // bf16, Q8_0, Q4_0, Q4_K, Q6_K) and in our layout (no transpose, permutation or interleave on the
  // way); otherwise nullopt, and read() is the way to get it.
  virtual std::optional<StoredTensor> stored(const std::string& our_name) const {
    (void)our_name;
    return std::nullopt;
  }
};

// Opens a model file by what it is: a directory (Hugging Face), a ".gguf" file, or our own
// safetensors checkpoint. Errors name the path.
std::unique_ptr<ModelReader> open_model(const std::string& path);
// Whether open_model would read path as a file from outside (a directory or a ".gguf" file).
bool is_foreign_model(const std::string& path);
// Our own checkpoint (moe.cpp safetensors) as a ModelReader.
std::unique_ptr<ModelReader> open_moe_checkpoint(const std::string& path);

// The same model with rotate-half RoPE: a model with interleaved RoPE (GGUF's llama/deepseek
// form) seen with its q/k rows (and biases) permuted within each head, which computes the same
// scores with rotate-half RoPE. What the Hugging Face classes need. src must outlive the view.
std::unique_ptr<ModelReader> as_rotate_half(const ModelReader& src);

// Fills every parameter of model from r (names and shapes must agree; a sharded expert-parallel
// model is refused). One tensor at a time, straight into the model's weights.
void load_weights(const ModelReader& r, Transformer& model);

}  // namespace moe::formats
