#include "moe/core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/half.h"
#include "moe/core/json_util.h"

namespace moe {

using json = nlohmann::json;

// The format caps the header at 100 MB; anything larger is a foreign or corrupt file.
static constexpr uint64_t kMaxHeader = 100u << 20;

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::BF16:
      return "BF16";
    case DType::U8:
      return "U8";
    case DType::F16:
      return "F16";
  }
  return "?";
}

std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::BF16:
    case DType::F16:
      return 2;
    case DType::U8:
      return 1;
  }
  return 0;
}

static bool parse_dtype(const std::string& s, DType* out) {
  for (DType d :
       {DType::F32, DType::F64, DType::I32, DType::I64, DType::BF16, DType::U8, DType::F16})
    if (s == dtype_name(d)) {
      *out = d;
      return true;
    }
  return false;
}

int64_t TensorInfo::numel() const { return checked_numel(shape, "tensor shape"); }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafeTensorsReader::SafeTensorsReader(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  MOE_CHECK(fd >= 0, "{}: cannot open checkpoint ({})", path, std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    MOE_FAIL("{}: not a safetensors file: {} bytes, expected at least 8 (header length)", path,
             size);
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  MOE_CHECK(m != MAP_FAILED, "{}: mmap failed ({})", path, std::strerror(errno));
  map_ = static_cast<const unsigned char*>(m);
  size_ = size;
  try {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | map_[i];
    MOE_CHECK(n <= kMaxHeader && n <= size - 8,
              "{}: not a safetensors file or truncated: header length {} but file has {} bytes",
              path, n, size);
    const json h =
        parse_json(std::string_view(reinterpret_cast<const char*>(map_ + 8), std::size_t(n)),
                   path + ": safetensors header");
    MOE_CHECK(h.is_object(), "{}: safetensors header must be a JSON object", path);
    data_ = map_ + 8 + n;
    const size_t data_size = size - 8 - n;
    std::vector<std::pair<size_t, size_t>> ranges;
    for (auto& [name, v] : h.items()) {
      if (name == "__metadata__") {
        MOE_CHECK(v.is_object(), "{}: __metadata__ must be an object", path);
        for (auto& [k, val] : v.items()) {
          MOE_CHECK(val.is_string(), "{}: __metadata__.{} must be a string", path, k);
          metadata_[k] = val.get<std::string>();
        }
        continue;
      }
      MOE_CHECK(
          v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
          "{}: tensor '{}' needs dtype, shape and data_offsets", path, name);
      TensorInfo t;
      MOE_CHECK(v["dtype"].is_string() && parse_dtype(v["dtype"].get<std::string>(), &t.dtype),
                "{}: tensor '{}': unsupported dtype {}", path, name, json_excerpt(v["dtype"]));
      MOE_CHECK(v["shape"].is_array(), "{}: tensor '{}': shape must be an array", path, name);
      for (auto& s : v["shape"]) {
        MOE_CHECK(s.is_number_integer() && s.get<int64_t>() >= 0,
                  "{}: tensor '{}': bad shape entry {}", path, name, json_excerpt(s));
        t.shape.push_back(s.get<int64_t>());
      }
      auto& off = v["data_offsets"];
      MOE_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                    off[1].is_number_unsigned(),
                "{}: tensor '{}': data_offsets must be [begin, end]", path, name);
      t.begin = off[0].get<size_t>();
      t.end = off[1].get<size_t>();
      MOE_CHECK(t.begin <= t.end && t.end <= data_size,
                "{}: truncated or corrupt: tensor '{}' spans bytes [{}, {}) but the data section "
                "has {} bytes",
                path, name, t.begin, t.end, data_size);
      // Checked products: a shape like [2^32, 2^32] must not wrap around to a small size.
      const std::string what =
          fmt::format("{}: tensor '{}': shape {}", path, name, shape_str(t.shape));
      const int64_t bytes = checked_mul(checked_numel(t.shape, what.c_str()),
                                        int64_t(dtype_size(t.dtype)), what.c_str());
      MOE_CHECK(t.end - t.begin == size_t(bytes),
                "{}: tensor '{}': {} bytes for shape {} of {}, expected {}", path, name,
                t.end - t.begin, shape_str(t.shape), dtype_name(t.dtype), bytes);
      ranges.push_back({t.begin, t.end});
      tensors_.emplace(name, std::move(t));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      MOE_CHECK(ranges[i].first >= ranges[i - 1].second, "{}: tensors overlap in the data section",
                path);
  } catch (...) {
    ::munmap(const_cast<unsigned char*>(map_), size_);
    map_ = nullptr;
    throw;
  }
}

SafeTensorsReader::~SafeTensorsReader() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), size_);
}

