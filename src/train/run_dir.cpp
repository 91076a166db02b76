#include "moe/train/run_dir.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "moe/core/error.h"

namespace moe {

namespace fs = std::filesystem;

std::vector<std::string> run_files_in(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file(ec)) continue;
    if (name == "metrics.jsonl" || e.path().extension() == ".safetensors") found.push_back(name);
  }
  std::sort(found.begin(), found.end());
  return found;
}

void claim_run_dir(const std::string& dir, bool overwrite, const std::vector<std::string>& keep) {
  const std::vector<std::string> found = run_files_in(dir);
  if (found.empty()) return;
  if (overwrite) {
    for (const std::string& f : found) {
      std::error_code ec;
      const bool kept = std::any_of(keep.begin(), keep.end(), [&](const std::string& k) {
        std::error_code e2;
        return !k.empty() && fs::equivalent(fs::path(dir) / f, k, e2);
      });
      if (kept) continue;
      fs::remove(fs::path(dir) / f, ec);
      MOE_CHECK(!ec, "{}/{}: cannot remove it to overwrite the run ({})", dir, f, ec.message());
    }
    return;
  }
  std::string list;
  for (const std::string& f : found) {
    std::string what = f;
    if (f == "metrics.jsonl") {
      std::ifstream in(fs::path(dir) / f);
      const auto lines = std::count(std::istreambuf_iterator<char>(in), {}, '\n');
      what += fmt::format(" ({} lines)", lines);
    }
    list += (list.empty() ? "" : ", ") + what;
  }
  const bool has_last = std::find(found.begin(), found.end(), "last.safetensors") != found.end();
  MOE_FAIL(
      "train.out_dir {} already holds a run ({}): give --overwrite to replace it, {}or choose "
      "another train.out_dir",
      dir, list,
      has_last ? fmt::format("--resume {}/last.safetensors to continue it, ", dir)
               : std::string("--resume CHECKPOINT to continue it, "));
}

}  // namespace moe
