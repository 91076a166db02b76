#include "moe/data/token_data.h"

#include <numbers>

#include "moe/core/error.h"
#include "moe/core/file_io.h"

namespace moe::data {

TokenStream tokenize_text(const Tokenizer& tokenizer, const std::string& text) {
  TokenStream stream;
  stream.ids = tokenizer.encode(text);
  stream.bytes_per_token.resize(stream.ids.size());
  for (std::size_t i = 0; i < stream.ids.size(); ++i) {
    const int b = tokenizer.token_bytes(stream.ids[i]);
    stream.bytes_per_token[i] = static_cast<uint16_t>(b);
    stream.total_bytes += static_cast<uint64_t>(b);
  }
  // Bits per byte is only honest if the tokens account for every byte exactly once. Our own
  // kinds promise it; llama.cpp's SentencePiece and byte-level BPE tokenizers (vocab.h) differ
  // where llama.cpp does (a prefixed space counts one byte the text lacks; invalid UTF-8 in BPE
  // is replaced by U+FFFD), and a model imported with them is measured as llama.cpp measures it.
  const bool exact = tokenizer.kind() == "byte" || tokenizer.kind() == "bpe";
  MOE_CHECK(!exact || stream.total_bytes == text.size(),
            "{} tokenizer: {} tokens stand for {} bytes but the text has {}", tokenizer.kind(),
            stream.ids.size(), stream.total_bytes, text.size());
  return stream;
}

TokenStream tokenize_file(const Tokenizer& tokenizer, const std::string& path) {
  MOE_CHECK(file_exists(path),
            "{}: no such file; prepare the data first (run `moe data fetch brown`)", path);
  return tokenize_text(tokenizer, read_file(path));
}

uint64_t count_bytes(const TokenStream& stream, std::size_t begin, std::size_t end) {
  MOE_CHECK(begin <= end && end <= stream.bytes_per_token.size(),
            "count_bytes: range [{}, {}) outside a stream of {} tokens", begin, end,
            stream.bytes_per_token.size());
  uint64_t sum = 0;
  for (std::size_t i = begin; i < end; ++i) sum += stream.bytes_per_token[i];
  return sum;
}

std::vector<int32_t> token_groups(const TokenStream& stream, const std::vector<uint64_t>& doc_bytes,
                                  const std::vector<int32_t>& group_of) {
  MOE_CHECK(doc_bytes.size() == group_of.size() && !doc_bytes.empty(),
            "token_groups: {} document sizes for {} groups", doc_bytes.size(), group_of.size());
  uint64_t total = 0;
  for (uint64_t b : doc_bytes) total += b;
  MOE_CHECK(total == stream.total_bytes,
            "the documents of the manifest hold {} bytes but the split's text has {}: the split "
            "file and its manifest do not belong together",
            total, stream.total_bytes);
  std::vector<int32_t> out(stream.ids.size());
  std::size_t doc = 0;
  uint64_t end = doc_bytes[0], pos = 0;  // [pos, …) is the next token's first byte
  for (std::size_t i = 0; i < out.size(); ++i) {
    while (pos >= end && doc + 1 < doc_bytes.size()) end += doc_bytes[++doc];
    out[i] = group_of[doc];
    pos += stream.bytes_per_token[i];
  }
  return out;
}

double bits_per_byte(double sum_nats, uint64_t bytes) {
  MOE_CHECK(bytes > 0, "bits_per_byte: no bytes");
  return sum_nats / std::numbers::ln2 / static_cast<double>(bytes);
}

}  // namespace moe::data
