#include "moe/formats/gguf_tokenizer.h"

#include <fmt/format.h>

#include "moe/core/error.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf_vocab.h"

namespace moe::formats {

namespace {

// Whether f holds exactly the vocabulary write_vocab_to_gguf writes for our byte tokenizer.
bool is_byte_vocab(const GgufFile& f) {
  if (f.get_string_or("tokenizer.ggml.model", "") != "gpt2") return false;
  const std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (tokens.size() != 256) return false;
  if (f.has("tokenizer.ggml.merges") && !f.get_string_array("tokenizer.ggml.merges").empty())
    return false;
  for (int b = 0; b < 256; ++b)
    if (tokens[b] != data::gpt2_byte_to_utf8(uint8_t(b))) return false;
  return true;
}

}  // namespace

std::unique_ptr<data::Tokenizer> tokenizer_from_gguf(const GgufFile& f) {
  MOE_CHECK(f.has("tokenizer.ggml.model"),
            "{}: metadata 'tokenizer.ggml.model' is missing: the "
            "file has no vocabulary",
            f.path());
  if (is_byte_vocab(f)) return data::make_byte_tokenizer();
  return data::make_vocab_tokenizer(vocab_from_gguf(f), f.path());
}

void write_vocab_to_gguf(const data::Tokenizer& tok, GgufWriter& w) {
  if (tok.kind() == "byte") {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) tokens.push_back(data::gpt2_byte_to_utf8(uint8_t(b)));
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", "default");
    w.add_string_array("tokenizer.ggml.tokens", tokens);
    w.add_i32_array("tokenizer.ggml.token_type", std::vector<int32_t>(256, 1));
    w.add_string_array("tokenizer.ggml.merges", {});
    w.add_bool("tokenizer.ggml.add_bos_token", false);
    w.add_bool("tokenizer.ggml.add_eos_token", false);
    return;
  }
  if (const data::Vocab* v = data::vocab_of(tok)) return add_vocab_to_gguf(*v, w);
  MOE_FAIL(
      "cannot export a '{}' tokenizer to GGUF: a SentencePiece model trained "
      "by `moe train` (tokenizer.kind bpe) has no llama.cpp vocabulary form "
      "here; train with the byte tokenizer or import a GGUF/HF tokenizer",
      tok.kind());
}

}  // namespace moe::formats
