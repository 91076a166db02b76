// GGUF reader/writer: a writer → reader round trip of every metadata kind and tensor type we
// export, then hostile files: every truncation of a valid file, and one corrupted field at a time,
// each of which must give one moe::Error line naming the file and the field. The byte layout the
// corruptions patch is the format's (docs/gguf.md), found by searching for the key or tensor name.
// Bit-exactness of the (de)quantizers against gguf-py is tests/python/test_gguf_quants.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "../error_util.h"
#include "../temp_dir.h"
#include "moe/core/file_io.h"
#include "moe/formats/gguf.h"

namespace moe::formats {
namespace {

using moe::testing::error_of;
using moe::testing::expect_error;
using moe::testing::TempDir;

std::vector<float> ramp(int n, float scale) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = scale * float(i - n / 3);
  return v;
}

// Adds a tensor whose contents are `src` quantized to `type`.
void add_quantized(GgufWriter& w, const std::string& name, GgmlType type, std::vector<int64_t> ne,
                   std::vector<float> src) {
  w.add_tensor(name, type, ne,
               [type, src](uint8_t* dst) { quantize(type, src.data(), dst, int64_t(src.size())); });
}

// A small file with every metadata kind and one tensor of each exportable type. The last tensor
// is 32 bytes, so the file ends with its data (no padding): every shorter prefix is invalid.
void write_sample(const std::string& path) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u8("t.u8", 200);
  w.add_i8("t.i8", -100);
  w.add_u16("t.u16", 60000);
  w.add_i16("t.i16", -30000);
  w.add_u32("t.u32", 4000000000u);
  w.add_i32("t.i32", -2000000000);
  w.add_u64("t.u64", 1ull << 40);
  w.add_i64("t.i64", -(1ll << 40));
  w.add_f32("t.f32", 0.25f);
  w.add_f64("t.f64", 1e300);
  w.add_bool("t.bool", true);
  w.add_string("t.str", "héllo");
  w.add_string_array("t.strs", {"a", "", "bcd"});
  w.add_f32_array("t.f32s", {1.5f, -2.0f});
  w.add_i32_array("t.i32s", {7, -8, 9});
  w.add_u32("general.alignmenX", 32);  // renamed to general.alignment by the alignment tests
  add_quantized(w, "w.f16", GgmlType::kF16, {4, 3}, ramp(12, 0.5f));
  add_quantized(w, "w.bf16", GgmlType::kBF16, {6}, ramp(6, 0.75f));
  add_quantized(w, "w.q8", GgmlType::kQ8_0, {32, 2}, ramp(64, 0.1f));
  add_quantized(w, "w.f32", GgmlType::kF32, {2, 2, 1, 2}, ramp(8, 1.25f));
  w.write(path);
}

std::string slurp(const std::string& path) { return read_file(path); }
// A plain write: the atomic one fsyncs, which makes the every-truncation test slow.
void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Index just past the first occurrence of `needle` (a key or tensor name as stored).
std::size_t after(const std::string& bytes, const std::string& needle) {
  const std::size_t i = bytes.find(needle);
  EXPECT_NE(i, std::string::npos) << needle;
  return i + needle.size();
}

template <class T>
void poke(std::string& bytes, std::size_t at, T v) {
  ASSERT_LE(at + sizeof(T), bytes.size());
  std::memcpy(bytes.data() + at, &v, sizeof(T));
}

