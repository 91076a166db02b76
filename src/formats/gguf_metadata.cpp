// GgufFile's typed metadata getters. Values were bounds-checked by the parser; here they are only
// decoded from the map and checked for kind (integer, float, string, bool) and range.
#include <cstring>

#include "gguf_internal.h"
#include "moe/core/error.h"
#include "moe/formats/gguf.h"

namespace moe::formats {
namespace detail {

const char* gguf_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
      return "u8";
    case GgufValueType::kI8:
      return "i8";
    case GgufValueType::kU16:
      return "u16";
    case GgufValueType::kI16:
      return "i16";
    case GgufValueType::kU32:
      return "u32";
    case GgufValueType::kI32:
      return "i32";
    case GgufValueType::kF32:
      return "f32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kU64:
      return "u64";
    case GgufValueType::kI64:
      return "i64";
    case GgufValueType::kF64:
      return "f64";
  }
  return "unknown";
}

uint64_t gguf_scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    default:
      return 0;
  }
}

std::string gguf_kind_name(const GgufKv& kv) {
  if (kv.type == GgufValueType::kArray)
    return fmt::format("an array of {}", gguf_type_name(kv.elem_type));
  const char* n = gguf_type_name(kv.type);
  return fmt::format("{} {}", n[0] == 'i' || n[0] == 'f' ? "an" : "a", n);
}

}  // namespace detail

namespace {

using detail::GgufKv;

bool is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kU16:
    case GgufValueType::kI16:
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kU64:
    case GgufValueType::kI64:
      return true;
    default:
      return false;
  }
}
bool is_float(GgufValueType t) { return t == GgufValueType::kF32 || t == GgufValueType::kF64; }

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// The integer at p of type t (one of the integer types) as int64; a u64 above INT64_MAX is refused.
int64_t load_int(const std::string& path, std::string_view key, GgufValueType t, const uint8_t* p) {
  switch (t) {
    case GgufValueType::kU8:
      return load<uint8_t>(p);
    case GgufValueType::kI8:
      return load<int8_t>(p);
    case GgufValueType::kU16:
      return load<uint16_t>(p);
    case GgufValueType::kI16:
      return load<int16_t>(p);
    case GgufValueType::kU32:
      return load<uint32_t>(p);
    case GgufValueType::kI32:
      return load<int32_t>(p);
    case GgufValueType::kI64:
      return load<int64_t>(p);
    case GgufValueType::kU64: {
      const uint64_t v = load<uint64_t>(p);
      MOE_CHECK(v <= uint64_t(INT64_MAX), "{}: metadata '{}' is {}, expected at most 2^63-1", path,
                key, v);
      return int64_t(v);
    }
    default:
      MOE_FAIL("{}: metadata '{}' is not an integer", path, key);
  }
}

double load_number(const std::string& path, std::string_view key, GgufValueType t,
                   const uint8_t* p) {
  if (t == GgufValueType::kF32) return load<float>(p);
  if (t == GgufValueType::kF64) return load<double>(p);
  return double(load_int(path, key, t, p));
}

// The kv for key, or an error when it is missing.
const GgufKv& need(const std::string& path, const GgufKv* kv, std::string_view key) {
  MOE_CHECK(kv != nullptr, "{}: metadata key '{}' is missing", path, key);
  return *kv;
}

[[noreturn]] void wrong_kind(const std::string& path, const GgufKv& kv, const char* expected) {
  MOE_FAIL("{}: metadata '{}' is {}, expected {}", path, kv.key, detail::gguf_kind_name(kv),
           expected);
}

// Calls f(p) with a pointer to each element of an array of fixed-size values.
template <class F>
void each_element(const GgufKv& kv, F f) {
  const uint64_t size = detail::gguf_scalar_size(kv.elem_type);
  for (uint64_t i = 0; i < kv.count; ++i) f(kv.data + i * size);
}

}  // namespace

std::string GgufFile::get_string(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (kv.type != GgufValueType::kString) wrong_kind(impl_->path, kv, "a string");
  const uint64_t n = load<uint64_t>(kv.data);
  return std::string(reinterpret_cast<const char*>(kv.data + 8), std::size_t(n));
}

int64_t GgufFile::get_int(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (!is_integer(kv.type)) wrong_kind(impl_->path, kv, "an integer");
  return load_int(impl_->path, key, kv.type, kv.data);
}

double GgufFile::get_float(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (!is_integer(kv.type) && !is_float(kv.type)) wrong_kind(impl_->path, kv, "a number");
  return load_number(impl_->path, key, kv.type, kv.data);
}

bool GgufFile::get_bool(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (kv.type != GgufValueType::kBool) wrong_kind(impl_->path, kv, "a bool");
  return kv.data[0] != 0;
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (kv.type != GgufValueType::kArray || kv.elem_type != GgufValueType::kString)
    wrong_kind(impl_->path, kv, "an array of string");
  std::vector<std::string> out;
  out.reserve(kv.count);  // the parser bounded count by the bytes the strings occupy
  const uint8_t* p = kv.data;
  for (uint64_t i = 0; i < kv.count; ++i) {
    const uint64_t n = load<uint64_t>(p);
    out.emplace_back(reinterpret_cast<const char*>(p + 8), std::size_t(n));
    p += 8 + n;
  }
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (kv.type != GgufValueType::kArray || !is_integer(kv.elem_type))
    wrong_kind(impl_->path, kv, "an array of integers");
  std::vector<int64_t> out;
  out.reserve(kv.count);
  each_element(
      kv, [&](const uint8_t* p) { out.push_back(load_int(impl_->path, key, kv.elem_type, p)); });
  return out;
}

std::vector<double> GgufFile::get_float_array(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (kv.type != GgufValueType::kArray || !(is_integer(kv.elem_type) || is_float(kv.elem_type)))
    wrong_kind(impl_->path, kv, "an array of numbers");
  std::vector<double> out;
  out.reserve(kv.count);
  each_element(
      kv, [&](const uint8_t* p) { out.push_back(load_number(impl_->path, key, kv.elem_type, p)); });
  return out;
}

std::vector<bool> GgufFile::get_bool_array(std::string_view key) const {
  const GgufKv& kv = need(impl_->path, impl_->kv(key), key);
  if (kv.type != GgufValueType::kArray || kv.elem_type != GgufValueType::kBool)
    wrong_kind(impl_->path, kv, "an array of bool");
  return std::vector<bool>(kv.data, kv.data + kv.count);  // bytes checked to be 0 or 1
}

std::string GgufFile::get_string_or(std::string_view key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}
int64_t GgufFile::get_int_or(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double GgufFile::get_float_or(std::string_view key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
bool GgufFile::get_bool_or(std::string_view key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

}  // namespace moe::formats
