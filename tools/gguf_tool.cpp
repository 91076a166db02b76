// moe_gguf_tool: the GGUF layer from the command line, for tests/python/test_gguf_quants.py, which
// checks it against gguf-py (test-only; not part of `moe`).
//
//   moe_gguf_tool dequant IN.gguf OUT.safetensors
//       every tensor of IN dequantized to F32, shape = reversed ne (row-major, as numpy reads it)
//   moe_gguf_tool dump IN.gguf
//       JSON on stdout: {"version", "alignment", "metadata": [{"key", "type": [type names, the
//       element type after "array"], "value"}] in file order, "tensors": [{"name", "type", "ne",
//       "offset" (absolute)}]}; invalid UTF-8 in strings is replaced (U+FFFD)
//   moe_gguf_tool quantize IN.safetensors TYPE OUT.gguf
//       every F32 tensor of IN quantized to TYPE (F32, F16, BF16, Q8_0), ne = reversed shape, in
//       IN's name order, plus fixed metadata: general.architecture = "moe-test" (string),
//       general.name = IN's file name (string), test.type = TYPE (string), test.count = number
//       of tensors (u32), test.scale = 0.5 (f32), test.flag = true (bool), test.ids = [1, -2, 3]
//       (i32 array), test.words = ["a", "bc"] (string array).
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/safetensors.h"
#include "moe/formats/gguf.h"

namespace {

using moe::formats::GgmlType;

std::vector<int64_t> reversed(std::vector<int64_t> v) {
  std::reverse(v.begin(), v.end());
  return v;
}

void dequant(const std::string& in, const std::string& out) {
  moe::formats::GgufFile f(in);
  std::vector<std::vector<float>> values;
  values.reserve(f.tensors().size());  // TensorRef points into these: no reallocation
  std::vector<moe::TensorRef> refs;
  for (const moe::formats::GgufTensor& t : f.tensors()) {
    values.push_back(f.read_f32(t));
    refs.push_back({t.name, moe::DType::F32, reversed(t.ne), values.back().data()});
  }
  moe::write_safetensors(out, refs, {});
}

// One metadata value as JSON, read through the typed getters (what a consumer sees).
nlohmann::json value_json(const moe::formats::GgufFile& f, const std::string& key) {
  using moe::formats::GgufValueType;
  const GgufValueType t = *f.type_of(key);
  if (t == GgufValueType::kArray) {
    const GgufValueType e = *f.array_type(key);
    if (e == GgufValueType::kString) return f.get_string_array(key);
    if (e == GgufValueType::kBool) return f.get_bool_array(key);
    if (e == GgufValueType::kF32 || e == GgufValueType::kF64) return f.get_float_array(key);
    return f.get_int_array(key);
  }
  if (t == GgufValueType::kString) return f.get_string(key);
  if (t == GgufValueType::kBool) return f.get_bool(key);
  if (t == GgufValueType::kF32 || t == GgufValueType::kF64) return f.get_float(key);
  return f.get_int(key);
}

const char* value_type_name(moe::formats::GgufValueType t) {
  static const char* const kNames[] = {"UINT8",  "INT8",    "UINT16", "INT16",  "UINT32",
                                       "INT32",  "FLOAT32", "BOOL",   "STRING", "ARRAY",
                                       "UINT64", "INT64",   "FLOAT64"};
  return kNames[static_cast<uint32_t>(t)];
}

void dump(const std::string& in) {
  moe::formats::GgufFile f(in);
  nlohmann::json j;
  j["version"] = f.version();
  j["alignment"] = f.alignment();
  j["metadata"] = nlohmann::json::array();
  for (const std::string& key : f.keys()) {
    nlohmann::json types = {value_type_name(*f.type_of(key))};
    if (f.array_type(key)) types.push_back(value_type_name(*f.array_type(key)));
    j["metadata"].push_back({{"key", key}, {"type", types}, {"value", value_json(f, key)}});
  }
  j["tensors"] = nlohmann::json::array();
  for (const moe::formats::GgufTensor& t : f.tensors())
    j["tensors"].push_back({{"name", t.name},
                            {"type", moe::formats::ggml_type_name(t.type)},
                            {"ne", t.ne},
                            {"offset", t.file_offset}});
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

GgmlType parse_type(const std::string& s) {
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0})
    if (moe::formats::ggml_type_name(t) == s) return t;
  MOE_FAIL("moe_gguf_tool: type '{}' cannot be written; expected F32, F16, BF16 or Q8_0", s);
}

void quantize(const std::string& in, const std::string& type_name, const std::string& out) {
  const GgmlType type = parse_type(type_name);
  moe::SafeTensorsReader st(in);
  moe::formats::GgufWriter w;
  const std::vector<std::string> names = st.names();
  w.add_string("general.architecture", "moe-test");
  w.add_string("general.name", std::filesystem::path(in).filename().string());
  w.add_string("test.type", type_name);
  w.add_u32("test.count", uint32_t(names.size()));
  w.add_f32("test.scale", 0.5f);
  w.add_bool("test.flag", true);
  w.add_i32_array("test.ids", {1, -2, 3});
  w.add_string_array("test.words", {"a", "bc"});
  for (const std::string& name : names) {
    const moe::TensorInfo& info = st.info(name);
    MOE_CHECK(info.dtype == moe::DType::F32, "{}: tensor '{}' is {}, expected F32", in, name,
              moe::dtype_name(info.dtype));
    w.add_tensor(name, type, reversed(info.shape), [&st, name, type](uint8_t* dst) {
      const std::vector<float> v = st.read_f32(name);  // a copy: the map may be unaligned
      moe::formats::quantize(type, v.data(), dst, int64_t(v.size()));
    });
  }
  w.write(out);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() == 2 && a[0] == "dump") {
      dump(a[1]);
      return 0;
    }
    if (a.size() == 3 && a[0] == "dequant") {
      dequant(a[1], a[2]);
      return 0;
    }
    if (a.size() == 4 && a[0] == "quantize") {
      quantize(a[1], a[2], a[3]);
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_gguf_tool: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: %s dump IN.gguf\n"
               "       %s dequant IN.gguf OUT.safetensors\n"
               "       %s quantize IN.safetensors TYPE OUT.gguf\n",
               argv[0], argv[0], argv[0]);
  return 2;
}