const TensorInfo& SafeTensorsReader::info(const std::string& name) const {
  auto it = tensors_.find(name);
  MOE_CHECK(it != tensors_.end(), "{}: tensor '{}' not found", path_, name);
  return it->second;
}

std::vector<std::string> SafeTensorsReader::names() const {
  std::vector<std::string> v;
  for (auto& [k, _] : tensors_) v.push_back(k);
  return v;
}

const std::string& SafeTensorsReader::meta(const std::string& key) const {
  auto it = metadata_.find(key);
  MOE_CHECK(it != metadata_.end(), "{}: __metadata__ has no key '{}'", path_, key);
  return it->second;
}

const void* SafeTensorsReader::raw(const std::string& name) const {
  return data_ + info(name).begin;
}

void SafeTensorsReader::read_into(const std::string& name, DType dtype,
                                  const std::vector<int64_t>& shape, void* dst) const {
  const TensorInfo& t = info(name);
  MOE_CHECK(t.dtype == dtype, "{}: tensor '{}' has dtype {}, expected {}", path_, name,
            dtype_name(t.dtype), dtype_name(dtype));
  MOE_CHECK(t.shape == shape, "{}: tensor '{}' has shape {}, expected {}", path_, name,
            shape_str(t.shape), shape_str(shape));
  std::memcpy(dst, data_ + t.begin, t.end - t.begin);
}

void convert_to_f32(DType d, const void* src, float* dst, std::size_t n) {
  if (d == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  MOE_CHECK(d == DType::BF16 || d == DType::F16, "cannot convert dtype {} to F32", dtype_name(d));
  // Byte-wise little-endian loads: the data section need not be 2-aligned in a foreign file.
  const unsigned char* b = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < n; ++i) {
    const uint16_t h = uint16_t(b[2 * i] | (b[2 * i + 1] << 8));
    dst[i] = d == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

void SafeTensorsReader::read_as_f32(const std::string& name, const std::vector<int64_t>& shape,
                                    float* dst) const {
  const TensorInfo& t = info(name);
  MOE_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
            "{}: tensor '{}' has dtype {}, expected F32, BF16 or F16", path_, name,
            dtype_name(t.dtype));
  MOE_CHECK(t.shape == shape, "{}: tensor '{}' has shape {}, expected {}", path_, name,
            shape_str(t.shape), shape_str(shape));
  convert_to_f32(t.dtype, data_ + t.begin, dst, std::size_t(t.numel()));
}

template <typename T>
static std::vector<T> read_as(const SafeTensorsReader& r, const std::string& name, DType d,
                              std::vector<int64_t>* shape) {
  const TensorInfo& t = r.info(name);
  std::vector<T> out(size_t(t.numel()));
  r.read_into(name, d, t.shape, out.data());
  if (shape) *shape = t.shape;
  return out;
}

std::vector<float> SafeTensorsReader::read_f32(const std::string& n,
                                               std::vector<int64_t>* s) const {
  return read_as<float>(*this, n, DType::F32, s);
}
std::vector<double> SafeTensorsReader::read_f64(const std::string& n,
                                                std::vector<int64_t>* s) const {
  return read_as<double>(*this, n, DType::F64, s);
}
std::vector<int32_t> SafeTensorsReader::read_i32(const std::string& n,
                                                 std::vector<int64_t>* s) const {
  return read_as<int32_t>(*this, n, DType::I32, s);
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  size_t off = 0;
  for (const TensorRef& t : tensors) {
    MOE_CHECK(t.name != "__metadata__" && !h.contains(t.name),
              "{}: duplicate or reserved tensor name '{}'", path, t.name);
    const size_t bytes = size_t(checked_mul(checked_numel(t.shape, t.name.c_str()),
                                            int64_t(dtype_size(t.dtype)), t.name.c_str()));
    h[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  write_file_atomic(path, [&](std::FILE* f) {
    unsigned char len[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = (unsigned char)(n >> (8 * i));
    MOE_CHECK(std::fwrite(len, 1, 8, f) == 8, "{}: short write", path);
    MOE_CHECK(std::fwrite(header.data(), 1, header.size(), f) == header.size(), "{}: short write",
              path);
    for (const TensorRef& t : tensors) {
      const size_t bytes = size_t(checked_numel(t.shape, t.name.c_str())) * dtype_size(t.dtype);
      if (bytes)
        MOE_CHECK(std::fwrite(t.data, 1, bytes, f) == bytes, "{}: short write (disk full?)", path);
    }
  });
}

}  // namespace moe