TEST(Gguf, RoundTripMetadataAndTensors) {
  TempDir dir;
  const std::string path = dir.file("sample.gguf");
  write_sample(path);
  GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  const std::vector<std::string> keys = f.keys();
  ASSERT_EQ(keys.size(), 17u);
  EXPECT_EQ(keys[0], "general.architecture");
  EXPECT_EQ(keys[12], "t.str");
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("t.u8"), 200);
  EXPECT_EQ(f.get_int("t.i8"), -100);
  EXPECT_EQ(f.get_int("t.u16"), 60000);
  EXPECT_EQ(f.get_int("t.i16"), -30000);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000ll);
  EXPECT_EQ(f.get_int("t.i32"), -2000000000);
  EXPECT_EQ(f.get_int("t.u64"), 1ll << 40);
  EXPECT_EQ(f.get_int("t.i64"), -(1ll << 40));
  EXPECT_EQ(f.get_float("t.f32"), 0.25);
  EXPECT_EQ(f.get_float("t.f64"), 1e300);
  EXPECT_EQ(f.get_float("t.u8"), 200.0);
  EXPECT_TRUE(f.get_bool("t.bool"));
  EXPECT_EQ(f.get_string("t.str"), "héllo");
  EXPECT_EQ(f.get_string_array("t.strs"), (std::vector<std::string>{"a", "", "bcd"}));
  EXPECT_EQ(f.get_float_array("t.f32s"), (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(f.get_int_array("t.i32s"), (std::vector<int64_t>{7, -8, 9}));
  EXPECT_EQ(f.type_of("t.i16"), GgufValueType::kI16);
  EXPECT_EQ(f.type_of("t.strs"), GgufValueType::kArray);
  EXPECT_EQ(f.array_type("t.strs"), GgufValueType::kString);
  EXPECT_EQ(f.array_size("t.i32s"), 3u);
  EXPECT_EQ(f.array_type("t.str"), std::nullopt);
  EXPECT_EQ(f.type_of("nope"), std::nullopt);
  EXPECT_EQ(f.get_int_or("nope", 5), 5);
  EXPECT_EQ(f.get_string_or("t.str", "x"), "héllo");

  ASSERT_EQ(f.tensors().size(), 4u);
  const GgufTensor& q8 = f.tensor("w.q8");
  EXPECT_EQ(q8.type, GgmlType::kQ8_0);
  EXPECT_EQ(q8.ne, (std::vector<int64_t>{32, 2}));
  EXPECT_EQ(q8.numel, 64);
  EXPECT_EQ(q8.nbytes, 68u);
  const std::string bytes = slurp(path);
  for (const GgufTensor& t : f.tensors()) {
    const std::vector<float> src = t.name == "w.f16"    ? ramp(12, 0.5f)
                                   : t.name == "w.bf16" ? ramp(6, 0.75f)
                                   : t.name == "w.q8"   ? ramp(64, 0.1f)
                                                        : ramp(8, 1.25f);
    std::vector<uint8_t> expect(ggml_nbytes(t.type, t.numel));
    quantize(t.type, src.data(), expect.data(), t.numel);
    ASSERT_EQ(t.nbytes, expect.size()) << t.name;
    EXPECT_EQ(std::memcmp(t.data, expect.data(), expect.size()), 0) << t.name;
    // Offsets are relative to a 32-aligned data section.
    EXPECT_EQ((t.data - reinterpret_cast<const uint8_t*>(f.tensors()[0].data)) % 32, 0) << t.name;
  }
  // These ramps are exactly representable in F16/BF16/F32: dequantizing gives them back.
  EXPECT_EQ(f.read_f32(f.tensor("w.f16")), ramp(12, 0.5f));
  EXPECT_EQ(f.read_f32(f.tensor("w.bf16")), ramp(6, 0.75f));
  EXPECT_EQ(f.read_f32(f.tensor("w.f32")), ramp(8, 1.25f));
  EXPECT_EQ(f.find("absent"), nullptr);
  expect_error([&] { f.tensor("absent"); }, {path, "no tensor 'absent'"});
  const uint8_t* q8_data = q8.data;
  GgufFile moved = std::move(f);  // views stay valid
  EXPECT_EQ(moved.tensor("w.q8").data, q8_data);
  EXPECT_EQ(moved.read_f32(moved.tensor("w.f32")), ramp(8, 1.25f));
}

TEST(Gguf, GetterErrorsNameFileKeyAndKind) {
  TempDir dir;
  const std::string path = dir.file("sample.gguf");
  write_sample(path);
  GgufFile f(path);
  expect_error([&] { f.get_int("llama.block_count"); }, {path, "'llama.block_count' is missing"});
  expect_error([&] { f.get_int("t.str"); }, {path, "'t.str' is a string, expected an integer"});
  expect_error([&] { f.get_string("t.u32"); }, {path, "'t.u32' is a u32, expected a string"});
  expect_error([&] { f.get_bool("t.f32"); }, {path, "'t.f32' is an f32, expected a bool"});
  expect_error([&] { f.get_string_array("t.i32s"); },
               {path, "'t.i32s' is an array of i32, expected an array of string"});
  expect_error([&] { f.get_int_or("t.str", 1); }, {path, "'t.str' is a string"});
  expect_error([&] { f.get_bool_array("t.strs"); },
               {path, "'t.strs' is an array of string, expected an array of bool"});
}

TEST(Gguf, WriterRefusesWhatReadersRefuse) {
  GgufWriter w;
  w.add_u32("a", 1);
  expect_error([&] { w.add_u32("a", 2); }, "'a' added twice");
  expect_error([&] { w.add_u32("general.alignment", 64); }, "fixed at 32");
  auto fill = [](uint8_t*) {};
  w.add_tensor("t", GgmlType::kF32, {3}, fill);
  expect_error([&] { w.add_tensor("t", GgmlType::kF32, {3}, fill); }, "'t' added twice");
  expect_error(
      [&] {
        w.add_tensor("q", GgmlType::kQ8_0, {16, 2}, fill);
      },
      {"'q'", "ne[0] = 16", "multiple of 32"});
  expect_error([&] { w.add_tensor("x", GgmlType(77), {1}, fill); }, {"'x'", "type 77"});
  expect_error([&] { w.add_tensor(std::string(64, 'n'), GgmlType::kF32, {1}, fill); }, "64 bytes");
  expect_error([&] { w.add_tensor("five", GgmlType::kF32, {1, 1, 1, 1, 1}, fill); }, "5 dims");
}

TEST(Gguf, EveryTruncationIsAnError) {
  TempDir dir;
  const std::string path = dir.file("sample.gguf");
  write_sample(path);
  const std::string bytes = slurp(path);
  const std::string cut = dir.file("cut.gguf");
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    spit(cut, bytes.substr(0, n));
    const std::string e = error_of([&] { GgufFile f(cut); });
    ASSERT_NE(e.find(cut + ": "), std::string::npos) << "length " << n << ": " << e;
    ASSERT_EQ(e.find('\n'), std::string::npos) << e;
  }
  GgufFile whole(path);  // and the whole file is fine
}

