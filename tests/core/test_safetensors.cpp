// safetensors at the core level: what is written is read back bit for bit for every dtype, and
// every way a hostile or damaged file can be malformed gets a clear error naming the file and
// what is wrong (never a crash or a read past the mapping).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "../error_util.h"
#include "../temp_dir.h"
#include "moe/core/file_io.h"
#include "moe/core/safetensors.h"

namespace moe {

namespace fs = std::filesystem;

class SafeTensors : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return dir_.file(name); }
  // A file made by hand: 8-byte length, the header text, then `data`.
  std::string raw_file(const std::string& name, const std::string& header,
                       const std::string& data) {
    std::string blob(8, '\0');
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) blob[i] = char((n >> (8 * i)) & 0xff);
    const std::string p = path(name);
    write_file_atomic(p, blob + header + data);
    return p;
  }
  testing::TempDir dir_;
};

TEST_F(SafeTensors, EveryDtypeRoundTripsBitForBit) {
  const float f32[3] = {1.5f, -0.f, 3.4e38f};
  const double f64[2] = {1e-300, -2.5};
  const int32_t i32[4] = {-1, 0, 2147483647, -2147483647 - 1};
  const int64_t i64[1] = {-9000000000000000000ll};
  const uint16_t bf16[2] = {0x3f80, 0xc000};
  const uint8_t u8[5] = {0, 1, 2, 254, 255};
  const std::string p = path("all.safetensors");
  write_safetensors(p,
                    {{"a.f32", DType::F32, {3}, f32},
                     {"b.f64", DType::F64, {2, 1}, f64},
                     {"c.i32", DType::I32, {2, 2}, i32},
                     {"d.i64", DType::I64, {1}, i64},
                     {"e.bf16", DType::BF16, {2}, bf16},
                     {"f.u8", DType::U8, {5}, u8},
                     {"g.empty", DType::F32, {0, 4}, nullptr}},
                    {{"config", "{\"x\": 1}"}, {"note", "any string"}});
  SafeTensorsReader r(p);
  EXPECT_EQ(r.names().size(), 7u);
  EXPECT_EQ(r.meta("config"), "{\"x\": 1}");
  EXPECT_EQ(r.meta("note"), "any string");
  EXPECT_EQ(std::memcmp(r.raw("a.f32"), f32, sizeof f32), 0);
  EXPECT_EQ(std::memcmp(r.raw("b.f64"), f64, sizeof f64), 0);
  EXPECT_EQ(std::memcmp(r.raw("c.i32"), i32, sizeof i32), 0);
  EXPECT_EQ(std::memcmp(r.raw("d.i64"), i64, sizeof i64), 0);
  EXPECT_EQ(std::memcmp(r.raw("e.bf16"), bf16, sizeof bf16), 0);
  EXPECT_EQ(std::memcmp(r.raw("f.u8"), u8, sizeof u8), 0);
  EXPECT_EQ(r.info("b.f64").shape, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(r.info("g.empty").numel(), 0);
  std::vector<int64_t> shape;
  EXPECT_EQ(r.read_i32("c.i32", &shape), std::vector<int32_t>(i32, i32 + 4));
  EXPECT_EQ(shape, (std::vector<int64_t>{2, 2}));
  // The header is padded to a multiple of 8 so the data section is aligned.
  const std::string blob = read_file(p);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(blob[i]);
  EXPECT_EQ(n % 8, 0u);
}

TEST_F(SafeTensors, ReadingWithTheWrongDtypeOrShapeNamesBoth) {
  const float x[6] = {};
  const std::string p = path("x.safetensors");
  write_safetensors(p, {{"w", DType::F32, {2, 3}, x}}, {});
  SafeTensorsReader r(p);
  float out[6];
  testing::expect_error(
      [&] {
        r.read_into("w", DType::F32, {3, 2}, out);
      },
      {"x.safetensors", "'w'", "[2, 3]", "[3, 2]"});
  testing::expect_error([&] { r.read_f64("w"); }, {"'w'", "F32", "F64"});
  testing::expect_error([&] { r.info("missing"); }, {"'missing'", "not found"});
  testing::expect_error([&] { r.meta("config"); }, {"__metadata__", "config"});
}

// Hugging Face checkpoints store BF16 or F16: read_as_f32 widens both exactly (the values
// below are exact in each type: 1, -2, 0.5, 65504 = F16's largest, 2^-24 = its smallest
// subnormal) and refuses other dtypes and shapes by name.
TEST_F(SafeTensors, Bf16AndF16ReadAsF32) {
  const uint16_t f16[5] = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001};
  const uint16_t bf16[3] = {0x3f80, 0xc000, 0x3f00};
  const float f32[2] = {1.25f, -3.f};
  const int32_t i32[1] = {1};
  const std::string p = path("half.safetensors");
  write_safetensors(p,
                    {{"h", DType::F16, {5}, f16},
                     {"b", DType::BF16, {3, 1}, bf16},
                     {"f", DType::F32, {2}, f32},
                     {"i", DType::I32, {1}, i32}},
                    {});
  SafeTensorsReader r(p);
  EXPECT_EQ(r.info("h").dtype, DType::F16);
  float h[5], b[3], f[2];
  r.read_as_f32("h", {5}, h);
  r.read_as_f32("b", {3, 1}, b);
  r.read_as_f32("f", {2}, f);
  EXPECT_EQ(std::vector<float>(h, h + 5),
            (std::vector<float>{1.f, -2.f, 0.5f, 65504.f, 5.9604644775390625e-8f}));
  EXPECT_EQ(std::vector<float>(b, b + 3), (std::vector<float>{1.f, -2.f, 0.5f}));
  EXPECT_EQ(std::vector<float>(f, f + 2), (std::vector<float>{1.25f, -3.f}));
  testing::expect_error([&] { r.read_as_f32("i", {1}, f); }, {"'i'", "I32", "F16"});
  testing::expect_error([&] { r.read_as_f32("h", {4}, h); }, {"'h'", "[5]", "[4]"});
}

