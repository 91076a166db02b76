#include "moe/core/error.h"

#include <cstring>

namespace moe {

// An error is one line a person reads: a bad value quoted in it (a 20 MB string from a hostile
// file) must not make it megabytes long.
static constexpr std::size_t kMaxMessage = 1000;

void fail_at(const char* file, int line, const std::string& message) {
  // Keep only the path below src/ so messages do not leak the build machine's layout.
  const char* rel = std::strstr(file, "src/");
  const std::string where = fmt::format("{}:{}", rel ? rel : file, line);
  if (message.size() <= kMaxMessage) throw Error(message, where);
  const std::size_t head = kMaxMessage - 200, tail = 150;
  throw Error(fmt::format("{} … [{} characters cut] … {}", message.substr(0, head),
                          message.size() - head - tail, message.substr(message.size() - tail)),
              where);
}

}  // namespace moe
