// Tokenizers: the two byte-exact identities (decode(encode(t)) == t, Σ token_bytes == |t|) on
// awkward text, determinism and serialization of the BPE model, and clear errors. The BPE
// model is trained on a few hundred KB of generated English-like text, so no corpus is needed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "../error_util.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/data/token_data.h"
#include "moe/data/tokenizer.h"

namespace moe::data {
namespace {

using moe::testing::error_of;
using moe::testing::expect_error;
namespace fs = std::filesystem;

constexpr int kVocab = 400;

std::string scratch_path(const std::string& name) {
  return (fs::temp_directory_path() / fmt::format("moe-test-tokenizer-{}-{}", ::getpid(), name))
      .string();
}

// Deterministic English-like paragraphs, one per line, from a small LCG over word lists; a
// sprinkling of non-ASCII words so multi-byte characters are in the vocabulary.
std::string generated_text(std::size_t min_bytes) {
  const std::vector<std::string> subjects = {"The jury",    "The city",       "A committee",
                                             "Mayor Allen", "The café owner", "Our naïve reporter",
                                             "Everyone"};
  const std::vector<std::string> verbs = {"said",  "reported", "believes", "recommended",
                                          "found", "denied",   "argued"};
  const std::vector<std::string> objects = {
      "the election was conducted well", "the laws are outmoded",
      "the funds were handled poorly",   "a new school should be built",
      "taxes will rise next year",       "the Zürich delegation left early"};
  uint64_t state = 12345;
  auto next = [&](std::size_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<std::size_t>((state >> 33) % n);
  };
  std::string text;
  while (text.size() < min_bytes) {
    const std::size_t sentences = 2 + next(4);
    for (std::size_t s = 0; s < sentences; ++s) {
      if (s) text += ' ';
      text += subjects[next(subjects.size())] + " " + verbs[next(verbs.size())] + " that " +
              objects[next(objects.size())] +
              (next(5) == 0 ? " , " + std::to_string(next(2000)) : "") + " .";
    }
    text += '\n';
    if (next(4) == 0) text += '\n';
  }
  return text;
}

// Texts that a careless tokenizer would not reproduce.
std::vector<std::string> awkward_texts() {
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  return {
      "",
      " ",
      "The jury said it did find that the laws are outmoded .",
      "  leading and trailing spaces  ",
      "repeated   spaces\t\ttabs\n\n\nnewlines\r\nand CRLF\n",
      "\n\n\t \n",
      "naïve café in Zürich — 日本語のテキスト, 🙂🚀, Ελληνικά, "
      "русский",
      "non-breaking\u00a0space and ideographic\u3000space",
      "a literal \u2581 marker and \u2581\u2581 two",
      std::string("invalid \xff\xfe bytes \xc3 cut \xe2\x96 here \xed\xa0\x80 surrogate"),
      all_bytes,
      std::string("embedded \0 nul", 14),
      generated_text(5000),
  };
}

void expect_exact(const Tokenizer& tok, const std::string& text) {
  const std::vector<int32_t> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text) << "round trip of: " << text.substr(0, 60);
  std::size_t bytes = 0;
  for (int32_t id : ids) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, tok.vocab_size());
    bytes += static_cast<std::size_t>(tok.token_bytes(id));
  }
  EXPECT_EQ(bytes, text.size()) << "byte count of: " << text.substr(0, 60);
}

TEST(TokenizerByte, RoundTripAndBytes) {
  const auto tok = make_byte_tokenizer();
  EXPECT_EQ(tok->kind(), "byte");
  EXPECT_EQ(tok->vocab_size(), 256);
  for (const std::string& t : awkward_texts()) expect_exact(*tok, t);
  EXPECT_EQ(tok->encode("A\xff"), (std::vector<int32_t>{65, 255}));
  EXPECT_EQ(tok->token_bytes(200), 1);
  expect_error([&] { tok->decode({65, 256}); }, "out of range");
  expect_error([&] { tok->token_bytes(-1); }, "out of range");
}

