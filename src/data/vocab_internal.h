// Internals shared by the vocab tokenizers (not a public header).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "moe/data/vocab.h"

namespace moe::data::detail {

// Strict base64 (tokenizer.cpp), used for every tokenizer blob.
std::string base64_encode(std::string_view in);
std::string base64_decode(std::string_view in, const char* what);

// llama.cpp's unicode_len_utf8: the sequence length a lead byte announces (1 for a
// continuation byte), used to cut text into "characters" before merging.
inline std::size_t lead_len(char c) {
  static constexpr std::size_t kLookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLookup[static_cast<uint8_t>(c) >> 4];
}

// A BPE pre-tokenizer: llama.cpp's regex chain for one tokenizer.ggml.pre, run with PCRE2.
class PreTokenizer {
 public:
  explicit PreTokenizer(const std::string& pre);
  ~PreTokenizer();
  // The words of text, each already mapped through the GPT-2 byte alphabet (what llama.cpp's
  // unicode_regex_split(text, regexes, byte_encode=true) returns).
  std::vector<std::string> split(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::data::detail
