// Private to src/formats/gguf_*.cpp: the parsed state of a GgufFile (shared by the parser and the
// metadata getters) and the metadata value encodings shared by the reader and the writer.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "moe/formats/gguf.h"

namespace moe::formats {
namespace detail {

// One metadata entry. `data` points into the file map at the value: for a scalar its bytes, for an
// array its first element (after the element type and length); strings are u64 length + bytes.
struct GgufKv {
  std::string key;
  GgufValueType type;       // kArray for arrays
  GgufValueType elem_type;  // the scalar type, or the array's element type
  uint64_t count = 1;       // 1 for scalars
  const uint8_t* data = nullptr;
};

// "u8", …, "f64", "string", "array".
const char* gguf_type_name(GgufValueType t);
// Bytes of one fixed-size value (u8 … f64, bool); 0 for string and array.
uint64_t gguf_scalar_size(GgufValueType t);
// "a string", "an array of u32", … for error messages.
std::string gguf_kind_name(const GgufKv& kv);

class Cursor;

}  // namespace detail

struct GgufFile::Impl {
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl();  // unmaps

  std::string path;
  const uint8_t* map = nullptr;
  uint64_t size = 0;
  uint32_t version = 0;
  uint32_t alignment = 32;
  std::vector<detail::GgufKv> kvs;  // in file order
  // Keys and names are views into the map, which outlives the indexes.
  std::unordered_map<std::string_view, std::size_t> kv_index;
  std::vector<GgufTensor> tensors;
  std::unordered_map<std::string_view, std::size_t> tensor_index;

  const detail::GgufKv* kv(std::string_view key) const;  // nullptr if absent

  void parse();
  void parse_header(detail::Cursor& c, uint64_t* n_tensors, uint64_t* n_kv);
  void parse_kv(detail::Cursor& c, uint64_t i);
  void parse_alignment();
  void parse_tensor_info(detail::Cursor& c, uint64_t i, std::vector<uint64_t>* offsets);
  void place_tensors(uint64_t data_start, const std::vector<uint64_t>& offsets);
};

}  // namespace moe::formats
