#include "moe/core/error.h"

#include <cstring>

namespace moe {

void fail_at(const char* file, int line, const std::string& message) {
  // Keep only the path below src/ so messages do not leak the build machine's layout.
  const char* rel = std::strstr(file, "src/");
  throw Error(message, fmt::format("{}:{}", rel ? rel : file, line));
}

}  // namespace moe
