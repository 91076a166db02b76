// GgufWriter: GGUF v3, little-endian, alignment 32 (the default, so no general.alignment key),
// laid out as llama.cpp's gguf_write_to_buf does: header, metadata in insertion order, tensor
// infos with back-to-back offsets each padded to 32, zero padding, then the data.
#include <algorithm>
#include <cstring>

#include "gguf_internal.h"
#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/formats/gguf.h"

namespace moe::formats {
namespace {

constexpr uint64_t kAlign = 32;
constexpr std::size_t kMaxName = 64;  // GGML_MAX_NAME, counting the NUL ggml stores

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const std::size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

template <class T>
std::vector<uint8_t> scalar(T v) {
  std::vector<uint8_t> out;
  put(out, v);
  return out;
}

template <class T>
std::vector<uint8_t> array(GgufValueType elem, const std::vector<T>& v) {
  std::vector<uint8_t> out;
  put<uint32_t>(out, uint32_t(elem));
  put<uint64_t>(out, v.size());
  for (const T& x : v) put(out, x);
  return out;
}

uint64_t pad_to(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

void write_bytes(std::FILE* f, const void* p, std::size_t n, const std::string& path) {
  MOE_CHECK(std::fwrite(p, 1, n, f) == n, "{}: short write", path);
}

void write_zeros(std::FILE* f, uint64_t n, const std::string& path) {
  static const uint8_t kZeros[kAlign] = {};
  write_bytes(f, kZeros, std::size_t(n), path);
}

}  // namespace

void GgufWriter::add_kv(const std::string& key, GgufValueType type, std::vector<uint8_t> payload) {
  MOE_CHECK(!key.empty(), "GgufWriter: empty metadata key");
  MOE_CHECK(key != "general.alignment",
            "GgufWriter: metadata 'general.alignment' is fixed at 32 and cannot be set");
  for (const Kv& kv : kvs_)
    MOE_CHECK(kv.key != key, "GgufWriter: metadata key '{}' added twice", key);
  kvs_.push_back({key, type, std::move(payload)});
}

void GgufWriter::add_string(const std::string& key, const std::string& v) {
  std::vector<uint8_t> p;
  put_string(p, v);
  add_kv(key, GgufValueType::kString, std::move(p));
}
void GgufWriter::add_u8(const std::string& key, uint8_t v) {
  add_kv(key, GgufValueType::kU8, scalar(v));
}
void GgufWriter::add_i8(const std::string& key, int8_t v) {
  add_kv(key, GgufValueType::kI8, scalar(v));
}
void GgufWriter::add_u16(const std::string& key, uint16_t v) {
  add_kv(key, GgufValueType::kU16, scalar(v));
}
void GgufWriter::add_i16(const std::string& key, int16_t v) {
  add_kv(key, GgufValueType::kI16, scalar(v));
}
void GgufWriter::add_u32(const std::string& key, uint32_t v) {
  add_kv(key, GgufValueType::kU32, scalar(v));
}
void GgufWriter::add_i32(const std::string& key, int32_t v) {
  add_kv(key, GgufValueType::kI32, scalar(v));
}
void GgufWriter::add_u64(const std::string& key, uint64_t v) {
  add_kv(key, GgufValueType::kU64, scalar(v));
}
void GgufWriter::add_i64(const std::string& key, int64_t v) {
  add_kv(key, GgufValueType::kI64, scalar(v));
}
void GgufWriter::add_f32(const std::string& key, float v) {
  add_kv(key, GgufValueType::kF32, scalar(v));
}
void GgufWriter::add_f64(const std::string& key, double v) {
  add_kv(key, GgufValueType::kF64, scalar(v));
}
void GgufWriter::add_bool(const std::string& key, bool v) {
  add_kv(key, GgufValueType::kBool, scalar(uint8_t(v ? 1 : 0)));
}

void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& v) {
  std::vector<uint8_t> p;
  put<uint32_t>(p, uint32_t(GgufValueType::kString));
  put<uint64_t>(p, v.size());
  for (const std::string& s : v) put_string(p, s);
  add_kv(key, GgufValueType::kArray, std::move(p));
}
void GgufWriter::add_f32_array(const std::string& key, const std::vector<float>& v) {
  add_kv(key, GgufValueType::kArray, array(GgufValueType::kF32, v));
}
void GgufWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  add_kv(key, GgufValueType::kArray, array(GgufValueType::kI32, v));
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne,
                            std::function<void(uint8_t* dst)> fill) {
  MOE_CHECK(bool(fill), "GgufWriter: tensor '{}' has no fill function", name);
  MOE_CHECK(name.size() < kMaxName, "GgufWriter: tensor name '{}' is {} bytes, expected at most {}",
            name, name.size(), kMaxName - 1);
  for (const Pending& t : tensors_)
    MOE_CHECK(t.name != name, "GgufWriter: tensor '{}' added twice", name);
  const std::optional<GgmlBlock> block = ggml_block(type);
  MOE_CHECK(block.has_value(), "GgufWriter: tensor '{}' has unknown ggml type {}", name,
            uint32_t(type));
  MOE_CHECK(!ne.empty() && ne.size() <= 4, "GgufWriter: tensor '{}' has {} dims, expected 1 to 4",
            name, ne.size());
  const int64_t numel = checked_numel(ne, "GgufWriter: tensor elements");
  MOE_CHECK(ne[0] % block->elements == 0,
            "GgufWriter: tensor '{}' of type {} has ne[0] = {}, expected a multiple of {}", name,
            ggml_type_name(type), ne[0], block->elements);
  ggml_nbytes(type, numel);  // checks the byte count fits
  tensors_.push_back({name, type, ne, std::move(fill)});
}

void GgufWriter::write(const std::string& path) const {
  std::vector<uint8_t> head;
  put<uint32_t>(head, 0x46554747u);  // "GGUF" in little-endian byte order
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kvs_.size());
  for (const Kv& kv : kvs_) {
    put_string(head, kv.key);
    put<uint32_t>(head, uint32_t(kv.type));
    head.insert(head.end(), kv.payload.begin(), kv.payload.end());
  }
  std::vector<uint64_t> nbytes;
  uint64_t offset = 0;
  for (const Pending& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<int64_t>(head, d);
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, offset);
    nbytes.push_back(ggml_nbytes(t.type, checked_numel(t.ne, "GgufWriter: tensor elements")));
    offset = pad_to(offset + nbytes.back());
  }
  head.resize(pad_to(head.size()), 0);
  const uint64_t largest = nbytes.empty() ? 0 : *std::max_element(nbytes.begin(), nbytes.end());
  write_file_atomic(path, [&](std::FILE* f) {
    write_bytes(f, head.data(), head.size(), path);
    std::vector<uint8_t> buf;  // one tensor at a time, reused
    buf.reserve(std::size_t(largest));
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      buf.assign(std::size_t(nbytes[i]), 0);
      tensors_[i].fill(buf.data());
      write_bytes(f, buf.data(), buf.size(), path);
      write_zeros(f, pad_to(nbytes[i]) - nbytes[i], path);
    }
  });
}

}  // namespace moe::formats
