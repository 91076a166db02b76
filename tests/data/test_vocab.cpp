// Hostile and malformed vocabularies for data/vocab.h: each is refused with one clear line.
// (Correctness of the ids is checked against llama.cpp in tests/python/test_tokenizers_llama.py.)
#include <gtest/gtest.h>

#include <string>

#include "../error_util.h"
#include "moe/core/error.h"
#include "moe/data/vocab.h"

namespace {

using moe::data::make_vocab_tokenizer;
using moe::data::tokenizer_from_serialized;
using moe::data::Vocab;
using moe::data::vocab_from_bytes;
using moe::data::vocab_from_hf_tokenizer_json;
using moe::data::vocab_to_bytes;
using moe::testing::expect_error;

// A tiny byte-level BPE tokenizer.json: the 256 byte characters, "Ġ" + "t" → "Ġt".
std::string tiny_bpe_json(const std::string& merge = "\"\\u0120 t\"",
                          const std::string& pre_tok = R"({"type": "ByteLevel"})") {
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    std::string c = moe::data::gpt2_byte_to_utf8(uint8_t(b));
    if (c == "\"" || c == "\\") c = "\\" + c;
    vocab += "\"" + c + "\": " + std::to_string(b) + ", ";
  }
  vocab += "\"\xC4\xA0t\": 256";
  return R"({"model": {"type": "BPE", "vocab": {)" + vocab + R"(}, "merges": [)" + merge +
         R"(]}, "pre_tokenizer": )" + pre_tok + "}";
}

TEST(Vocab, TinyByteLevelBpeEncodesAndRoundTrips) {
  const Vocab v = vocab_from_hf_tokenizer_json(tiny_bpe_json(), "tiny.json");
  EXPECT_EQ(v.pre, "gpt-2");  // ByteLevel's own regex
  const auto tok = make_vocab_tokenizer(v);
  EXPECT_EQ(tok->kind(), "bpe-bytelevel");
  // "a t": 'a', then " t" merged into one token.
  EXPECT_EQ(tok->encode("a t"), (std::vector<int32_t>{'a', 256}));
  EXPECT_EQ(tok->token_bytes(256), 2);
  EXPECT_EQ(tok->decode({'a', 256}), "a t");
  const auto again = tokenizer_from_serialized(tok->kind(), tok->serialize());
  EXPECT_EQ(again->encode("a t x\xff"), tok->encode("a t x\xff"));
}

TEST(Vocab, MergeNamingAMissingTokenIsRefused) {
  expect_error([] { vocab_from_hf_tokenizer_json(tiny_bpe_json("\"\\u0120 zz\""), "m.json"); },
               {"m.json", "merge 0", "not in the vocabulary"});
  expect_error([] { vocab_from_hf_tokenizer_json(tiny_bpe_json("\"nospace\""), "m.json"); },
               {"m.json", "merge 0", "expected 'left right'"});
}

TEST(Vocab, UnknownPreAndModelAreRefusedByName) {
  expect_error([] { vocab_from_hf_tokenizer_json(tiny_bpe_json(), "p.json", "gpt4o"); },
               {"p.json", "tokenizer.ggml.pre='gpt4o'", "supported"});
  const std::string split =
      R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\w+"}},
         {"type": "ByteLevel", "use_regex": false}]})";
  expect_error(
      [&] { vocab_from_hf_tokenizer_json(tiny_bpe_json("\"\\u0120 t\"", split), "s.json"); },
      {"s.json", "cannot infer the pre-tokenizer"});
  expect_error(
      [] {
        vocab_from_hf_tokenizer_json(R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})",
                                     "w.json");
      },
      {"w.json", "model.type 'WordPiece'"});
}

TEST(Vocab, TruncatedOrInvalidInputIsRefused) {
  const std::string json = tiny_bpe_json();
  expect_error([&] { vocab_from_hf_tokenizer_json(json.substr(0, json.size() / 2), "t.json"); },
               "t.json");
  const std::string blob = vocab_to_bytes(vocab_from_hf_tokenizer_json(json, "t.json"));
  expect_error([&] { vocab_from_bytes(blob.substr(0, blob.size() - 3), "blob"); },
               {"blob", "truncated"});
  std::string huge = blob;
  huge[12 + 1 + 4 + 5 + 3] = '\x7f';  // magic, model, pre "gpt-2", then the count's top byte
  expect_error([&] { vocab_from_bytes(huge, "blob"); }, {"blob", "tokens count"});
  expect_error([] { tokenizer_from_serialized("spm", "not base64!"); }, "not base64");
}

TEST(Vocab, ValidationNamesTheField) {
  Vocab v = moe::data::make_default_vocab(Vocab::Model::kSpm, "");
  v.tokens = {"<unk>", "<s>", "</s>", "a", "a"};
  v.scores.assign(5, 0.0f);
  v.types = {2, 3, 3, 1, 1};
  expect_error([&] { make_vocab_tokenizer(v, "dup"); }, {"dup", "token 4", "duplicates token 3"});
  v.tokens[4] = "<0xZZ>";
  v.types[4] = 6;
  expect_error([&] { make_vocab_tokenizer(v, "byte"); }, {"byte", "expected the form <0xXX>"});
  v.types[4] = 1;
  v.scores.pop_back();
  expect_error([&] { make_vocab_tokenizer(v, "sc"); }, {"sc", "scores has 4 entries"});
  v.scores.push_back(0.0f);
  v.bos = 9;
  expect_error([&] { make_vocab_tokenizer(v, "ids"); }, {"ids", "bos token id 9"});
}

TEST(Vocab, SpmWithoutByteTokensNamesTheByte) {
  Vocab v = moe::data::make_default_vocab(Vocab::Model::kSpm, "");
  v.tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a"};
  v.scores = {0, 0, 0, -1, -2};
  v.types = {2, 3, 3, 1, 1};
  const auto tok = make_vocab_tokenizer(v);
  EXPECT_EQ(tok->encode("a a"), (std::vector<int32_t>{3, 4, 3, 4}));
  EXPECT_EQ(tok->decode({3, 4}), " a");
  expect_error([&] { tok->encode("b"); }, "no token for byte 0x62");
}

}  // namespace

namespace {

// Long runs (a megabyte of one class) go through PCRE2 without a JIT stack overflow; llama.cpp's
// std::regex crashes on such input for deepseek-llm, so the reference here is the identity.
TEST(Vocab, LongRunsDoNotOverflowThePreTokenizer) {
  for (const char* pre : {"deepseek-llm", "llama-bpe", "default"}) {
    const auto tok = make_vocab_tokenizer(vocab_from_hf_tokenizer_json(tiny_bpe_json(), "t", pre));
    std::string text(1 << 20, ' ');
    for (int k = 0; k < 100000; ++k) text += "\xE3\x80\x80";  // U+3000
    text += std::string(1 << 19, 'a') + "\n";
    const std::vector<int32_t> ids = tok->encode(text);
    EXPECT_EQ(tok->decode(ids), text) << pre;
  }
}

}  // namespace
