#include "moe/core/error.h"

#include <cstring>

namespace moe {

// An error is one line a person reads: a bad value quoted in it (a 20 MB string from a hostile
// file) must not make it megabytes long.
static constexpr std::size_t kMaxMessage = 1000;

// A value quoted from a file may hold a newline or other control characters (a token's text, a
// merge): written as escapes, so the message stays one line and prints nothing raw to a terminal.
static std::string escape_controls(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u != 0x7f) {
      out += c;
      continue;
    }
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else
      out += fmt::format("\\x{:02x}", u);
  }
  return out;
}

void fail_at(const char* file, int line, const std::string& raw) {
  // Keep only the path below src/ so messages do not leak the build machine's layout.
  const char* rel = std::strstr(file, "src/");
  const std::string where = fmt::format("{}:{}", rel ? rel : file, line);
  const std::string message = escape_controls(raw);
  if (message.size() <= kMaxMessage) throw Error(message, where);
  const std::size_t head = kMaxMessage - 200, tail = 150;
  throw Error(fmt::format("{} … [{} characters cut] … {}", message.substr(0, head),
                          message.size() - head - tail, message.substr(message.size() - tail)),
              where);
}

}  // namespace moe