TEST(TokenizerByte, Serialize) {
  const auto tok = make_byte_tokenizer();
  const auto back = tokenizer_from_serialized(tok->kind(), tok->serialize());
  EXPECT_EQ(back->kind(), "byte");
  EXPECT_EQ(back->encode("héllo"), tok->encode("héllo"));
  expect_error([] { tokenizer_from_serialized("byte", "AAAA"); }, "empty blob");
  expect_error([] { tokenizer_from_serialized("wordpiece", ""); }, "unknown tokenizer kind");
}

// Trained once for the whole suite, on first use. A training failure is thrown into each
// test's SetUp, so every BPE test reports it (rather than the suite silently not running).
struct TrainedBpe {
  std::string path;
  std::unique_ptr<Tokenizer> tok;
  ~TrainedBpe() { fs::remove(path); }
};

const TrainedBpe& trained_bpe() {
  static const std::unique_ptr<TrainedBpe> trained = [] {
    auto t = std::make_unique<TrainedBpe>();
    t->path = scratch_path("train.txt");
    write_file_atomic(t->path, generated_text(300 * 1024));
    t->tok = train_bpe(t->path, kVocab);
    return t;
  }();
  return *trained;
}

class TokenizerBpe : public ::testing::Test {
 protected:
  void SetUp() override {
    const TrainedBpe& t = trained_bpe();
    path_ = &t.path;
    tok_ = t.tok.get();
  }
  const std::string* path_ = nullptr;
  const Tokenizer* tok_ = nullptr;
};

TEST_F(TokenizerBpe, KindAndVocab) {
  EXPECT_EQ(tok_->kind(), "bpe");
  EXPECT_EQ(tok_->vocab_size(), kVocab);
}

TEST_F(TokenizerBpe, RoundTripAndByteCount) {
  for (const std::string& t : awkward_texts()) expect_exact(*tok_, t);
  expect_exact(*tok_, read_file(*path_));
}

TEST_F(TokenizerBpe, TokenBytesIsDecodedLength) {
  // Holds for every id: the space marker counts as the one byte of a space, a byte-fallback
  // token as one byte, <unk> (id 0) as nothing.
  EXPECT_EQ(tok_->token_bytes(0), 0);
  int multi_byte_pieces = 0, space_pieces = 0;
  for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
    const std::string text = tok_->decode({id});
    EXPECT_EQ(tok_->token_bytes(id), static_cast<int>(text.size())) << "id " << id;
    multi_byte_pieces += text.size() > 1;
    space_pieces += text.size() > 1 && text[0] == ' ';
  }
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tok_->decode({b + 1}), std::string(1, char(b)));
  EXPECT_GT(multi_byte_pieces, 50);  // it learned merges
  EXPECT_GT(space_pieces, 10);       // ...including word-initial pieces with their space
}

TEST_F(TokenizerBpe, CompressesTrainingLikeText) {
  const std::string text = generated_text(20000);
  // ~140 merges on a ~45-character alphabet: well over 2 bytes per token (bytes would give 1).
  EXPECT_LT(tok_->encode(text).size() * 2, text.size());
  // Word-initial pieces carry their space: the commonest words are one token each.
  EXPECT_EQ(tok_->encode(" that the").size(), 2u);
}

TEST_F(TokenizerBpe, DeterministicTraining) {
  const auto again = train_bpe(*path_, kVocab);
  EXPECT_EQ(again->serialize(), tok_->serialize());
  for (const std::string& t : awkward_texts()) EXPECT_EQ(again->encode(t), tok_->encode(t));
}

