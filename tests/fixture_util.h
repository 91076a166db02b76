// Reading the PyTorch reference fixtures (tests/fixtures/*.safetensors) in the C++ tests.
#pragma once
#include <string>
#include <vector>

#include "moe/core/safetensors.h"

namespace moe::testing {

inline std::string fixture_path(const std::string& name) {
  return std::string(MOE_SOURCE_DIR) + "/tests/fixtures/" + name;
}

// A tensor as doubles, whether stored F32 (inputs, parameters) or F64 (reference outputs).
inline std::vector<double> as_double(const SafeTensorsReader& r, const std::string& name) {
  if (r.info(name).dtype == DType::F64) return r.read_f64(name);
  std::vector<float> f = r.read_f32(name);
  return std::vector<double>(f.begin(), f.end());
}

}  // namespace moe::testing
