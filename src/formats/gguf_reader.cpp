// GgufFile: maps a GGUF file and validates it completely before anything is allocated from its
// contents. The rules mirror llama.cpp's gguf_init_from_reader (ggml/src/gguf.cpp) so that we
// accept what llama.cpp accepts and refuse what it refuses, with one line saying why.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "gguf_internal.h"
#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/safetensors.h"
#include "moe/formats/gguf.h"

namespace moe::formats {
namespace {

constexpr uint32_t kMaxDims = 4;      // GGML_MAX_DIMS
constexpr std::size_t kMaxName = 64;  // GGML_MAX_NAME: names are stored with their NUL in 64 bytes
// The fewest bytes one record can take, to bound counts by the bytes left in the file: a key/value
// is a key length (8), a non-empty key (1), a type (4) and at least one byte of value; a tensor
// info is a name length (8), n_dims (4), type (4) and offset (8).
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;

}  // namespace

namespace detail {

// A key or tensor name from the file as it appears in a message: bytes outside printable ASCII
// escaped (\xNN) so the message stays one readable line, and long names cut.
std::string shown(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < 120; ++i) {
    const auto ch = static_cast<unsigned char>(s[i]);
    if (ch >= 0x20 && ch < 0x7f)
      out += char(ch);
    else
      out += fmt::format("\\x{:02x}", ch);
  }
  if (s.size() > 120) out += "…";
  return out;
}

// Names the field being read, for the truncation message: "metadata 'general.name' value".
struct Field {
  const char* kind;
  std::string_view name;
  const char* part;
};

std::string describe(const Field& f) {
  return f.name.empty() ? fmt::format("{} {}", f.kind, f.part)
                        : fmt::format("{} '{}' {}", f.kind, f.name, f.part);
}

// Reads little-endian values from the map; every read is checked against the bytes left.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* base, uint64_t size)
      : path_(path), base_(base), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  const uint8_t* take(uint64_t n, const Field& f) {
    if (n > left())
      MOE_FAIL("{}: truncated file: {} needs {} bytes at offset {}, but only {} remain", path_,
               describe(f), n, pos_, left());
    const uint8_t* p = base_ + pos_;
    pos_ += n;
    return p;
  }
  template <class T>
  T get(const Field& f) {
    T v;
    std::memcpy(&v, take(sizeof(T), f), sizeof(T));
    return v;
  }
  std::string_view string(const Field& f) {
    const uint64_t n = get<uint64_t>(f);
    if (n > left())
      MOE_FAIL("{}: {} has length {}, but only {} bytes remain in the file", path_, describe(f), n,
               left());
    return {reinterpret_cast<const char*>(take(n, f)), std::size_t(n)};
  }

 private:
  const std::string& path_;
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

}  // namespace detail

namespace {
using detail::Cursor;
using detail::Field;
using detail::shown;

uint64_t pad_to(uint64_t x, uint64_t align) { return (x + align - 1) / align * align; }

}  // namespace

void GgufFile::Impl::parse_header(Cursor& c, uint64_t* n_tensors, uint64_t* n_kv) {
  const uint8_t* m = c.take(4, {"header", "", "magic"});
  if (std::memcmp(m, "FUGG", 4) == 0)
    MOE_FAIL(
        "{}: magic 'FUGG' is 'GGUF' byte-swapped: a big-endian file; only little-endian GGUF "
        "is supported",
        path);
  if (std::memcmp(m, "GGUF", 4) != 0)
    MOE_FAIL("{}: not a GGUF file: magic bytes {:02x} {:02x} {:02x} {:02x}, expected 'GGUF'", path,
             m[0], m[1], m[2], m[3]);
  version = c.get<uint32_t>({"header", "", "version"});
  // A big-endian v2/v3 file reads as 0x02000000/0x03000000 here (llama.cpp's same test).
  if (version != 0 && (version & 0xffffu) == 0)
    MOE_FAIL(
        "{}: GGUF version {:#010x} looks byte-swapped (a big-endian file); only "
        "little-endian versions 2 and 3 are supported",
        path, version);
  MOE_CHECK(version != 1, "{}: GGUF version 1 is no longer supported, expected version 2 or 3",
            path);
  MOE_CHECK(version == 2 || version == 3, "{}: GGUF version {} is not supported, expected 2 or 3",
            path, version);
  *n_tensors = c.get<uint64_t>({"header", "", "tensor count"});
  *n_kv = c.get<uint64_t>({"header", "", "metadata count"});
  MOE_CHECK(*n_tensors <= c.left() / kMinTensorInfoBytes,
            "{}: tensor count {} is more than the remaining {} bytes can hold (at least {} each)",
            path, *n_tensors, c.left(), kMinTensorInfoBytes);
  MOE_CHECK(*n_kv <= c.left() / kMinKvBytes,
            "{}: metadata count {} is more than the remaining {} bytes can hold (at least {} each)",
            path, *n_kv, c.left(), kMinKvBytes);
}