TEST_F(TokenizerBpe, SerializeRoundTrip) {
  const std::string blob = tok_->serialize();
  EXPECT_EQ(
      blob.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="),
      std::string::npos);
  const auto back = tokenizer_from_serialized("bpe", blob);
  EXPECT_EQ(back->vocab_size(), tok_->vocab_size());
  EXPECT_EQ(back->serialize(), blob);
  for (const std::string& t : awkward_texts()) {
    const auto ids = back->encode(t);
    EXPECT_EQ(ids, tok_->encode(t));
    EXPECT_EQ(back->decode(ids), t);
  }
}

TEST_F(TokenizerBpe, BadBlobIsAnError) {
  const std::string blob = tok_->serialize();
  expect_error([] { tokenizer_from_serialized("bpe", ""); }, "empty blob");
  expect_error([] { tokenizer_from_serialized("bpe", "not base64!"); }, "not base64");
  expect_error([] { tokenizer_from_serialized("bpe", "abc"); }, "not base64");
  expect_error([] { tokenizer_from_serialized("bpe", "aGVsbG8gd29ybGQ="); }, "bpe tokenizer");
  expect_error([&] { tokenizer_from_serialized("bpe", blob.substr(0, blob.size() / 8 * 4)); },
               "bpe tokenizer");
  expect_error([&] { tokenizer_from_serialized("byte", blob); }, "empty blob");
  expect_error([&] { tok_->decode({kVocab}); }, "out of range");
}

TEST_F(TokenizerBpe, TrainingErrors) {
  expect_error([] { train_bpe(scratch_path("missing.txt"), kVocab); }, "missing.txt: no such file");
  expect_error([&] { train_bpe(*path_, 200); }, "vocab_size 200");
  // Too small for the fixed tokens plus the text's characters, or more than the text can fill:
  // SentencePiece's own diagnosis is passed on.
  expect_error([&] { train_bpe(*path_, 280); }, "smaller than required_chars");
  expect_error([&] { train_bpe(*path_, 100000); }, "Vocabulary size too high");
  const std::string bad = scratch_path("latin1.txt");
  write_file_atomic(bad, "caf\xe9 au lait\n");
  expect_error([&] { train_bpe(bad, kVocab); }, "not valid UTF-8");
  fs::remove(bad);
}

TEST_F(TokenizerBpe, TokenStreamCountsBytes) {
  const TokenStream s = tokenize_file(*tok_, *path_);
  EXPECT_EQ(s.total_bytes, fs::file_size(*path_));
  ASSERT_EQ(s.bytes_per_token.size(), s.ids.size());
  EXPECT_EQ(count_bytes(s, 0, s.ids.size()), s.total_bytes);
  for (std::size_t i = 0; i < 100; ++i) {
    EXPECT_EQ(s.bytes_per_token[i], tok_->token_bytes(s.ids[i]));
  }
  EXPECT_EQ(count_bytes(s, 10, 12), s.bytes_per_token[10] + s.bytes_per_token[11]);
  expect_error([&] { count_bytes(s, 0, s.ids.size() + 1); }, "outside");
  expect_error([] { tokenize_file(*make_byte_tokenizer(), scratch_path("no_such_split.txt")); },
               "moe data fetch brown");
}

TEST(TokenizerBitsPerByte, Accounting) {
  // 10 bytes predicted at a total of 10·ln 2 nats = 1 bit per byte.
  EXPECT_NEAR(bits_per_byte(10 * std::numbers::ln2, 10), 1.0, 1e-12);
  // A byte-level model predicting each byte with p = 1/256 costs exactly 8 bits per byte.
  const auto byte_tok = make_byte_tokenizer();
  const TokenStream s = tokenize_text(*byte_tok, "héllo wörld");
  EXPECT_EQ(s.total_bytes, std::string("héllo wörld").size());
  EXPECT_NEAR(bits_per_byte(s.ids.size() * std::log(256.0), s.total_bytes), 8.0, 1e-12);
  expect_error([] { bits_per_byte(1.0, 0); }, "no bytes");
}

}  // namespace
}  // namespace moe::data
