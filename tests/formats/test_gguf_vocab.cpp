// formats/gguf_vocab.h: the tokenizer.ggml.* keys ↔ Vocab, and the GGUF tokenizers we refuse.
// (That the ids equal llama.cpp's is tests/python/test_tokenizers_llama.py.)
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../error_util.h"
#include "../temp_dir.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf.h"
#include "moe/formats/gguf_vocab.h"

namespace {

using moe::data::Vocab;
using moe::formats::GgufFile;
using moe::formats::GgufWriter;
using moe::formats::vocab_from_gguf;
using moe::testing::expect_error;
using moe::testing::TempDir;

// 256 byte characters plus "Ġt" and a control token.
Vocab tiny_bpe(const std::string& pre) {
  Vocab v = moe::data::make_default_vocab(Vocab::Model::kBpe, pre);
  for (int b = 0; b < 256; ++b) v.tokens.push_back(moe::data::gpt2_byte_to_utf8(uint8_t(b)));
  v.tokens.push_back("\xC4\xA0t");
  v.tokens.push_back("<|endoftext|>");
  v.scores.assign(v.tokens.size(), 0.0f);
  v.types.assign(v.tokens.size(), 1);
  v.types.back() = 3;
  v.merges = {"\xC4\xA0 t"};
  v.bos = v.eos = 257;
  return v;
}

std::string write(const TempDir& dir, const std::string& name, const GgufWriter& w) {
  const std::string path = dir.file(name);
  w.write(path);
  return path;
}

TEST(GgufVocab, RoundTripsAndTakesLlamaDefaults) {
  TempDir dir;
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  moe::formats::add_vocab_to_gguf(tiny_bpe("llama-bpe"), w);
  const Vocab v = vocab_from_gguf(GgufFile(write(dir, "bpe.gguf", w)));
  const Vocab want = tiny_bpe("llama-bpe");
  EXPECT_EQ(v.tokens, want.tokens);
  EXPECT_EQ(v.types, want.types);
  EXPECT_EQ(v.merges, want.merges);
  EXPECT_EQ(v.bos, 257);
  EXPECT_TRUE(v.ignore_merges);  // llama.cpp's rule for the llama3 pre-tokenizer
  const auto tok = moe::data::make_vocab_tokenizer(v);
  EXPECT_EQ(tok->encode("a t"), (std::vector<int32_t>{'a', 256}));
}

TEST(GgufVocab, RefusesWhatLlamaCppCannotTokenizeOrWeDoNotSupport) {
  TempDir dir;
  {
    GgufWriter w;
    w.add_string("tokenizer.ggml.model", "bert");
    w.add_string_array("tokenizer.ggml.tokens", {"a"});
    expect_error([&] { vocab_from_gguf(GgufFile(write(dir, "bert.gguf", w))); },
                 {"bert.gguf", "tokenizer.ggml.model 'bert'"});
  }
  {
    GgufWriter w;
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", "gpt-2");
    w.add_string_array("tokenizer.ggml.tokens", tiny_bpe("gpt-2").tokens);
    expect_error([&] { vocab_from_gguf(GgufFile(write(dir, "nomerges.gguf", w))); },
                 {"nomerges.gguf", "without merges", "tokenizer.ggml.merges"});
  }
  {
    Vocab v = tiny_bpe("gpt-2");
    v.pre = "tekken";
    GgufWriter w;
    moe::formats::add_vocab_to_gguf(v, w);
    expect_error([&] { vocab_from_gguf(GgufFile(write(dir, "tekken.gguf", w))); },
                 {"tekken.gguf", "tokenizer.ggml.pre='tekken'"});
  }
  {
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    expect_error([&] { vocab_from_gguf(GgufFile(write(dir, "none.gguf", w))); },
                 {"none.gguf", "tokenizer.ggml.model"});
  }
  {
    Vocab v = tiny_bpe("gpt-2");
    v.types.pop_back();
    GgufWriter w2;
    w2.add_string("tokenizer.ggml.model", "gpt2");
    w2.add_string("tokenizer.ggml.pre", "gpt-2");
    w2.add_string_array("tokenizer.ggml.tokens", v.tokens);
    w2.add_i32_array("tokenizer.ggml.token_type", v.types);
    w2.add_string_array("tokenizer.ggml.merges", v.merges);
    expect_error([&] { vocab_from_gguf(GgufFile(write(dir, "types.gguf", w2))); },
                 {"types.gguf", "token_type has 257 entries for 258 tokens"});
  }
}

}  // namespace
