#include "moe/core/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moe/core/error.h"

namespace moe {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), "{}: cannot open for reading ({})", path, std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool file_exists(const std::string& path) { return std::filesystem::exists(path); }

int remove_stale_temp_files(const std::string& dir) {
  std::error_code ec;
  int removed = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::size_t at = name.rfind(".tmp.");
    if (at == std::string::npos || !e.is_regular_file(ec)) continue;
    const std::string digits = name.substr(at + 5);
    if (digits.empty() || digits.size() > 9 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(digits));
    // kill(pid, 0) probes without signalling: ESRCH means no such process.
    if (pid > 0 && ::kill(pid, 0) == -1 && errno == ESRCH && std::filesystem::remove(e.path(), ec))
      ++removed;
  }
  return removed;
}

void make_dirs(const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  MOE_CHECK(!ec, "{}: cannot create directory ({})", path, ec.message());
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  MOE_CHECK(f != nullptr, "{}: cannot open for writing ({})", tmp, std::strerror(errno));
  try {
    write(f);
    MOE_CHECK(std::fflush(f) == 0 && !std::ferror(f), "{}: write failed ({})", tmp,
              std::strerror(errno));
    MOE_CHECK(::fsync(::fileno(f)) == 0, "{}: fsync failed ({})", tmp, std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  std::fclose(f);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    MOE_FAIL("{}: cannot rename temporary file into place ({})", path, std::strerror(e));
  }
  // Make the rename itself durable.
  // (A path, not `dir = "."`: GCC 12 flags that assignment with a false -Wrestrict.)
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = std::filesystem::path(".");
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  write_file_atomic(path, [&](std::FILE* f) {
    MOE_CHECK(std::fwrite(contents.data(), 1, contents.size(), f) == contents.size(),
              "{}: short write", path);
  });
}

void append_line_atomic(const std::string& path, const std::string& line) {
  const std::string old = file_exists(path) ? read_file(path) : "";
  write_file_atomic(path, old + line + "\n");
}

}  // namespace moe
