// libFuzzer target: a run's config as `moe train --config FILE --set k=v …` reads it
// (train/config.h load_config: depth-bounded JSON, `--set` overrides, every field validated).
// Input: the config file's bytes, then optionally NUL-separated `--set` assignments
// ("{…}\0model.d_model=64\0train.lr=1e-3"). A config that loads must also survive its own
// round trip (to_json → config_from_json), as checkpoints store and reload it.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "moe/train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static moe::fuzz::InputFile file(".json");
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::size_t cut = input.find('\0');
  const std::string text = input.substr(0, cut);
  std::vector<std::string> overrides;
  while (cut != std::string::npos) {
    const std::size_t next = input.find('\0', cut + 1);
    overrides.push_back(input.substr(cut + 1, next == std::string::npos ? next : next - cut - 1));
    cut = next;
  }
  const std::string& path = file.write(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  moe::Config cfg;
  if (!moe::fuzz::run_guarded("load_config", [&] { cfg = moe::load_config(path, overrides); }))
    return 0;
  // A validated config is one we wrote ourselves from here on: refusing it would be a bug.
  try {
    const moe::Config back = moe::config_from_json(cfg.to_json(), "round trip");
    if (back.to_json() != cfg.to_json()) {
      std::fprintf(stderr, "FINDING: config changes in its round trip\n");
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING: a loaded config fails its round trip: %s\n", e.what());
    std::abort();
  }
  return 0;
}