// Writes the sample, applies `edit` to its bytes and returns the reader's error.
template <class F>
std::string corrupt(const TempDir& dir, F edit) {
  const std::string path = dir.file("sample.gguf");
  write_sample(path);
  std::string bytes = slurp(path);
  edit(bytes);
  const std::string bad = dir.file("bad.gguf");
  spit(bad, bytes);
  return error_of([&] { GgufFile f(bad); });
}

void expect_has(const std::string& e, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(e.find(p), std::string::npos) << "'" << p << "' in " << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

TEST(Gguf, CorruptHeader) {
  TempDir dir;
  const std::string bad = dir.file("bad.gguf");
  expect_has(corrupt(dir, [](std::string& b) { b[0] = 'X'; }),
             {bad, "not a GGUF file", "expected 'GGUF'"});
  expect_has(corrupt(dir, [](std::string& b) { b.replace(0, 4, "FUGG"); }),
             {bad, "byte-swapped", "big-endian"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, 4, 1); }),
             {bad, "version 1 is no longer supported"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, 4, 99); }),
             {bad, "version 99 is not supported, expected 2 or 3"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, 4, 0x03000000); }),
             {bad, "0x03000000", "big-endian"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint64_t>(b, 16, 1ull << 60); }),
             {bad, "metadata count 1152921504606846976", "remaining"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint64_t>(b, 8, 1ull << 62); }),
             {bad, "tensor count 4611686018427387904"});
  // Version 2 has the same layout and is accepted.
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, 4, 2); }), {"(no error)"});
}

