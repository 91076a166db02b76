#include "moe/formats/gguf_tokenizer.h"

#include <fmt/format.h>

#include "moe/core/error.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf_vocab.h"

namespace moe::formats {

namespace {

// Whether v is exactly the vocabulary we write for our byte tokenizer: 256 byte-level tokens in
// byte order, no merges.
bool is_byte_vocab(const data::Vocab& v) {
  if (v.model != data::Vocab::Model::kBpe || v.tokens.size() != 256 || !v.merges.empty())
    return false;
  for (int b = 0; b < 256; ++b)
    if (v.tokens[b] != data::gpt2_byte_to_utf8(uint8_t(b))) return false;
  return true;
}

data::Vocab byte_vocab() {
  data::Vocab v = data::make_default_vocab(data::Vocab::Model::kBpe, "gpt-2");
  for (int b = 0; b < 256; ++b) v.tokens.push_back(data::gpt2_byte_to_utf8(uint8_t(b)));
  v.types.assign(256, int32_t(data::TokenType::kNormal));
  v.scores.assign(256, 0.f);
  v.bos = v.eos = v.unk = v.pad = -1;
  v.add_bos = v.add_eos = false;
  return v;
}

}  // namespace

std::unique_ptr<data::Tokenizer> tokenizer_for_vocab(data::Vocab v, const std::string& source) {
  if (is_byte_vocab(v)) return data::make_byte_tokenizer();
  return data::make_vocab_tokenizer(std::move(v), source);
}

std::unique_ptr<data::Tokenizer> tokenizer_from_gguf(const GgufFile& f) {
  MOE_CHECK(f.has("tokenizer.ggml.model"),
            "{}: metadata 'tokenizer.ggml.model' is missing: the file has no vocabulary", f.path());
  return tokenizer_for_vocab(vocab_from_gguf(f), f.path());
}

std::string hf_tokenizer_json(const data::Tokenizer& tok) {
  if (tok.kind() == "byte") return data::vocab_to_hf_tokenizer_json(byte_vocab(), "byte tokenizer");
  const data::Vocab* v = data::vocab_of(tok);
  MOE_CHECK(v != nullptr,
            "cannot write a tokenizer.json for a '{}' tokenizer (a SentencePiece model trained by "
            "`moe train`); train with the byte tokenizer or import a GGUF/HF tokenizer",
            tok.kind());
  return data::vocab_to_hf_tokenizer_json(*v, tok.kind() + " tokenizer");
}

void write_vocab_to_gguf(const data::Tokenizer& tok, GgufWriter& w) {
  if (tok.kind() == "byte") return add_vocab_to_gguf(byte_vocab(), w);
  if (const data::Vocab* v = data::vocab_of(tok)) return add_vocab_to_gguf(*v, w);
  MOE_FAIL(
      "cannot export a '{}' tokenizer to GGUF: a SentencePiece model trained "
      "by `moe train` (tokenizer.kind bpe) has no llama.cpp vocabulary form "
      "here; train with the byte tokenizer or import a GGUF/HF tokenizer",
      tok.kind());
}

}  // namespace moe::formats
