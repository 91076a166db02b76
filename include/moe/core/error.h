// Always-on checks. MOE_CHECK throws moe::Error carrying the message and file:line; the CLI
// catches it at the top and prints one line. Never use these inside an OpenMP parallel region
// (an exception may not leave one): validate before the region, or collect a flag and check after.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  Error(std::string message, const std::string& where)
      : std::runtime_error(fmt::format("{} [{}]", message, where)), message_(std::move(message)) {}
  // The message without the source location, for tests that match on it.
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

[[noreturn]] void fail_at(const char* file, int line, const std::string& message);

}  // namespace moe

#define MOE_FAIL(...) ::moe::fail_at(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
#define MOE_CHECK(cond, ...)                                                     \
  do {                                                                           \
    if (!(cond)) ::moe::fail_at(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)