TEST(Gguf, CorruptMetadata) {
  TempDir dir;
  const std::string bad = dir.file("bad.gguf");
  // t.str: key, type (u32), then the string's u64 length.
  expect_has(
      corrupt(dir, [](std::string& b) { poke<uint64_t>(b, after(b, "t.str") + 4, 1ull << 62); }),
      {bad, "metadata 't.str' value has length 4611686018427387904", "remain"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, after(b, "t.u32"), 13); }),
             {bad, "metadata 't.u32' has value type 13"});
  // t.i32s: key, type 9 (array), element type, length.
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, after(b, "t.i32s") + 4, 9); }),
             {bad, "metadata 't.i32s' is an array of arrays"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, after(b, "t.i32s") + 4, 13); }),
             {bad, "metadata 't.i32s' has value type 13"});
  expect_has(
      corrupt(dir, [](std::string& b) { poke<uint64_t>(b, after(b, "t.i32s") + 8, 1ull << 61); }),
      {bad, "metadata 't.i32s' is an array of 2305843009213693952 i32 values"});
  expect_has(
      corrupt(dir, [](std::string& b) { poke<uint64_t>(b, after(b, "t.strs") + 8, 1ull << 61); }),
      {bad, "metadata 't.strs' is an array of 2305843009213693952 strings"});
  expect_has(corrupt(dir, [](std::string& b) { b[after(b, "t.bool") + 4] = 2; }),
             {bad, "metadata 't.bool' has bool value 2"});
  expect_has(corrupt(dir, [](std::string& b) { b[after(b, "t.i8") - 2] = 'u'; }),
             {bad, "metadata key 't.u8' appears twice"});
  for (uint32_t a : {0u, 3u}) {
    expect_has(corrupt(dir,
                       [a](std::string& b) {
                         const std::size_t k = after(b, "general.alignmenX");
                         b[k - 1] = 't';
                         poke<uint32_t>(b, k + 4, a);
                       }),
               {bad, fmt::format("'general.alignment' is {}, expected a power of two", a)});
  }
  expect_has(corrupt(dir,
                     [](std::string& b) {
                       const std::size_t k = after(b, "general.alignmenX");
                       b[k - 1] = 't';
                       poke<uint32_t>(b, k, 5);  // i32 instead of u32
                     }),
             {bad, "'general.alignment' is an i32, expected u32"});
}