void GgufFile::Impl::parse_kv(Cursor& c, uint64_t i) {
  const std::string index = fmt::format("#{}", i);
  const std::string_view key = c.string({"metadata key", index, "name"});
  MOE_CHECK(!key.empty(), "{}: metadata key #{} is empty", path, i);
  const std::string sk = shown(key);  // for messages
  MOE_CHECK(kv_index.emplace(key, kvs.size()).second, "{}: metadata key '{}' appears twice", path,
            sk);
  detail::GgufKv kv;
  kv.key = std::string(key);
  kv.type = GgufValueType(c.get<uint32_t>({"metadata", sk, "type"}));
  GgufValueType elem = kv.type;
  if (kv.type == GgufValueType::kArray) {
    elem = GgufValueType(c.get<uint32_t>({"metadata", sk, "array element type"}));
    MOE_CHECK(elem != GgufValueType::kArray,
              "{}: metadata '{}' is an array of arrays, which GGUF readers do not support", path,
              sk);
    kv.count = c.get<uint64_t>({"metadata", sk, "array length"});
  }
  MOE_CHECK(uint32_t(elem) <= uint32_t(GgufValueType::kF64),
            "{}: metadata '{}' has value type {}, expected 0..12 (u8 … f64)", path, sk,
            uint32_t(elem));
  kv.elem_type = elem;
  kv.data = nullptr;
  const Field value{"metadata", sk, "value"};
  if (elem == GgufValueType::kString) {
    // Each string is at least its 8-byte length: bound the count before walking.
    MOE_CHECK(kv.count <= c.left() / 8,
              "{}: metadata '{}' is an array of {} strings, more than the remaining {} bytes can "
              "hold",
              path, sk, kv.count, c.left());
    kv.data = c.take(0, value);
    for (uint64_t j = 0; j < kv.count; ++j) c.string(value);
  } else {
    const uint64_t size = detail::gguf_scalar_size(elem);
    MOE_CHECK(kv.count <= c.left() / size,
              "{}: metadata '{}' is an array of {} {} values ({} bytes each), more than the "
              "remaining {} bytes hold",
              path, sk, kv.count, detail::gguf_type_name(elem), size, c.left());
    kv.data = c.take(kv.count * size, value);
    if (elem == GgufValueType::kBool)
      for (uint64_t j = 0; j < kv.count; ++j)
        MOE_CHECK(kv.data[j] <= 1, "{}: metadata '{}' has bool value {}, expected 0 or 1", path, sk,
                  kv.data[j]);
  }
  kvs.push_back(std::move(kv));
}

void GgufFile::Impl::parse_alignment() {
  const auto it = kv_index.find("general.alignment");
  if (it == kv_index.end()) return;
  const detail::GgufKv& kv = kvs[it->second];
  MOE_CHECK(kv.type == GgufValueType::kU32, "{}: metadata 'general.alignment' is {}, expected u32",
            path, detail::gguf_kind_name(kv));
  std::memcpy(&alignment, kv.data, 4);
  MOE_CHECK(alignment != 0 && (alignment & (alignment - 1)) == 0,
            "{}: metadata 'general.alignment' is {}, expected a power of two", path, alignment);
}

