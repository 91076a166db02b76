// libFuzzer target: any safetensors file (core/safetensors.h SafeTensorsReader): the header
// length, the JSON header (dtypes, shapes, offsets, overlap, __metadata__), then every tensor
// read as f32 (F32/BF16/F16) or copied raw with its own dtype and shape.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "moe/core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static moe::fuzz::InputFile file(".safetensors");
  const std::string& path = file.write(data, size);
  moe::fuzz::run_guarded("SafeTensorsReader", [&] {
    moe::SafeTensorsReader r(path);
    for (const auto& [k, v] : r.metadata()) (void)r.meta(k);
    for (const std::string& name : r.names()) {
      const moe::TensorInfo& t = r.info(name);
      const int64_t n = t.numel();
      if (n > moe::fuzz::kMaxFuzzReadElements) continue;
      (void)moe::shape_str(t.shape);
      std::vector<unsigned char> raw(std::size_t(n) * moe::dtype_size(t.dtype) + 1);
      r.read_into(name, t.dtype, t.shape, raw.data());
      if (t.dtype == moe::DType::F32 || t.dtype == moe::DType::BF16 || t.dtype == moe::DType::F16) {
        std::vector<float> f(std::size_t(n) + 1);
        r.read_as_f32(name, t.shape, f.data());
      }
    }
  });
  return 0;
}
