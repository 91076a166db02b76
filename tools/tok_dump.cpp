// Test helper (tests/python/test_tokenizers_llama.py): tokenizes a text file with a vocabulary
// loaded from a GGUF file or a Hugging Face tokenizer.json and prints one JSON line:
//   {"kind": K, "ids": [...], "decoded_equal": B, "token_bytes": N, "reloaded_equal": B,
//    "eog": [...], "reloaded_eog": [...]}
// decoded_equal: decode(ids) == text; token_bytes: Σ token_bytes(id); reloaded_equal: the
// tokenizer rebuilt from (kind(), serialize()) gives the same ids; eog: data::eog_ids of the
// vocabulary (tests/python/test_eog_llama.py), reloaded_eog: of the rebuilt one.
// Usage: moe_tok_dump VOCAB(.gguf|tokenizer.json) TEXT_FILE [PRE]
#include <cstdio>
#include <string>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf_vocab.h"

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: moe_tok_dump VOCAB(.gguf|tokenizer.json) TEXT_FILE [PRE]\n");
    return 2;
  }
  try {
    const std::string vocab_path = argv[1];
    moe::data::Vocab v;
    if (moe::read_file(vocab_path).compare(0, 4, "GGUF") == 0) {
      v = moe::formats::vocab_from_gguf(moe::formats::GgufFile(vocab_path));
    } else {
      v = moe::data::vocab_from_hf_tokenizer_json(moe::read_file(vocab_path), vocab_path,
                                                  argc == 4 ? argv[3] : "");
    }
    const auto tok = moe::data::make_vocab_tokenizer(v, vocab_path);
    const std::string text = moe::read_file(argv[2]);
    const std::vector<int32_t> ids = tok->encode(text);
    long long bytes = 0;
    for (int32_t id : ids) bytes += tok->token_bytes(id);
    const auto again = moe::data::tokenizer_from_serialized(tok->kind(), tok->serialize());
    std::string out = "{\"kind\": \"" + tok->kind() + "\", \"ids\": [";
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ", ";
      out += std::to_string(ids[i]);
    }
    out += "], \"decoded_equal\": ";
    out += tok->decode(ids) == text ? "true" : "false";
    out += ", \"token_bytes\": " + std::to_string(bytes) + ", \"reloaded_equal\": ";
    out += again->encode(text) == ids ? "true" : "false";
    const auto list = [](const std::vector<int32_t>& xs) {
      std::string o = "[";
      for (std::size_t i = 0; i < xs.size(); ++i) o += (i ? ", " : "") + std::to_string(xs[i]);
      return o + "]";
    };
    out += ", \"eog\": " + list(moe::data::eog_ids(v));
    out += ", \"reloaded_eog\": " + list(moe::data::eog_ids(*moe::data::vocab_of(*again)));
    out += "}\n";
    std::fputs(out.c_str(), stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_tok_dump: %s\n", e.what());
    return 1;
  }
}