TEST(Gguf, CorruptTensorInfo) {
  TempDir dir;
  const std::string bad = dir.file("bad.gguf");
  // A tensor info after its name: n_dims (u32), ne (i64 × n_dims), type (u32), offset (u64).
  // w.q8 has 2 dims and is the third tensor; w.f32 has 4 dims and is the last.
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, after(b, "w.q8") + 20, 77); }),
             {bad, "tensor 'w.q8' has ggml type 77"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, after(b, "w.q8") + 20, 4); }),
             {bad, "tensor 'w.q8' has ggml type 4"});
  expect_has(corrupt(dir, [](std::string& b) { poke<uint32_t>(b, after(b, "w.q8"), 5); }),
             {bad, "tensor 'w.q8' has n_dims 5, expected at most 4"});
  expect_has(corrupt(dir,
                     [](std::string& b) {
                       poke<int64_t>(b, after(b, "w.q8") + 4, int64_t(1) << 32);
                       poke<int64_t>(b, after(b, "w.q8") + 12, int64_t(1) << 32);
                     }),
             {bad, "tensor 'w.q8' shape (ne) [4294967296, 4294967296] has more than 2^63-1"});
  expect_has(corrupt(dir, [](std::string& b) { poke<int64_t>(b, after(b, "w.q8") + 4, -32); }),
             {bad, "tensor 'w.q8' has ne[0] = -32"});
  expect_has(corrupt(dir, [](std::string& b) { poke<int64_t>(b, after(b, "w.q8") + 4, 16); }),
             {bad,
              "tensor 'w.q8' of type Q8_0 has ne[0] = 16, expected a multiple of its block "
              "size 32"});
  const std::size_t f32_offset = 4 + 4 * 8 + 4;  // after "w.f32": n_dims, 4 × ne, type
  expect_has(corrupt(dir,
                     [&](std::string& b) {
                       poke<uint64_t>(b, after(b, "w.f32") + f32_offset, uint64_t(1) << 40);
                     }),
             {bad, "tensor 'w.f32' data [1099511627776, 1099511627808) lies past the end"});
  expect_has(corrupt(dir,
                     [&](std::string& b) {
                       uint64_t off;
                       std::memcpy(&off, b.data() + after(b, "w.f32") + f32_offset, 8);
                       poke<uint64_t>(b, after(b, "w.f32") + f32_offset, off + 4);
                     }),
             {bad, "tensor 'w.f32' has offset", "expected a multiple of 32"});
  expect_has(corrupt(dir,
                     [&](std::string& b) {
                       uint64_t off;
                       std::memcpy(&off, b.data() + after(b, "w.f32") + f32_offset, 8);
                       poke<uint64_t>(b, after(b, "w.f32") + f32_offset, off - 32);
                     }),
             {bad, "tensor 'w.f32' has offset", "expected", "stored in order"});
  // Names are length-prefixed: rename the last tensor to one of the same length already used.
  // A name with a newline and a non-ASCII byte is shown escaped, so the message stays one line.
  expect_has(corrupt(dir,
                     [](std::string& b) {
                       const std::size_t at = b.find("w.f32");
                       b.replace(at, 5,
                                 "w\n\xff"
                                 "32");
                       poke<uint32_t>(b, at + 5, 5);
                     }),
             {bad, "tensor 'w\\x0a\\xff32' has n_dims 5"});
  expect_has(corrupt(dir, [](std::string& b) { b.replace(b.find("w.f32"), 5, "w.f16"); }),
             {bad, "tensor 'w.f16' appears twice"});
}

// Random single-byte and 8-byte corruptions anywhere: the reader either refuses the file with a
// moe::Error naming it or accepts it, and then every tensor can be read (nothing out of bounds; the
// sanitizer build checks that part).
TEST(Gguf, RandomCorruptionsNeverCrash) {
  TempDir dir;
  const std::string path = dir.file("sample.gguf");
  write_sample(path);
  const std::string bytes = slurp(path);
  const std::string bad = dir.file("bad.gguf");
  uint64_t state = 12345;
  auto next = [&state] {  // splitmix64: a fixed sequence on every platform
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  int refused = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    std::string b = bytes;
    const std::size_t at = next() % b.size();
    if (trial % 2 == 0) {
      b[at] = char(next());
    } else {
      const uint64_t v = next() >> (next() % 64);  // small and large values
      std::memcpy(b.data() + at, &v, std::min<std::size_t>(8, b.size() - at));
    }
    spit(bad, b);
    try {
      GgufFile f(bad);
      for (const GgufTensor& t : f.tensors())
        if (can_dequantize(t.type)) f.read_f32(t);
    } catch (const Error& e) {
      ASSERT_NE(std::string(e.what()).find(bad + ": "), std::string::npos) << e.what();
      ++refused;
    }
  }
  EXPECT_GT(refused, 100);  // the corruptions do hit the structure, not only the data
}

TEST(Gguf, EmptyAndMissingFiles) {
  TempDir dir;
  const std::string empty = dir.file("empty.gguf");
  spit(empty, "");
  expect_error([&] { GgufFile f(empty); }, {empty, "truncated file: header magic"});
  const std::string missing = dir.file("missing.gguf");
  expect_error([&] { GgufFile f(missing); }, {missing, "cannot open"});
  expect_error([&] { GgufFile f(dir.path); }, {dir.path, "not a regular file"});
}