void GgufFile::Impl::parse_tensor_info(Cursor& c, uint64_t i, std::vector<uint64_t>* offsets) {
  const std::string index = fmt::format("#{}", i);
  const std::string_view name = c.string({"tensor", index, "name"});
  const std::string sn = shown(name);  // for messages
  MOE_CHECK(name.size() < kMaxName, "{}: tensor #{} name '{}' is {} bytes, expected at most {}",
            path, i, sn, name.size(), kMaxName - 1);
  MOE_CHECK(tensor_index.emplace(name, tensors.size()).second, "{}: tensor '{}' appears twice",
            path, sn);
  GgufTensor t;
  t.name = std::string(name);
  const uint32_t n_dims = c.get<uint32_t>({"tensor", sn, "n_dims"});
  MOE_CHECK(n_dims <= kMaxDims, "{}: tensor '{}' has n_dims {}, expected at most {}", path, sn,
            n_dims, kMaxDims);
  for (uint32_t j = 0; j < n_dims; ++j) {
    t.ne.push_back(c.get<int64_t>({"tensor", sn, "shape"}));
    MOE_CHECK(t.ne.back() >= 0, "{}: tensor '{}' has ne[{}] = {}, expected ≥ 0", path, sn, j,
              t.ne.back());
  }
  int64_t numel = 1;
  for (int64_t d : t.ne)
    MOE_CHECK(!__builtin_mul_overflow(numel, d, &numel),
              "{}: tensor '{}' shape (ne) {} has more than 2^63-1 elements", path, sn,
              shape_str(t.ne));
  t.numel = numel;
  const uint32_t type = c.get<uint32_t>({"tensor", sn, "type"});
  t.type = GgmlType(type);
  const std::optional<GgmlBlock> block = ggml_block(t.type);
  MOE_CHECK(block.has_value(), "{}: tensor '{}' has ggml type {}, which ggml does not define", path,
            name, type);
  const int64_t row = t.ne.empty() ? 1 : t.ne[0];
  MOE_CHECK(row % block->elements == 0,
            "{}: tensor '{}' of type {} has ne[0] = {}, expected a multiple of its block size {}",
            path, sn, ggml_type_name(t.type), row, block->elements);
  int64_t nbytes = 0;
  MOE_CHECK(!__builtin_mul_overflow(numel / block->elements, int64_t(block->bytes), &nbytes),
            "{}: tensor '{}' shape (ne) {} of type {} has more than 2^63-1 bytes", path, sn,
            shape_str(t.ne), ggml_type_name(t.type));
  t.nbytes = uint64_t(nbytes);
  offsets->push_back(c.get<uint64_t>({"tensor", sn, "offset"}));
  tensors.push_back(std::move(t));
}

void GgufFile::Impl::place_tensors(uint64_t data_start, const std::vector<uint64_t>& offsets) {
  // llama.cpp requires the tensors back to back in info order, each padded to the alignment.
  uint64_t expected = 0;
  const uint64_t data_size = size - data_start;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    GgufTensor& t = tensors[i];
    const uint64_t off = offsets[i];
    MOE_CHECK(off % alignment == 0, "{}: tensor '{}' has offset {}, expected a multiple of {}",
              path, shown(t.name), off, alignment);
    MOE_CHECK(off <= data_size && t.nbytes <= data_size - off,
              "{}: tensor '{}' data [{}, {}) lies past the end of the data section ({} bytes)",
              path, shown(t.name), off, uint64_t(off + t.nbytes), data_size);
    MOE_CHECK(off == expected,
              "{}: tensor '{}' has offset {}, expected {} (tensors stored in order, each padded to "
              "{} bytes)",
              path, shown(t.name), off, expected, alignment);
    t.data = map + data_start + off;
    t.file_offset = data_start + off;
    // Cannot overflow: off + nbytes ≤ data_size, and padding adds less than `alignment`.
    expected = pad_to(off + t.nbytes, alignment);
  }
}

