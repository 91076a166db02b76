// Writing a Hugging Face model directory: the shards are streamed tensor by tensor (one of our
// tensors in memory at a time), each file written atomically; config.json comes last, so an
// interrupted export into a fresh directory leaves no directory that looks complete (one into
// an existing model directory may leave a mix of old and new files).
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>

#include "hf_internal.h"
#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/half.h"
#include "moe/formats/hf_model.h"

namespace moe::formats {

namespace fs = std::filesystem;
using json = nlohmann::json;
using hf::HfLayout;
using hf::HfTensor;

namespace {

// One HF tensor of the output: piece `piece` of `t`.
struct OutTensor {
  const HfTensor* t;
  std::size_t piece;
  int64_t numel;
  uint64_t bytes;
};

// Our tensors, fetched one at a time: consecutive pieces of one tensor (the experts) share it.
class OurTensors {
 public:
  explicit OurTensors(const ParamSource& src) : src_(src) {}
  const float* get(const HfTensor& t) {
    if (name_ != t.our_name) {
      name_.clear();
      data_.assign(std::size_t(checked_numel(t.our_shape, t.our_name.c_str())), 0.f);
      src_(t.our_name, t.our_shape, data_.data());
      name_ = t.our_name;
    }
    return data_.data();
  }

 private:
  const ParamSource& src_;
  std::string name_;
  std::vector<float> data_;
};

// The f32 values of output tensor o in HF order; `scratch` holds them when they must be
// rearranged.
const float* hf_values(const OutTensor& o, OurTensors& ours, std::vector<float>& scratch) {
  const float* w = ours.get(*o.t);
  switch (o.t->layout) {
    case HfLayout::kCopy:
      return w;
    case HfLayout::kStack:
      return w + int64_t(o.piece) * o.numel;
    case HfLayout::kSharedDown: {
      // ours [S, C, Hs] → piece [C, S·Hs]
      const int64_t S = o.t->our_shape[0], C = o.t->our_shape[1], Hs = o.t->our_shape[2];
      scratch.resize(std::size_t(o.numel));
      for (int64_t c = 0; c < C; ++c)
        for (int64_t k = 0; k < S; ++k)
          std::memcpy(&scratch[(c * S + k) * Hs], w + (k * C + c) * Hs, Hs * sizeof(float));
      return scratch.data();
    }
    case HfLayout::kFusedHalf:
      MOE_FAIL("{}: fused expert tensors are read, never written", o.t->our_name);
  }
  return w;
}

void write_values(std::FILE* f, const float* v, int64_t n, DType dtype, const std::string& path) {
  if (dtype == DType::F32) {
    MOE_CHECK(std::fwrite(v, sizeof(float), n, f) == std::size_t(n), "{}: short write (disk full?)",
              path);
    return;
  }
  constexpr int64_t kChunk = 1 << 16;
  std::vector<unsigned char> buf(2 * kChunk);
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t m = std::min(kChunk, n - i);
    for (int64_t j = 0; j < m; ++j) {
      const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v[i + j]) : f32_to_f16(v[i + j]);
      buf[2 * j] = uint8_t(h & 0xff);  // little-endian
      buf[2 * j + 1] = uint8_t(h >> 8);
    }
    MOE_CHECK(std::fwrite(buf.data(), 1, 2 * m, f) == std::size_t(2 * m),
              "{}: short write (disk full?)", path);
  }
}

void write_shard(const std::string& path, const std::vector<OutTensor>& outs, DType dtype,
                 OurTensors& ours) {
  json h = json::object();
  uint64_t off = 0;
  for (const OutTensor& o : outs) {
    const hf::HfPiece& p = o.t->pieces[o.piece];
    h[p.name] = {
        {"dtype", dtype_name(dtype)}, {"shape", p.shape}, {"data_offsets", {off, off + o.bytes}}};
    off += o.bytes;
  }
  h["__metadata__"] = {{"format", "pt"}};  // what transformers' save_pretrained writes
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::vector<float> scratch;
  write_file_atomic(path, [&](std::FILE* f) {
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = (unsigned char)(uint64_t(header.size()) >> (8 * i));
    MOE_CHECK(std::fwrite(len, 1, 8, f) == 8 &&
                  std::fwrite(header.data(), 1, header.size(), f) == header.size(),
              "{}: short write", path);
    for (const OutTensor& o : outs)
      write_values(f, hf_values(o, ours, scratch), o.numel, dtype, path);
  });
}

