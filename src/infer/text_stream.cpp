// TextStream (include/moe/infer/text_stream.h): stop strings and whole UTF-8 characters.
#include "moe/infer/text_stream.h"

#include <algorithm>

#include "moe/core/error.h"

namespace moe::infer {

std::size_t incomplete_utf8_tail(std::string_view s) {
  // Walk back over at most 3 continuation bytes (10xxxxxx) to the byte that starts them.
  for (std::size_t i = 1; i <= std::min<std::size_t>(4, s.size()); ++i) {
    const unsigned char b = static_cast<unsigned char>(s[s.size() - i]);
    if ((b & 0xC0) == 0x80) {
      if (i == 4) return 0;  // four continuations: no lead can complete them
      continue;
    }
    // The length the lead byte announces (C0/C1 and F5..FF start nothing valid: length 1).
    const std::size_t need = b >= 0xC2 && b <= 0xDF   ? 2
                             : b >= 0xE0 && b <= 0xEF ? 3
                             : b >= 0xF0 && b <= 0xF4 ? 4
                                                      : 1;
    return need > i ? i : 0;
  }
  return 0;
}

TextStream::TextStream(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const std::string& s : stops_)
    MOE_CHECK(!s.empty(), "--stop: an empty stop string would end generation before any text");
}

std::string TextStream::push(std::string_view bytes) {
  if (stopped_) return "";
  held_ += bytes;
  // The earliest stop occurrence: all of it lies in held_ (see the header).
  std::size_t at = std::string::npos;
  for (const std::string& s : stops_) at = std::min(at, held_.find(s));
  if (at != std::string::npos) {
    std::string out = held_.substr(0, at);
    held_.clear();
    stopped_ = true;
    return out;
  }
  // The longest tail that a stop string starts with.
  std::size_t hold = 0;
  for (const std::string& s : stops_) {
    for (std::size_t k = std::min(s.size() - 1, held_.size()); k > hold; --k) {
      if (std::string_view(held_).substr(held_.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  std::size_t emit = held_.size() - hold;
  emit -= incomplete_utf8_tail(std::string_view(held_).substr(0, emit));
  std::string out = held_.substr(0, emit);
  held_.erase(0, emit);
  return out;
}

std::string TextStream::finish() {
  if (stopped_) return "";
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace moe::infer
