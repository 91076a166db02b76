// GGUF, llama.cpp's model file (spec: llama.cpp docs/gguf.md, gguf-py/gguf/constants.py):
//   "GGUF" magic, version (2 or 3), tensor count, metadata count (u64 each), then the metadata
//   key/value pairs (typed, arrays of one element type, strings as u64 length + bytes), then one
//   info record per tensor (name, n_dims, ne[0..n_dims) with ne[0] the fastest-varying axis,
//   ggml type, offset), then padding to `general.alignment` (default 32), then the data section.
// A ggml tensor with ne = [C, V] is a row-major numpy/safetensors array of shape [V, C].
//
// Files from outside are hostile until checked: the reader mmaps the file and validates every
// count, length, nesting, type, shape product (overflow-safe) and offset against the file size
// before anything is allocated or read; every error is one moe::Error line naming the file and
// the key or tensor at fault. Tensor data is never copied by the reader (views into the map), so
// a large file is not held twice.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe::formats {

// ggml's tensor types (ggml.h enum ggml_type, same numbers).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};
// "F32", "Q8_0", "IQ2_XXS", … (gguf-py's spelling of ggml's names, for every type ggml defines,
// not only those listed above); "type 77" for numbers ggml does not define.
std::string ggml_type_name(GgmlType t);
// Elements per block and bytes per block (F32: 1 and 4; Q4_K: 256 and 144), for every type ggml
// defines. nullopt for a number ggml does not define or has removed (4, 5, 31–33, 36–38).
struct GgmlBlock {
  int elements;
  int bytes;
};
std::optional<GgmlBlock> ggml_block(GgmlType t);
// Types we can dequantize: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K.
bool can_dequantize(GgmlType t);
// Types we can quantize to on export: F32, F16, BF16, Q8_0.
bool can_quantize(GgmlType t);
// Bytes of n elements of type t; errors if n is not a multiple of the block or overflows.
uint64_t ggml_nbytes(GgmlType t, int64_t n);

// dst[0..n) = the values of n elements of type t stored at src, exactly as ggml's
// dequantize_row_* (and gguf-py's quants.py) define them, bit for bit (F16/BF16 NaNs keep their
// payload). n must be a multiple of the block; src needs no alignment. Large tensors run on the
// OpenMP threads (blocks are independent, so the result does not depend on the thread count).
void dequantize(GgmlType t, const void* src, float* dst, int64_t n);
// dst (ggml_nbytes(t, n) bytes) = src[0..n) in type t, exactly as gguf-py's quants.py quantizes
// (F16: round to nearest even, overflow to Inf, NaN keeps sign and top payload bits as numpy does;
// BF16: round to nearest even, NaN made quiet; Q8_0 per 32-block: d = amax/127 in f32, stored as
// f16, q = round-half-away(x · (1/d)), the same as ggml's quantize_row_q8_0_ref that llama-quantize
// uses; ggml's AVX runtime quantize_row_q8_0 for activations rounds ties to even and differs).
// A NaN or Inf in a Q8_0 block gives quants of 0 where numpy's cast is platform-defined.
void quantize(GgmlType t, const float* src, void* dst, int64_t n);

// One metadata value. Arrays hold elements of one type (arrays of arrays are refused on read).
enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

struct GgufTensor {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest-varying axis
  int64_t numel = 0;
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the file's map; valid while the GgufFile lives
  uint64_t file_offset = 0;       // where data starts in the file (for inspection)
};

// The checks mirror llama.cpp's gguf_init_from_reader: version 2 or 3, little-endian; counts,
// string and array lengths bounded by the bytes left; keys non-empty and unique; value types
// 0..12, no arrays of arrays, bools 0 or 1; general.alignment (if present) a u32 power of two;
// tensor names unique and under 64 bytes; n_dims 0..4 (n_dims 0 is a scalar, ne = {}); each
// ne ≥ 0 with a product below 2^63; a type ggml defines; ne[0] a multiple of the block; data
// offsets back to back in info order, each padded to the alignment, inside the file.
class GgufFile {
 public:
  // Maps and validates the whole file. Errors: "FILE: …" one line.
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  // Tensor views stay valid (the map moves along); a moved-from file may only be destroyed or
  // assigned to.
  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;

