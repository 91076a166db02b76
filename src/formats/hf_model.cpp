// Hugging Face model directories: the reader (ModelReader over config.json + safetensors shards)
// and the writer. The config mapping is hf_config.cpp / hf_export.cpp, the tensor names
// hf_tensors.cpp.
#include "moe/formats/hf_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "hf_internal.h"
#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/half.h"
#include "moe/core/json_util.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf_tokenizer.h"

namespace moe::formats {

namespace fs = std::filesystem;
using json = nlohmann::json;
using hf::HfLayout;
using hf::HfTensor;

namespace {

constexpr const char* kIndex = "model.safetensors.index.json";
constexpr const char* kSingle = "model.safetensors";
// config.json and the index are a few kB to a few MB; anything far larger is not one.
constexpr uintmax_t kMaxJsonFile = 64u << 20;

json read_json_file(const std::string& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  MOE_CHECK(!ec, "{}: cannot read ({})", path, ec.message());
  MOE_CHECK(size <= kMaxJsonFile, "{}: {} bytes, more than the {} a JSON file here may have", path,
            size, kMaxJsonFile);
  return parse_json(read_file(path), path);
}

class HfReader : public ModelReader {
 public:
  explicit HfReader(const std::string& dir) : dir_(dir) {
    MOE_CHECK(fs::is_directory(dir),
              "{}: not a directory (a Hugging Face model is a directory "
              "with config.json and *.safetensors)",
              dir);
    const std::string config_path = file("config.json");
    MOE_CHECK(file_exists(config_path), "{}: no config.json (not a Hugging Face model directory)",
              dir);
    cfg_ = hf_config_to_model(read_json_file(config_path), config_path, &arch_);
    open_weights();
    check_size_against_files();
    map_ = hf::tensor_map(cfg_, arch_);
    hf::use_fused_experts(map_, [&](const std::string& n) { return where_.count(n) > 0; });
    check_tensors();
  }

  std::string format() const override { return "hf"; }
  std::string architecture() const override { return hf_arch_name(arch_); }
  const std::string& path() const override { return dir_; }
  const ModelConfig& config() const override { return cfg_; }
  // tokenizer.json beside the weights (data/vocab.h reads it as llama.cpp's converter does).
  std::unique_ptr<data::Tokenizer> tokenizer() const override {
    const std::string p = dir_ + "/tokenizer.json";
    if (!file_exists(p)) return nullptr;
    return tokenizer_for_vocab(data::vocab_from_hf_tokenizer_json(read_file(p), p), p);
  }

  std::vector<SourceTensor> tensors() const override {
    std::vector<SourceTensor> out;
    for (const HfTensor& t : map_) {
      const std::string& name = t.pieces[0].name;
      out.push_back({t.our_name, name, dtype_name(shard_of(name).info(name).dtype), t.our_shape});
    }
    return out;
  }

  // In place when each piece is a matrix of ours as stored: a copied tensor, a stack of per-expert
  // tensors, or one half of a fused gate_up tensor (expert e's half starts (2e + half)·n in).
  std::optional<StoredTensor> stored(const std::string& our_name) const override {
    auto it = by_ours_.find(our_name);
    if (it == by_ours_.end()) return std::nullopt;
    const HfTensor& t = map_[it->second];
    if (t.layout == HfLayout::kSharedDown || t.our_shape.size() < 2) return std::nullopt;
    const TensorInfo& first = shard_of(t.pieces[0].name).info(t.pieces[0].name);
    const std::optional<WType> w = wtype_of(first.dtype);
    if (!w) return std::nullopt;
    StoredTensor st{*w, t.our_shape, {}, wtype_row_bytes(*w, t.our_shape.back())};
    if (t.layout == HfLayout::kFusedHalf) {
      const int64_t n = t.our_shape[1] * t.our_shape[2];
      const auto* src =
          static_cast<const uint8_t*>(shard_of(t.pieces[0].name).raw(t.pieces[0].name));
      for (int64_t e = 0; e < t.our_shape[0]; ++e)
        st.parts.push_back(src + std::size_t((2 * e + t.half) * n) * dtype_size(first.dtype));
      return st;
    }
    for (const hf::HfPiece& p : t.pieces) {
      const SafeTensorsReader& r = shard_of(p.name);
      if (r.info(p.name).dtype != first.dtype) return std::nullopt;
      st.parts.push_back(r.raw(p.name));
    }
    // A stack needs one piece per leading index; a copy is one block of our shape.
    if (t.layout == HfLayout::kStack && int64_t(st.parts.size()) != t.our_shape[0])
      return std::nullopt;
    if (t.layout == HfLayout::kCopy && st.parts.size() != 1) return std::nullopt;
    return st;
  }

