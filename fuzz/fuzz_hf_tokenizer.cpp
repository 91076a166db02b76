// libFuzzer target: a Hugging Face tokenizer.json (data/vocab_hf.cpp
// vocab_from_hf_tokenizer_json: model type, vocab, merges, added tokens, normalizer and
// pre-tokenizer forms), then the tokenizer it makes (formats::tokenizer_for_vocab, as
// open_model does for a directory) encoding and decoding an awkward text.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  moe::fuzz::run_guarded("vocab_from_hf_tokenizer_json", [&] {
    moe::data::Vocab v = moe::data::vocab_from_hf_tokenizer_json(text, "tokenizer.json");
    auto tok = moe::formats::tokenizer_for_vocab(std::move(v), "tokenizer.json");
    const std::vector<int32_t> ids =
        tok->encode("The jury said  it .\n\n<sep> caf\xC3\xA9 \xE2\x96\x81x 1234567 \x80 \xC0\xAF");
    for (int32_t id : ids) (void)tok->token_bytes(id);
    (void)tok->decode(ids);
  });
  return 0;
}
