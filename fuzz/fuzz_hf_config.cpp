// libFuzzer target: a Hugging Face model directory's config.json (formats/hf_config.cpp
// hf_config_to_model: architectures, sizes, rope, MoE fields) as formats::open_model reads the
// directory, beside the weights of one of the test fixtures (tests/fixtures/hf_*), so a hostile
// config also drives the tensor name and shape maps and the reads.
// Input: one byte choosing the fixture's weights, then config.json's bytes.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "moe/core/checked_math.h"
#include "moe/formats/model_file.h"

namespace fs = std::filesystem;

namespace {

const char* kFixtures[] = {"hf_deepseek", "hf_llama", "hf_mixtral", "hf_olmoe",
                           "hf_qwen2moe", "hf_qwen3", "hf_qwen3moe"};
constexpr int kNumFixtures = 7;

// One directory per fixture holding links to its weight files (not its config.json).
std::vector<std::string> make_dirs(const std::string& root) {
  std::vector<std::string> dirs;
  for (const char* name : kFixtures) {
    const std::string src = std::string(MOE_SOURCE_DIR) + "/tests/fixtures/" + name;
    const std::string dir = root + "/" + name;
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(src)) {
      const std::string f = e.path().filename().string();
      if (f == "config.json" || f == "reference.safetensors") continue;
      std::error_code ec;
      fs::create_symlink(e.path(), dir + "/" + f, ec);
    }
    dirs.push_back(dir);
  }
  return dirs;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static moe::fuzz::InputFile root(".d");
  static const std::vector<std::string> dirs = make_dirs(root.path());
  if (size == 0) return 0;
  const std::string& dir = dirs[data[0] % kNumFixtures];
  moe::fuzz::InputFile::write_at(dir + "/config.json", data + 1, size - 1);
  moe::fuzz::run_guarded("open_model(hf dir)", [&] {
    auto r = moe::formats::open_model(dir);
    (void)r->config();
    (void)r->architecture();
    for (const moe::formats::SourceTensor& t : r->tensors()) {
      const int64_t n = moe::checked_numel(t.shape, "fuzz");
      if (n > moe::fuzz::kMaxFuzzReadElements) continue;
      std::vector<float> dst(std::size_t(n) + 1);
      r->read(t.our_name, t.shape, dst.data());
    }
  });
  return 0;
}
