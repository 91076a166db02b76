#include "moe/formats/model_file.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/core/json_util.h"
#include "moe/core/safetensors.h"
#include "moe/formats/gguf_model.h"
#include "moe/formats/hf_model.h"
#include "moe/formats/tensor_names.h"

namespace moe::formats {

WeightMatrix StoredTensor::matrix(int64_t e) const {
  MOE_CHECK(shape.size() == 2 || shape.size() == 3,
            "stored tensor of rank {}: expected a matrix or a stack of matrices", shape.size());
  const int64_t rows = shape[shape.size() - 2], cols = shape.back();
  const int64_t lead = shape.size() == 3 ? shape[0] : 1;
  MOE_CHECK(e >= 0 && e < lead, "stored tensor: matrix {} of {}", e, lead);
  const auto* base = static_cast<const uint8_t*>(parts.size() == 1 ? parts[0] : parts[e]);
  if (parts.size() == 1) base += std::size_t(e) * std::size_t(rows) * row_bytes;
  return {type, base, rows, cols, row_bytes};
}

std::optional<WType> wtype_of(DType d) {
  switch (d) {
    case DType::F32:
      return WType::kF32;
    case DType::F16:
      return WType::kF16;
    case DType::BF16:
      return WType::kBF16;
    default:
      return std::nullopt;
  }
}

namespace {

class MoeCheckpointReader final : public ModelReader {
 public:
  explicit MoeCheckpointReader(const std::string& path) : r_(path) {
    auto it = r_.metadata().find("format");
    MOE_CHECK(it != r_.metadata().end() && it->second == kCheckpointFormat,
              "{}: not a moe.cpp checkpoint (no __metadata__.format = \"{}\"), not a .gguf file "
              "and not a Hugging Face directory",
              path, kCheckpointFormat);
    const nlohmann::json j = parse_json(r_.meta("config"), path + ": __metadata__.config");
    MOE_CHECK(j.is_object(), "{}: __metadata__.config is not a JSON object", path);
    if (j.contains("model"))
      model_config_fields().parse(j["model"], cfg_, path + " (__metadata__.config)", "model");
    cfg_.resolve();
  }
  std::string format() const override { return "moe"; }
  std::string architecture() const override { return "moe"; }
  const std::string& path() const override { return r_.path(); }
  const ModelConfig& config() const override { return cfg_; }
  std::unique_ptr<data::Tokenizer> tokenizer() const override {
    return data::tokenizer_from_serialized(r_.meta("tokenizer.kind"), r_.meta("tokenizer.blob"));
  }
  std::vector<SourceTensor> tensors() const override {
    std::vector<SourceTensor> out;
    for (const std::string& n : r_.names()) {
      if (n.starts_with("optim.")) continue;
      const TensorInfo& t = r_.info(n);
      out.push_back({n, n, dtype_name(t.dtype), t.shape});
    }
    return out;
  }
  void read(const std::string& name, const std::vector<int64_t>& shape, float* dst) const override {
    r_.read_into(name, DType::F32, shape, dst);
  }
  std::optional<StoredTensor> stored(const std::string& name) const override {
    if (!r_.has(name)) return std::nullopt;
    const TensorInfo& t = r_.info(name);
    const std::optional<WType> w = wtype_of(t.dtype);
    if (!w || t.shape.empty()) return std::nullopt;
    return StoredTensor{*w, t.shape, {r_.raw(name)}, wtype_row_bytes(*w, t.shape.back())};
  }

 private:
  SafeTensorsReader r_;
  ModelConfig cfg_;
};

class RotateHalfView final : public ModelReader {
 public:
  explicit RotateHalfView(const ModelReader& src) : src_(src), cfg_(src.config()) {
    cfg_.rope_style = RopeStyle::kHalf;
    MOE_CHECK(cfg_.qk_norm != QkNorm::kRow,
              "{}: a whole-row QK-norm with interleaved RoPE has no rotate-half form", src.path());
  }
  std::string format() const override { return src_.format(); }
  std::string architecture() const override { return src_.architecture(); }
  const std::string& path() const override { return src_.path(); }
  const ModelConfig& config() const override { return cfg_; }
  std::unique_ptr<data::Tokenizer> tokenizer() const override { return src_.tokenizer(); }
  std::vector<SourceTensor> tensors() const override { return src_.tensors(); }
  void read(const std::string& name, const std::vector<int64_t>& shape, float* dst) const override {
    src_.read(name, shape, dst);
    permute_rope_param(name, shape, dst, cfg_.head_dim, /*to_interleaved=*/false);
  }
  std::optional<StoredTensor> stored(const std::string& name) const override {
    if (is_rope_param(name)) return std::nullopt;  // permuted on read
    return src_.stored(name);
  }

 private:
  const ModelReader& src_;
  ModelConfig cfg_;
};

}  // namespace

std::unique_ptr<ModelReader> as_rotate_half(const ModelReader& src) {
  return std::make_unique<RotateHalfView>(src);
}

std::unique_ptr<ModelReader> open_moe_checkpoint(const std::string& path) {
  return std::make_unique<MoeCheckpointReader>(path);
}

void load_weights(const ModelReader& r, Transformer& model) {
  for (Param& p : model.params().all()) {
    MOE_CHECK(!p.sharded(), "{}: loading into an expert-parallel model is not supported", r.path());
    r.read(p.name, p.shape, p.w);
  }
}

bool is_foreign_model(const std::string& path) {
  return path.ends_with(".gguf") || is_hf_model_dir(path);
}

std::unique_ptr<ModelReader> open_model(const std::string& path) {
  std::error_code ec;
  MOE_CHECK(std::filesystem::exists(path, ec), "{}: no such file or directory", path);
  if (std::filesystem::is_directory(path, ec)) return open_hf_model(path);
  if (path.ends_with(".gguf")) return open_gguf_model(path);
  return open_moe_checkpoint(path);
}

}  // namespace moe::formats
