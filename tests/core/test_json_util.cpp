// Bounded JSON: nesting is refused at a fixed depth with the source named (a 100 000-deep value
// must not reach a recursive walk), error text about a value stays short however large or deep
// the value is, and an error message as a whole is capped.
#include <gtest/gtest.h>

#include "../error_util.h"
#include "moe/core/json_util.h"

namespace moe {

static std::string nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

TEST(ParseJson, DepthUpToTheLimitParsesBeyondItIsRefused) {
  // kMaxJsonDepth levels of arrays parse; one more is refused, and so is a stack-breaking depth.
  nlohmann::json j = parse_json(nested(kMaxJsonDepth), "ok.json");
  int depth = 0;
  for (const nlohmann::json* p = &j; p->is_array(); p = p->empty() ? nullptr : &(*p)[0]) {
    ++depth;
    if (p->empty()) break;
  }
  EXPECT_EQ(depth, kMaxJsonDepth);
  testing::expect_error([] { parse_json(nested(kMaxJsonDepth + 1), "deep.json"); },
                        {"deep.json", "nested deeper than 64 levels"});
  testing::expect_error([] { parse_json(nested(100000), "deeper.json"); },
                        {"deeper.json", "nested deeper"});
  testing::expect_error([&] { parse_json("{\"a\": [1, 2", "cut.json"); },
                        {"cut.json", "not valid JSON"});
  EXPECT_EQ(parse_json(R"({"a": {"b": [1, 2.5, "x"]}})", "x")["a"]["b"][1], 2.5);
}

TEST(JsonExcerpt, ShortWhateverTheValue) {
  EXPECT_EQ(json_excerpt(nlohmann::json("F32")), "\"F32\"");
  EXPECT_EQ(json_excerpt(nlohmann::json::parse(R"({"a": [1, 2]})")), R"({"a": [1, 2]})");
  const std::string big(20 << 20, 'x');
  const std::string e = json_excerpt(nlohmann::json(big));
  EXPECT_LE(e.size(), 60u + 3u);  // 60 characters and the ellipsis (3 bytes in UTF-8)
  EXPECT_EQ(e.substr(0, 4), "\"xxx");
  // A deep value (built without parse_json's limit) prints its first levels only. Built from the
  // outside in, without copies: array({deep}) copies the whole value each time, recursively,
  // which overflowed the stack under ASan (larger frames) at 10,000 levels.
  nlohmann::json deep = nlohmann::json::array();
  nlohmann::json* inner = &deep;
  for (int i = 0; i < 10000; ++i) {
    inner->push_back(nlohmann::json::array());
    inner = &inner->back();
  }
  EXPECT_EQ(json_excerpt(deep), "[[[[...]]]]");
}

TEST(Error, MessagesAreCapped) {
  const std::string big(5 << 20, 'y');
  try {
    MOE_FAIL("bad value {} in field x", big);
  } catch (const Error& e) {
    EXPECT_LT(e.message().size(), 1100u);
    EXPECT_NE(e.message().find("characters cut"), std::string::npos);
    EXPECT_NE(e.message().find("in field x"), std::string::npos);  // the end survives
  }
}

}  // namespace moe
