// The text of a generation as it may be printed: tokens arrive as byte strings (a byte token or
// a BPE piece may be part of a UTF-8 character), and the output must
//   - show each character as soon as its bytes are complete, and
//   - end before the first occurrence of any stop string, which itself is never shown — even
//     when it spans tokens or starts inside one.
// So push() holds back (a) the longest tail of the text that is a proper prefix of some stop
// string (a stop occurrence that is not complete yet starts inside that tail: every occurrence
// is found whole in the held text) and (b) a trailing incomplete UTF-8 sequence that later bytes
// can still complete. Bytes that can never form a character (an invalid lead or a stray
// continuation) are passed through as they are. What is held is at most the longest stop string
// plus a token's bytes: the text already shown is not kept.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace moe::infer {

class TextStream {
 public:
  // Errors on an empty stop string (it would match before any text).
  explicit TextStream(std::vector<std::string> stops = {});

  // Appends one token's bytes; returns the text that is now safe to show (may be empty). After
  // a stop string appears, returns the text before it, stopped() turns true and further pushes
  // return "".
  std::string push(std::string_view bytes);
  // The end of generation without a stop: everything still held, as it is.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // bytes received and not yet returned
  bool stopped_ = false;
};

// Bytes at the end of s that begin a UTF-8 character whose remaining bytes have not arrived
// (0..3); 0 when s ends on a whole character or on bytes that no continuation can complete.
std::size_t incomplete_utf8_tail(std::string_view s);

}  // namespace moe::infer
