// moe_gguf_tool: the GGUF layer from the command line, for tests/python/test_gguf_quants.py, which
// checks it against gguf-py (test-only; not part of `moe`).
//
//   moe_gguf_tool dequant IN.gguf OUT.safetensors
//       every tensor of IN dequantized to F32, shape = reversed ne (row-major, as numpy reads it)
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
               "usage: %s dequant IN.gguf OUT.safetensors\n"
               "       %s quantize IN.safetensors TYPE OUT.gguf\n",
               argv[0], argv[0]);
  return 2;
}
