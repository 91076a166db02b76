// A text file as one stream of token ids, with the bytes of text each token stands for, so that
// losses can be reported in bits per byte independently of the tokenizer:
//   bpb = Σ nats over the predicted tokens / ln 2 / Σ bytes_per_token over those same tokens.
// The whole split is held in memory (the Brown train split is ~4 MB of text), which keeps
// batching trivial: a training window is any slice ids[i, i + T + 1).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/data/tokenizer.h"

namespace moe::data {

struct TokenStream {
  std::vector<int32_t> ids;               // [n] token ids, in text order
  std::vector<uint16_t> bytes_per_token;  // [n] tokenizer.token_bytes(ids[i])
  uint64_t total_bytes = 0;               // Σ bytes_per_token == the text's size in bytes
};

// Encodes text in one piece. Checks the byte-count identity (Σ bytes_per_token == text.size())
// for the kinds that promise it ("byte", "bpe"; see tokenizer.h for llama.cpp's).
TokenStream tokenize_text(const Tokenizer& tokenizer, const std::string& text);

// tokenize_text over a whole file (e.g. <data_dir>/train.txt). A missing file is an error that
// says to prepare the data first (`moe data fetch brown`).
TokenStream tokenize_file(const Tokenizer& tokenizer, const std::string& path);

// Σ bytes_per_token over tokens [begin, end): the denominator of bits per byte when those are
// the predicted tokens.
uint64_t count_bytes(const TokenStream& stream, std::size_t begin, std::size_t end);

// The group of each token's document ([n]; a token belongs to the document holding its first
// byte; a token of no bytes, to the document of the next byte). doc_bytes must sum to
// stream.total_bytes (checked: the split and its manifest must match).
std::vector<int32_t> token_groups(const TokenStream& stream, const std::vector<uint64_t>& doc_bytes,
                                  const std::vector<int32_t>& group_of);

// Summed cross-entropy in nats over some predicted tokens → bits per byte of the text they
// stand for.
double bits_per_byte(double sum_nats, uint64_t bytes);

}  // namespace moe::data
