// A GGUF file's vocabulary (tokenizer.ggml.*) as one of our tokenizers, and ours written back.
//   - 256 byte-level tokens in byte order with no merges (what we export for our byte
//     tokenizer): our byte tokenizer, id = byte value.
//   - "llama" (SentencePiece) and "gpt2" (byte-level BPE with the pre-tokenizer that
//     tokenizer.ggml.pre names): data/vocab.h's tokenizers, exactly as llama.cpp tokenizes.
#pragma once
#include <memory>

#include "moe/data/tokenizer.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf.h"

namespace moe::formats {

std::unique_ptr<data::Tokenizer> tokenizer_from_gguf(const GgufFile& f);
// A vocabulary (from GGUF or tokenizer.json) as a tokenizer: our byte tokenizer when it is the
// byte vocabulary we export, else data/vocab.h's tokenizer of its kind.
std::unique_ptr<data::Tokenizer> tokenizer_for_vocab(data::Vocab v, const std::string& source);
// tok as a Hugging Face tokenizer.json (byte tokenizer: 256 byte-level tokens, no merges).
// Errors name what tokenizer.json cannot express (SentencePiece vocabularies, some pres).
std::string hf_tokenizer_json(const data::Tokenizer& tok);

// Writes tok as tokenizer.ggml.* keys. Our byte tokenizer goes out as a "gpt2" vocabulary of the
// 256 byte tokens (GPT-2's byte-to-unicode spelling) with no merges, so llama.cpp maps every
// byte of any text to the token of the same id.
void write_vocab_to_gguf(const data::Tokenizer& tok, GgufWriter& w);

}  // namespace moe::formats