  void read(const std::string& our_name, const std::vector<int64_t>& shape,
            float* dst) const override {
    auto it = by_ours_.find(our_name);
    MOE_CHECK(it != by_ours_.end(),
              "{}: a {} model as config.json describes it has no "
              "parameter '{}'",
              dir_, architecture(), our_name);
    const HfTensor& t = map_[it->second];
    MOE_CHECK(shape == t.our_shape, "{}: parameter '{}' has shape {} here, asked for {}", dir_,
              our_name, shape_str(t.our_shape), shape_str(shape));
    if (t.layout == HfLayout::kSharedDown) return read_shared_down(t, dst);
    if (t.layout == HfLayout::kFusedHalf) return read_fused_half(t, dst);
    for (const hf::HfPiece& p : t.pieces) {
      shard_of(p.name).read_as_f32(p.name, p.shape, dst);
      dst += checked_numel(p.shape, p.name.c_str());
    }
  }

 private:
  std::string file(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  const SafeTensorsReader& shard_of(const std::string& hf_name) const {
    auto it = where_.find(hf_name);
    MOE_CHECK(it != where_.end(), "{}: tensor '{}' is missing", dir_, hf_name);
    return *it->second;
  }

  // Either the index and its shards (each mapped once) or model.safetensors.
  void open_weights() {
    const std::string index = file(kIndex);
    if (!file_exists(index)) {
      const std::string single = file(kSingle);
      MOE_CHECK(
          file_exists(single), "{}: neither {} nor {}{}", dir_, kSingle, kIndex,
          file_exists(file("pytorch_model.bin")) ? " (PyTorch .bin weights are not read)" : "");
      shards_.push_back(std::make_unique<SafeTensorsReader>(single));
      for (const std::string& n : shards_[0]->names()) where_[n] = shards_[0].get();
      return;
    }
    const json j = read_json_file(index);
    MOE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
              "{}: expected an object with a 'weight_map' object", index);
    std::map<std::string, const SafeTensorsReader*> by_file;
    for (auto& [name, v] : j["weight_map"].items()) {
      MOE_CHECK(v.is_string(), "{}: weight_map['{}'] = {}: expected a file name", index, name,
                json_excerpt(v));
      const std::string f = v.get<std::string>();
      // Shards sit beside the index: no paths, so an index cannot point anywhere else.
      MOE_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..",
                "{}: weight_map['{}'] = '{}': expected a file name in the same directory", index,
                name, f);
      auto [it, fresh] = by_file.emplace(f, nullptr);
      if (fresh) {
        MOE_CHECK(file_exists(file(f)),
                  "{}: weight_map['{}'] names shard '{}', which does not "
                  "exist",
                  index, name, f);
        shards_.push_back(std::make_unique<SafeTensorsReader>(file(f)));
        it->second = shards_.back().get();
      }
      MOE_CHECK(it->second->has(name),
                "{}: weight_map['{}'] names shard '{}', which does not "
                "hold that tensor",
                index, name, f);
      where_[name] = it->second;
    }
  }

  // A hostile config.json could describe 2^30 blocks of 2^30 experts; every block has at least
  // five tensors and every MoE block three per expert, so compare with what the files hold
  // before building the map.
  void check_size_against_files() const {
    const int64_t have = int64_t(where_.size());
    const auto experts_of = [](const FfnConfig& f) {
      return f.kind == FfnConfig::Kind::kMoe ? int64_t(f.moe.num_experts) : 0;
    };
    int64_t experts = experts_of(cfg_.ffn);
    for (const auto& [l, f] : cfg_.ffn_overrides) experts = std::max(experts, experts_of(f));
    MOE_CHECK(5 * int64_t(cfg_.n_layers) <= have && 3 * experts <= have,
              "{}: config.json describes {} blocks of up to {} experts, but the weight files "
              "hold only {} tensors",
              dir_, cfg_.n_layers, experts, have);
  }

