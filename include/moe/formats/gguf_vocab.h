// The tokenizer of a GGUF file (its tokenizer.ggml.* keys) as a moe::data::Vocab, read the way
// llama.cpp's llama_vocab::impl::load reads it: model "llama" → SPM, "gpt2" → byte-level BPE
// (any other model, e.g. "bert", is refused by name), llama.cpp's defaults for keys that are
// absent, special ids outside the vocabulary dropped (llama.cpp warns and disables them).
// Errors are one line naming the file and key.
#pragma once
#include "moe/data/vocab.h"
#include "moe/formats/gguf.h"

namespace moe::formats {

data::Vocab vocab_from_gguf(const GgufFile& f);

// Adds the tokenizer.ggml.* keys for v (what vocab_from_gguf reads back).
void add_vocab_to_gguf(const data::Vocab& v, GgufWriter& w);

}  // namespace moe::formats