// Greedy: a new shard starts when the next tensor would pass shard_bytes.
std::vector<std::vector<OutTensor>> plan_shards(const std::vector<HfTensor>& map, DType dtype,
                                                uint64_t shard_bytes) {
  std::vector<std::vector<OutTensor>> shards(1);
  uint64_t in_shard = 0;
  for (const HfTensor& t : map)
    for (std::size_t i = 0; i < t.pieces.size(); ++i) {
      const int64_t n = checked_numel(t.pieces[i].shape, t.pieces[i].name.c_str());
      const uint64_t bytes = uint64_t(checked_mul(n, int64_t(dtype_size(dtype)), "tensor bytes"));
      if (shard_bytes > 0 && in_shard > 0 && in_shard + bytes > shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back({&t, i, n, bytes});
      in_shard += bytes;
    }
  return shards;
}

}  // namespace

void write_hf_model(const ModelConfig& cfg, const ParamSource& params, const std::string& dir,
                    const HfWriteOptions& opt) {
  MOE_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::BF16 || opt.dtype == DType::F16,
            "{}: Hugging Face export writes F32, BF16 or F16, not {}", dir, dtype_name(opt.dtype));
  const HfArch arch = hf_arch_for(cfg);
  const json config = hf_config_from_model(cfg, arch, opt.dtype);
  const std::vector<HfTensor> map = hf::tensor_map(cfg, arch);
  const auto shards = plan_shards(map, opt.dtype, opt.shard_bytes);
  make_dirs(dir);
  OurTensors ours(params);
  const auto path = [&](const std::string& name) { return (fs::path(dir) / name).string(); };
  if (shards.size() == 1) {
    write_shard(path("model.safetensors"), shards[0], opt.dtype, ours);
  } else {
    json weight_map = json::object();
    uint64_t total = 0;
    for (std::size_t s = 0; s < shards.size(); ++s) {
      const std::string name =
          fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
      write_shard(path(name), shards[s], opt.dtype, ours);
      for (const OutTensor& o : shards[s]) {
        weight_map[o.t->pieces[o.piece].name] = name;
        total += o.bytes;
      }
    }
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(path("model.safetensors.index.json"), index.dump(2) + "\n");
  }
  // A reader prefers the index: a stale one beside the fresh single file (or a stale single
  // file beside the fresh index) must not survive. Removed only now, so until the new weights
  // are complete the old ones stay readable.
  std::error_code ec;
  fs::remove(path(shards.size() == 1 ? "model.safetensors.index.json" : "model.safetensors"), ec);
  write_file_atomic(path("config.json"), config.dump(2) + "\n");
}

void write_hf_model(const ModelConfig& cfg, const ParamStore& params, const std::string& dir,
                    const HfWriteOptions& opt) {
  std::map<std::string, const Param*> by_name;
  for (const Param& p : params.all()) by_name[p.name] = &p;
  write_hf_model(
      cfg,
      [&](const std::string& name, const std::vector<int64_t>& shape, float* dst) {
        auto it = by_name.find(name);
        MOE_CHECK(it != by_name.end(), "Hugging Face export: the model has no parameter '{}'",
                  name);
        const Param& p = *it->second;
        MOE_CHECK(!p.sharded(),
                  "Hugging Face export: parameter '{}' is an expert-parallel shard; "
                  "export from a whole model (one rank or a checkpoint)",
                  name);
        MOE_CHECK(p.shape == shape && p.w,
                  "Hugging Face export: parameter '{}' has shape {}, "
                  "expected {}",
                  name, shape_str(p.shape), shape_str(shape));
        std::memcpy(dst, p.w, p.numel * sizeof(float));
      },
      dir, opt);
}

void write_hf_model(const ModelReader& src, const std::string& dir, const HfWriteOptions& opt) {
  write_hf_model(
      src.config(),
      [&](const std::string& name, const std::vector<int64_t>& shape, float* dst) {
        src.read(name, shape, dst);
      },
      dir, opt);
}

}  // namespace moe::formats