TEST_F(SafeTensors, MalformedFilesGiveOneClearError) {
  const std::string four(16, '\0');  // room for 4 floats
  struct Case {
    std::string header;
    std::string data;
    std::vector<std::string> parts;
  };
  const Case cases[] = {
      {"not json", four, {"not valid JSON"}},
      {"[1, 2]", four, {"must be a JSON object"}},
      {R"({"t": {"dtype": "F32", "shape": [4]}})", four, {"'t'", "data_offsets"}},
      {R"({"t": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}})",
       four,
       {"'t'", "unsupported dtype"}},
      {R"({"t": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})",
       four,
       {"'t'", "bad shape entry"}},
      {R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}})",
       four,
       {"'t'", "truncated or corrupt", "[0, 32)", "16 bytes"}},
      {R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}})",
       four,
       {"'t'", "truncated or corrupt"}},
      {R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})",
       four,
       {"'t'", "16 bytes for shape [3]", "expected 12"}},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       four,
       {"overlap"}},
      {R"({"__metadata__": {"config": 3}})", four, {"__metadata__.config", "must be a string"}},
      {R"({"__metadata__": [1]})", four, {"__metadata__ must be an object"}},
      // Shapes whose element count or byte size wraps around 64 bits (a wrapped product could
      // pass the size check).
      {R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}})",
       four,
       {"'t'", "does not fit in 64 bits"}},
      {R"({"t": {"dtype": "F32", "shape": [3074457345618258603, 3], "data_offsets": [0, 16]}})",
       four,
       {"'t'", "does not fit in 64 bits"}},
      {R"({"t": {"dtype": "F32", "shape": [2305843009213693952], "data_offsets": [0, 16]}})",
       four,
       {"'t'", "does not fit in 64 bits"}},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string p = raw_file(fmt::format("bad{}.safetensors", i++), c.header, c.data);
    std::vector<std::string> parts = c.parts;
    parts.push_back(p);  // every message names the file
    testing::expect_error([&] { SafeTensorsReader r(p); }, parts);
  }
}

TEST_F(SafeTensors, DeepOrHugeHeaderValuesGiveShortErrors) {
  // 100 000 nested arrays as a dtype used to overflow the stack when the error message dumped
  // the value; a 2 MB dtype string made a 2 MB error line.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string p1 =
      raw_file("deep.safetensors",
               R"({"t": {"dtype": )" + deep + R"(, "shape": [4], "data_offsets": [0, 16]}})",
               std::string(16, '\0'));
  testing::expect_error([&] { SafeTensorsReader r(p1); }, {"deep.safetensors", "nested deeper"});
  const std::string p2 = raw_file("long.safetensors",
                                  R"({"t": {"dtype": ")" + std::string(2 << 20, 'Q') +
                                      R"(", "shape": [4], "data_offsets": [0, 16]}})",
                                  std::string(16, '\0'));
  try {
    SafeTensorsReader r(p2);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_LT(e.message().size(), 300u);
    EXPECT_NE(e.message().find("unsupported dtype"), std::string::npos) << e.message();
  }
}

TEST_F(SafeTensors, TruncatedOrForeignFilesAreRefused) {
  const std::string tiny = path("tiny.safetensors");
  write_file_atomic(tiny, std::string("abc"));
  testing::expect_error([&] { SafeTensorsReader r(tiny); },
                        {"tiny.safetensors", "3 bytes", "expected at least 8"});
  // A header length larger than the file (a text file read as safetensors).
  const std::string text = path("text.safetensors");
  write_file_atomic(text, std::string("hello, this is not a checkpoint at all"));
  testing::expect_error([&] { SafeTensorsReader r(text); },
                        {"text.safetensors", "not a safetensors file or truncated"});
  testing::expect_error([&] { SafeTensorsReader r(path("none.safetensors")); },
                        {"none.safetensors", "cannot open"});
}

}  // namespace moe