  // Every tensor the config implies is present with its shape and a dtype we read, and nothing
  // else is there.
  void check_tensors() {
    std::set<std::string> used;
    for (std::size_t i = 0; i < map_.size(); ++i) {
      const HfTensor& t = map_[i];
      by_ours_[t.our_name] = i;
      for (const hf::HfPiece& p : t.pieces) {
        MOE_CHECK(where_.count(p.name),
                  "{}: tensor '{}' is missing (config.json implies it for "
                  "our '{}')",
                  dir_, p.name, t.our_name);
        const SafeTensorsReader& s = shard_of(p.name);
        const TensorInfo& info = s.info(p.name);
        MOE_CHECK(info.shape == p.shape,
                  "{}: tensor '{}' has shape {}, expected {} from "
                  "config.json",
                  s.path(), p.name, shape_str(info.shape), shape_str(p.shape));
        MOE_CHECK(info.dtype == DType::F32 || info.dtype == DType::BF16 || info.dtype == DType::F16,
                  "{}: tensor '{}' has dtype {}, expected F32, BF16 or F16", s.path(), p.name,
                  dtype_name(info.dtype));
        used.insert(p.name);
      }
    }
    // Tied checkpoints sometimes carry lm_head.weight anyway; the class ties it to the
    // embedding on load, so it computes nothing.
    if (cfg_.tie_embeddings) used.insert("lm_head.weight");
    for (const auto& [name, s] : where_)
      MOE_CHECK(used.count(name) || hf::ignorable_hf_tensor(name),
                "{}: tensor '{}' has no place in a {} model as config.json describes it", s->path(),
                name, architecture());
  }

  // Piece [C, S·Hs] → ours [S, C, Hs]: row c of the piece holds S runs of Hs.
  void read_shared_down(const HfTensor& t, float* dst) const {
    const hf::HfPiece& p = t.pieces[0];
    const SafeTensorsReader& s = shard_of(p.name);
    const TensorInfo& info = s.info(p.name);
    const int64_t S = t.our_shape[0], C = t.our_shape[1], Hs = t.our_shape[2];
    const auto* src = static_cast<const unsigned char*>(s.raw(p.name));
    const std::size_t es = dtype_size(info.dtype);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < S; ++k)
        convert_to_f32(info.dtype, src + std::size_t((c * S + k) * Hs) * es, dst + (k * C + c) * Hs,
                       std::size_t(Hs));
  }

  // Piece [E, 2H, C] → ours [E, H, C]: expert e's rows [half·H, (half+1)·H).
  void read_fused_half(const HfTensor& t, float* dst) const {
    const hf::HfPiece& p = t.pieces[0];
    const SafeTensorsReader& s = shard_of(p.name);
    const TensorInfo& info = s.info(p.name);
    const int64_t E = t.our_shape[0], n = t.our_shape[1] * t.our_shape[2];
    const auto* src = static_cast<const unsigned char*>(s.raw(p.name));
    const std::size_t es = dtype_size(info.dtype);
    for (int64_t e = 0; e < E; ++e)
      convert_to_f32(info.dtype, src + std::size_t((2 * e + t.half) * n) * es, dst + e * n,
                     std::size_t(n));
  }

  std::string dir_;
  HfArch arch_ = HfArch::kLlama;
  ModelConfig cfg_;
  std::vector<std::unique_ptr<SafeTensorsReader>> shards_;
  std::map<std::string, const SafeTensorsReader*> where_;  // HF tensor → its shard
  std::vector<HfTensor> map_;
  std::map<std::string, std::size_t> by_ours_;  // our name → index in map_
};

}  // namespace

std::unique_ptr<ModelReader> open_hf_model(const std::string& dir) {
  return std::make_unique<HfReader>(dir);
}

bool is_hf_model_dir(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::is_regular_file(fs::path(path) / "config.json", ec);
}

}  // namespace moe::formats
