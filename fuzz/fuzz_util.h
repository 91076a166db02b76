// Shared by the libFuzzer targets in fuzz/ (docs/RELIABILITY.md): what counts as a finding.
//
// A parser of outside data may refuse its input only with moe::Error (one clear line naming the
// file and field, at most ~1000 characters: core/error.cpp cuts longer ones). Any other way out
// is a finding, reported by aborting so that libFuzzer saves the input:
//   - a crash, an ASan report (overflow, use after free, leak) or a UBSan report (signed
//     overflow, bad shift, misaligned load, …): the sanitizers abort by themselves;
//   - an allocation above -rss_limit_mb / -malloc_limit_mb: a hostile size was believed before
//     it was checked against the bytes that back it (libFuzzer reports out-of-memory);
//   - an exception that is not moe::Error (nlohmann's type_error, std::out_of_range,
//     std::bad_alloc, …): the user would see a message without file or field (issue 18 #13);
//   - a moe::Error whose message has a newline or is longer than kMaxFuzzMessage.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "moe/core/error.h"

namespace moe::fuzz {

// core/error.cpp cuts messages to 1000 characters; the location suffix adds a few more.
inline constexpr std::size_t kMaxFuzzMessage = 1100;

// Runs f(); returns true when it returned normally, false when it refused the input with a
// well-formed moe::Error, and aborts (a finding) on anything else.
template <class F>
bool run_guarded(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const moe::Error& e) {
    const std::string_view m = e.what();
    if (m.find('\n') != std::string_view::npos || m.size() > kMaxFuzzMessage) {
      std::fprintf(stderr,
                   "FINDING in %s: error message of %zu characters or with a newline:\n%.*s\n",
                   what, m.size(), int(m.size() > 4000 ? 4000 : m.size()), m.data());
      std::abort();
    }
    return false;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING in %s: exception that is not moe::Error: %s\n", what, e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "FINDING in %s: unknown exception\n", what);
    std::abort();
  }
}

// A file holding the fuzz input, for APIs that take a path. One per process (libFuzzer's -jobs
// and -fork run several processes), rewritten for each input, removed at exit.
class InputFile {
 public:
  explicit InputFile(const std::string& suffix) {
    const char* tmp = std::getenv("TMPDIR");
    path_ = std::string(tmp && *tmp ? tmp : "/tmp") + "/moe_fuzz_" + std::to_string(::getpid()) +
            "_" + std::to_string(counter()++) + suffix;
  }
  ~InputFile() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& write(const uint8_t* data, std::size_t size) {
    write_at(path_, data, size);
    return path_;
  }
  static void write_at(const std::string& path, const uint8_t* data, std::size_t size) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
    out.close();
    if (!out) {
      std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
      std::abort();
    }
  }
  const std::string& path() const { return path_; }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::string path_;
};

// Reading every tensor a hostile file names would be slow, not wrong: big ones are skipped (their
// size checks already ran when the file was opened).
inline constexpr int64_t kMaxFuzzReadElements = int64_t{1} << 20;

}  // namespace moe::fuzz