void GgufFile::Impl::parse() {
  Cursor c(path, map, size);
  uint64_t n_tensors = 0, n_kv = 0;
  parse_header(c, &n_tensors, &n_kv);
  // No reserve from the counts: they are bounded by the file size, but a record is much larger
  // in memory than its minimum on disk.
  for (uint64_t i = 0; i < n_kv; ++i) parse_kv(c, i);
  parse_alignment();
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) parse_tensor_info(c, i, &offsets);

  uint64_t data_start = c.pos();
  if (n_tensors > 0) {
    data_start = pad_to(c.pos(), alignment);  // pos ≤ size < 2^63: no overflow
    MOE_CHECK(data_start <= size,
              "{}: truncated file: the data section starts at offset {} (aligned to {}), past the "
              "end of the file ({} bytes)",
              path, data_start, alignment, size);
  }
  place_tensors(data_start, offsets);
}

GgufFile::GgufFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  MOE_CHECK(fd >= 0, "{}: cannot open GGUF file ({})", path, std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int stat_errno = errno;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MOE_CHECK(stat_ok, "{}: cannot stat GGUF file ({})", path, std::strerror(stat_errno));
    MOE_FAIL("{}: not a regular file", path);
  }
  m.size = uint64_t(st.st_size);
  if (m.size > 0) {
    void* p = ::mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    ::close(fd);
    MOE_CHECK(p != MAP_FAILED, "{}: mmap failed ({})", path, std::strerror(e));
    m.map = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  m.parse();  // on error impl_ is destroyed, and ~Impl unmaps
}

GgufFile::Impl::~Impl() {
  if (map) ::munmap(const_cast<uint8_t*>(map), size);
}

GgufFile::~GgufFile() = default;
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;

const std::string& GgufFile::path() const { return impl_->path; }
uint32_t GgufFile::version() const { return impl_->version; }
uint32_t GgufFile::alignment() const { return impl_->alignment; }

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  out.reserve(impl_->kvs.size());
  for (const auto& kv : impl_->kvs) out.push_back(kv.key);
  return out;
}

bool GgufFile::has(std::string_view key) const { return impl_->kv_index.count(key) != 0; }

const detail::GgufKv* GgufFile::Impl::kv(std::string_view key) const {
  const auto it = kv_index.find(key);
  return it == kv_index.end() ? nullptr : &kvs[it->second];
}

std::optional<GgufValueType> GgufFile::type_of(std::string_view key) const {
  const detail::GgufKv* v = impl_->kv(key);
  if (!v) return std::nullopt;
  return v->type;
}

std::optional<GgufValueType> GgufFile::array_type(std::string_view key) const {
  const detail::GgufKv* v = impl_->kv(key);
  if (!v || v->type != GgufValueType::kArray) return std::nullopt;
  return v->elem_type;
}

std::optional<uint64_t> GgufFile::array_size(std::string_view key) const {
  const detail::GgufKv* v = impl_->kv(key);
  if (!v || v->type != GgufValueType::kArray) return std::nullopt;
  return v->count;
}

const std::vector<GgufTensor>& GgufFile::tensors() const { return impl_->tensors; }

const GgufTensor* GgufFile::find(std::string_view name) const {
  const auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

const GgufTensor& GgufFile::tensor(std::string_view name) const {
  const GgufTensor* t = find(name);
  MOE_CHECK(t != nullptr, "{}: no tensor '{}' (the file has {} tensors)", impl_->path, name,
            impl_->tensors.size());
  return *t;
}

void GgufFile::read_f32(const GgufTensor& t, float* dst) const {
  MOE_CHECK(can_dequantize(t.type),
            "{}: tensor '{}' has type {}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K",
            impl_->path, t.name, ggml_type_name(t.type));
  dequantize(t.type, t.data, dst, t.numel);
}

std::vector<float> GgufFile::read_f32(const GgufTensor& t) const {
  std::vector<float> out(std::size_t(t.numel));
  read_f32(t, out.data());
  return out;
}

}  // namespace moe::formats
