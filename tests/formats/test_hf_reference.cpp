// Hugging Face directories written by an independent PyTorch implementation of each class
// (tools/reference/hf_forward.py, float64, HF tensor names and HF semantics; F32, F16 and BF16
// files, one sharded): read through open_hf_model into our Transformer, the logits match the
// reference. This checks the config mapping and every tensor's place and layout, which a round
// trip through our own writer cannot (a mistake made twice cancels out there).
//
// Tolerance, as in tests/model/test_reference.cpp: the weights are exactly the stored values on
// both sides, so only float32 arithmetic differs; each logit is a chain of O(10) dot products of
// length ≤ 24, relative error ~1e-6 of the largest logit. We allow 2e-5 of the largest
// magnitude (a misplaced tensor moves logits by O(0.1)). The generator asserts that no routing
// decision is within 1e-4 of a tie, so float32 picks the same experts.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "../error_util.h"
#include "../fixture_util.h"
#include "../grad_check.h"
#include "../temp_dir.h"
#include "moe/core/file_io.h"
#include "moe/core/json_util.h"
#include "moe/formats/hf_model.h"
#include "moe/model/transformer.h"

namespace moe::formats {
namespace {

struct RefCase {
  const char* name;
  const char* arch;
};

void PrintTo(const RefCase& c, std::ostream* os) { *os << c.name; }

class HfReference : public ::testing::TestWithParam<RefCase> {};

TEST_P(HfReference, LogitsMatchThePyTorchImplementationOfTheClass) {
  const RefCase c = GetParam();
  const std::string dir = testing::fixture_path(std::string("hf_") + c.name);
  auto r = open_hf_model(dir);
  EXPECT_EQ(r->architecture(), c.arch);
  SafeTensorsReader ref(dir + "/reference.safetensors");
  const std::vector<int32_t> tokens = ref.read_i32("tokens");
  const std::vector<double> want = ref.read_f64("logits");
  const int T = int(tokens.size()), V = r->config().vocab_size;
  ASSERT_EQ(want.size(), std::size_t(T) * V);
  Transformer model(r->config(), 1, T);
  for (Param& p : model.params().all()) r->read(p.name, p.shape, p.w);
  StepInfo info;
  info.training = false;
  info.batch = 1;
  info.seq_len = T;
  model.forward(tokens.data(), nullptr, 1, T, info, 0.f);
  const std::vector<double> got(model.logits(), model.logits() + std::size_t(T) * V);
  EXPECT_TRUE(testing::all_close("logits", got, want, 2e-5 * testing::max_abs(want), 0));
}

INSTANTIATE_TEST_SUITE_P(Classes, HfReference,
                         ::testing::Values(RefCase{"mixtral", "MixtralForCausalLM"},
                                           RefCase{"olmoe", "OlmoeForCausalLM"},
                                           RefCase{"deepseek", "DeepseekForCausalLM"},
                                           RefCase{"llama", "LlamaForCausalLM"},
                                           RefCase{"qwen2moe", "Qwen2MoeForCausalLM"},
                                           RefCase{"qwen3moe", "Qwen3MoeForCausalLM"},
                                           RefCase{"qwen3", "Qwen3ForCausalLM"}),
                         [](const ::testing::TestParamInfo<RefCase>& i) {
                           return std::string(i.param.name);
                         });

// Every key of the PyTorch-written config.json has the same value in ours (floats as the float
// our config holds; null = absent), so the class reads the same model from both.
// num_experts_per_tok means nothing to a dense class, and the dtype is the writer's choice.
void expect_same_config(const std::string& want_path, const std::string& got_path) {
  const nlohmann::json want = parse_json(read_file(want_path), want_path),
                       got = parse_json(read_file(got_path), got_path);
  const bool dense = !want.contains("num_experts") && !want.contains("num_local_experts") &&
                     !want.contains("n_routed_experts");
  for (const auto& [key, v] : want.items()) {
    if (key == "torch_dtype" || (dense && key == "num_experts_per_tok")) continue;
    const nlohmann::json g = got.contains(key) ? got[key] : nlohmann::json(nullptr);
    if (v.is_number_float() || g.is_number_float())
      EXPECT_EQ(float(g.get<double>()), float(v.get<double>())) << key;
    else
      EXPECT_EQ(g, v) << key;
  }
}

// Reader → writer: re-exporting a PyTorch-written directory in its own dtype gives every HF
// tensor byte for byte (widening is exact, so narrowing returns the stored bits), under the
// same names and shapes, and a config.json that agrees with the PyTorch-written one on every key
// it has: export writes what the class reads.
TEST(HfReExport, GivesThePyTorchWrittenTensorsByteForByteAndTheSameConfig) {
  for (const char* c : {"deepseek", "mixtral", "olmoe", "qwen2moe", "qwen3moe", "llama", "qwen3"}) {
    SCOPED_TRACE(c);
    const std::string src = testing::fixture_path(std::string("hf_") + c);
    auto r = open_hf_model(src);
    const std::string dtype = r->tensors()[0].dtype;
    const DType d = dtype == "BF16" ? DType::BF16 : dtype == "F16" ? DType::F16 : DType::F32;
    testing::TempDir tmp;
    write_hf_model(*r, tmp.path, {d, 0});
    auto back = open_hf_model(tmp.path);
    EXPECT_EQ(back->architecture(), r->architecture());
    expect_same_config(src + "/config.json", tmp.path + "/config.json");
    SafeTensorsReader out(tmp.path + "/model.safetensors");
    std::size_t n = 0;
    for (const auto& entry : std::filesystem::directory_iterator(src)) {
      const std::string f = entry.path().string();
      if (f.ends_with(".safetensors") && !f.ends_with("reference.safetensors")) {
        SafeTensorsReader in(f);
        for (const std::string& name : in.names()) {
          const TensorInfo& a = in.info(name);
          ASSERT_TRUE(out.has(name)) << name;
          const TensorInfo& b = out.info(name);
          ASSERT_EQ(b.dtype, a.dtype) << name;
          ASSERT_EQ(b.shape, a.shape) << name;
          ASSERT_EQ(std::memcmp(in.raw(name), out.raw(name), a.end - a.begin), 0) << name;
          ++n;
        }
      }
    }
    EXPECT_EQ(n, out.names().size());
  }
}

}  // namespace
}  // namespace moe::formats