// Every half converts to a float and back to itself (NaNs keep sign and payload), and the float
// values are those of the IEEE formula; every bf16 likewise through the top half of a float.
TEST(GgmlQuants, HalfAndBfloatRoundTripAllPatterns) {
  std::vector<uint16_t> all(65536);
  for (int i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  std::vector<float> f(65536);
  dequantize(GgmlType::kF16, all.data(), f.data(), 65536);
  std::vector<uint16_t> back(65536);
  quantize(GgmlType::kF16, f.data(), back.data(), 65536);
  for (int i = 0; i < 65536; ++i) {
    ASSERT_EQ(back[i], all[i]) << i;
    const int e = (i >> 10) & 31, m = i & 1023;
    const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
    if (e != 31) {
      ASSERT_EQ(double(f[i]), (i & 0x8000) ? -mag : mag) << i;
    }
  }
  dequantize(GgmlType::kBF16, all.data(), f.data(), 65536);
  quantize(GgmlType::kBF16, f.data(), back.data(), 65536);
  for (int i = 0; i < 65536; ++i) {
    const bool snan = (i & 0x7f80) == 0x7f80 && (i & 0x7f) != 0 && (i & 0x40) == 0;
    ASSERT_EQ(back[i], snan ? (all[i] | 0x40) : all[i]) << i;  // signalling NaNs made quiet
  }
}

// Rounding at the f16 boundaries: ties to even, overflow to Inf, underflow to subnormals and 0.
TEST(GgmlQuants, HalfRoundingEdges) {
  const std::vector<float> x = {65504.0f,
                                65519.99f,
                                65520.0f,
                                1.0f + std::ldexp(1.0f, -11),
                                1.0f + 3 * std::ldexp(1.0f, -11),
                                std::ldexp(1.0f, -25),
                                std::ldexp(1.5f, -25),
                                std::ldexp(1.0f, -26),
                                -0.0f};
  const std::vector<uint16_t> want = {0x7bff, 0x7bff, 0x7c00, 0x3c00, 0x3c02,
                                      0x0000, 0x0001, 0x0000, 0x8000};
  std::vector<uint16_t> got(x.size());
  quantize(GgmlType::kF16, x.data(), got.data(), int64_t(x.size()));
  EXPECT_EQ(got, want);
}

TEST(GgmlQuants, Q8_0KnownBlock) {
  // amax 127 → d = 1, q = round-half-away(x): 0.5 → 1, -2.5 → -3, 126.5 → 127.
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = 0.5f;
  x[2] = -2.5f;
  x[3] = 126.5f;
  x[4] = -0.49f;
  std::vector<uint8_t> q(34);
  quantize(GgmlType::kQ8_0, x.data(), q.data(), 32);
  EXPECT_EQ(q[0], 0x00);
  EXPECT_EQ(q[1], 0x3c);  // f16 1.0
  EXPECT_EQ(int8_t(q[2]), 127);
  EXPECT_EQ(int8_t(q[3]), 1);
  EXPECT_EQ(int8_t(q[4]), -3);
  EXPECT_EQ(int8_t(q[5]), 127);
  EXPECT_EQ(int8_t(q[6]), 0);
  std::vector<float> y(32);
  dequantize(GgmlType::kQ8_0, q.data(), y.data(), 32);
  EXPECT_EQ(y[2], -3.0f);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ8_0, 64), 68u);
  EXPECT_EQ(ggml_type_name(GgmlType::kQ6_K), "Q6_K");
  EXPECT_EQ(ggml_type_name(GgmlType(77)), "type 77");
  EXPECT_FALSE(ggml_block(GgmlType(4)).has_value());
  expect_error([&] { ggml_nbytes(GgmlType::kQ8_0, 33); }, "not a whole number");
}

}  // namespace
}  // namespace moe::formats
