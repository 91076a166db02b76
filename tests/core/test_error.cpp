// moe::Error messages are one line: control characters quoted from a file are escaped.
#include <gtest/gtest.h>

#include <string>

#include "moe/core/error.h"

namespace {

std::string message_of(const std::string& quoted) {
  try {
    MOE_FAIL("token is '{}', expected <0xXX>", quoted);
  } catch (const moe::Error& e) {
    return e.message();
  }
  return "no error";
}

TEST(Error, ControlCharactersInAQuotedValueAreEscaped) {
  // Fuzz finding F3: a tokenizer blob's byte token "-\nss**" made a two-line error.
  EXPECT_EQ(message_of("-\nss**"), "token is '-\\nss**', expected <0xXX>");
  EXPECT_EQ(message_of(std::string("a\r\tb\x01\x7f", 6)),
            "token is 'a\\r\\tb\\x01\\x7f', expected <0xXX>");
  EXPECT_EQ(message_of(std::string("nul\0x", 5)), "token is 'nul\\x00x', expected <0xXX>");
  // UTF-8 passes unchanged.
  EXPECT_EQ(message_of("▁thé"), "token is '▁thé', expected <0xXX>");
}

TEST(Error, ALongMessageIsCutToAboutAThousandCharacters) {
  const std::string m = message_of(std::string(20'000'000, 'x'));
  EXPECT_LT(m.size(), 1100u);
  EXPECT_NE(m.find("characters cut"), std::string::npos);
}

}  // namespace