  const std::string& path() const;
  uint32_t version() const;
  uint32_t alignment() const;             // general.alignment, or 32 when absent
  std::vector<std::string> keys() const;  // in file order
  bool has(std::string_view key) const;
  std::optional<GgufValueType> type_of(std::string_view key) const;
  // For arrays: the element type and length.
  std::optional<GgufValueType> array_type(std::string_view key) const;
  std::optional<uint64_t> array_size(std::string_view key) const;

  // Typed reads. A missing key or a value of another kind is a clear error
  // ("FILE: metadata 'llama.block_count' is a string, expected an integer"). Integers of any width
  // read as int64 (a u64 above INT64_MAX is an error); floats read as f32 or f64.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;  // also accepts integer values
  bool get_bool(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;
  std::vector<bool> get_bool_array(std::string_view key) const;
  // The same, or `fallback` when the key is absent (present with the wrong type still errors).
  std::string get_string_or(std::string_view key, const std::string& fallback) const;
  int64_t get_int_or(std::string_view key, int64_t fallback) const;
  double get_float_or(std::string_view key, double fallback) const;
  bool get_bool_or(std::string_view key, bool fallback) const;

  const std::vector<GgufTensor>& tensors() const;
  const GgufTensor* find(std::string_view name) const;  // nullptr if absent
  // The tensor or a clear error naming the file and tensor.
  const GgufTensor& tensor(std::string_view name) const;
  // The tensor dequantized to f32 (numel values, ggml order); errors on an unsupported type
  // ("FILE: tensor 'blk.0.ffn_up_exps.weight' has type Q5_K; supported: …").
  std::vector<float> read_f32(const GgufTensor& t) const;
  // The same into dst[0..t.numel) (a caller's buffer: no second copy of a large tensor).
  void read_f32(const GgufTensor& t, float* dst) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes a GGUF v3 file atomically (tmp + fsync + rename), alignment 32. Tensors are produced by
// a callback at write time, so a converter never holds the whole output in memory (one tensor at
// a time). Metadata is written in the order added. The add_* calls check what the reader would
// refuse (empty or repeated key, repeated or over-long tensor name, unknown type, more than 4
// dims, ne[0] not a multiple of the block) and error at once, naming the key or tensor.
// 'general.alignment' cannot be set (the writer always uses 32, the default, so it is not stored).
class GgufWriter {
 public:
  void add_string(const std::string& key, const std::string& v);
  void add_u8(const std::string& key, uint8_t v);
  void add_i8(const std::string& key, int8_t v);
  void add_u16(const std::string& key, uint16_t v);
  void add_i16(const std::string& key, int16_t v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_i64(const std::string& key, int64_t v);
  void add_f32(const std::string& key, float v);
  void add_f64(const std::string& key, double v);
  void add_bool(const std::string& key, bool v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  // `fill` writes exactly ggml_nbytes(type, numel) bytes to dst when the file is written (dst is
  // zeroed first). ne in ggml order, 1 to 4 entries, each ≥ 0.
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne,
                  std::function<void(uint8_t* dst)> fill);
  void write(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    GgufValueType type;
    std::vector<uint8_t> payload;  // the encoded value after the type field (arrays: element
                                   // type, length, elements)
  };
  void add_kv(const std::string& key, GgufValueType type, std::vector<uint8_t> payload);
  struct Pending {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    std::function<void(uint8_t*)> fill;
  };
  std::vector<Kv> kvs_;
  std::vector<Pending> tensors_;
};

}  // namespace moe::formats
