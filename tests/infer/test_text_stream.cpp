// TextStream (infer/text_stream.h) against hand-written expectations: which piece of text each
// token's push() releases, for UTF-8 characters split across tokens and stop strings that span
// tokens, start inside one or overlap themselves.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../error_util.h"
#include "moe/infer/text_stream.h"

namespace moe::infer {
namespace {

// The pieces push() returns for each of `tokens`, then finish()'s.
std::vector<std::string> stream(const std::vector<std::string>& stops,
                                const std::vector<std::string>& tokens) {
  TextStream s(stops);
  std::vector<std::string> out;
  for (const std::string& t : tokens) out.push_back(s.push(t));
  out.push_back(s.finish());
  return out;
}

using Pieces = std::vector<std::string>;

TEST(TextStream, ShowsEachUtf8CharacterWhenItsLastByteArrives) {
  // é = C3 A9, € = E2 82 AC, 𝄞 = F0 9D 84 9E, split across tokens.
  EXPECT_EQ(stream({}, {"h", "\xC3", "\xA9", "\xE2\x82", "\xAC", "\xF0", "\x9D\x84", "\x9E!"}),
            (Pieces{"h", "", "\xC3\xA9", "", "\xE2\x82\xAC", "", "", "\xF0\x9D\x84\x9E!", ""}));
  // Bytes no continuation can complete pass through at once; a half character at the end comes
  // out at finish().
  EXPECT_EQ(stream({}, {"\xFF", "a\x80", "\xC0", "b\xE2\x82"}),
            (Pieces{"\xFF", "a\x80", "\xC0", "b", "\xE2\x82"}));
  EXPECT_EQ(incomplete_utf8_tail("ab\xC3"), 1u);
  EXPECT_EQ(incomplete_utf8_tail("\xF0\x9D\x84"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("\xF0\x9D\x84\x9E"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("\x80\x80\x80\x80"), 0u);
}

TEST(TextStream, NeverShowsAStopStringWhereverItFalls) {
  // Across tokens: the tail that may start it is held.
  EXPECT_EQ(stream({"END"}, {"abE", "N", "Dxyz", "more"}), (Pieces{"ab", "", "", "", ""}));
  // Inside one token.
  EXPECT_EQ(stream({"STOP"}, {"helloSTOPworld"}), (Pieces{"hello", ""}));
  // A false start is released once it can no longer begin the stop string.
  EXPECT_EQ(stream({"abc"}, {"ab", "x", "y"}), (Pieces{"", "abx", "y", ""}));
  // Overlapping prefixes: text "aaab" stops after "a".
  EXPECT_EQ(stream({"aab"}, {"a", "a", "a", "b"}), (Pieces{"", "", "a", "", ""}));
  // The earliest of several stop strings wins; the held tail is shown at the end.
  EXPECT_EQ(stream({"zz", "cd"}, {"abcdzz"}), (Pieces{"ab", ""}));
  EXPECT_EQ(stream({"xyz"}, {"abx"}), (Pieces{"ab", "x"}));
  // A stop string that begins with a multibyte character, split inside it.
  EXPECT_EQ(stream({"\xC3\xA9t\xC3\xA9"}, {"un \xC3", "\xA9t\xC3", "\xA9"}),
            (Pieces{"un ", "", "", ""}));
  moe::testing::expect_error([] { TextStream s({"ok", ""}); }, {"--stop", "empty"});
}

}  // namespace
}  // namespace moe::infer
