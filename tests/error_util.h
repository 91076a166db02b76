// Checking error messages in tests: moe::Error must name the file, field or value at fault.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "moe/core/error.h"

namespace moe::testing {

// The what() of the moe::Error f throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Runs f, expects a moe::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected moe::Error";
  } catch (const Error& e) {
    for (const auto& p : parts)
      EXPECT_NE(e.message().find(p), std::string::npos) << "'" << p << "' not in: " << e.what();
  }
}

// One part (a literal: a std::string overload would make {"x"} ambiguous).
inline void expect_error(const std::function<void()>& f, const char* part) {
  expect_error(f, std::vector<std::string>{part});
}

}  // namespace moe::testing
