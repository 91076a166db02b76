// moe_st_writer FILE: writes a small safetensors file through moe::write_safetensors whose
// contents are given by formulas, so tests/python/test_safetensors_np.py can check the numpy
// reader in tools/safetensors_np.py against the C++ writer independently. Keep the formulas here
// and in that test in step.
//
//   a        F32 [2,3,4]  a[i] = 0.5*i - 3
//   b        F64 [5]      b[i] = 1/(i+1)
//   c        I32 [3,2]    c[i] = i*i - 7
//   empty    F32 [0,4]
//   scalar   F32 []       42.25
//   layers.0.ffn.experts.w_up  F32 [4,3,2]  sinf((float)i)   (computed in float)
//   __metadata__: config = {"model": {"d_model": 8}}, step = 17
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "moe/core/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT.safetensors\n", argv[0]);
    return 2;
  }
  std::vector<float> a(2 * 3 * 4);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = 0.5f * float(i) - 3.0f;
  std::vector<double> b(5);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = 1.0 / double(i + 1);
  std::vector<int32_t> c(3 * 2);
  for (std::size_t i = 0; i < c.size(); ++i) c[i] = int32_t(i * i) - 7;
  const float scalar = 42.25f;
  std::vector<float> w(4 * 3 * 2);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::sin(float(i));
  static const float kEmptyDummy = 0.0f;  // never read: 0 bytes

  const std::map<std::string, std::string> meta = {
      {"config", "{\"model\": {\"d_model\": 8}}"},
      {"step", "17"},
  };
  try {
    moe::write_safetensors(argv[1],
                           {
                               {"a", moe::DType::F32, {2, 3, 4}, a.data()},
                               {"b", moe::DType::F64, {5}, b.data()},
                               {"c", moe::DType::I32, {3, 2}, c.data()},
                               {"empty", moe::DType::F32, {0, 4}, &kEmptyDummy},
                               {"scalar", moe::DType::F32, {}, &scalar},
                               {"layers.0.ffn.experts.w_up", moe::DType::F32, {4, 3, 2}, w.data()},
                           },
                           meta);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_st_writer: %s\n", e.what());
    return 1;
  }
  return 0;
}
