// libFuzzer target: corpus text from outside (data/corpus.h): a Brown "Form C" file through
// strip_brown_tags, a user's text file through prepare_text (paragraph split, CRLF, UTF-8
// check, split files and manifest written), and the text tokenized as training reads it
// (data/token_data.h tokenize_text with the byte tokenizer, whose byte count must add up).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "moe/data/corpus.h"
#include "moe/data/token_data.h"
#include "moe/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static moe::fuzz::InputFile file(".txt");
  static moe::fuzz::InputFile out_dir(".d");
  static const auto byte_tok = moe::data::make_byte_tokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  moe::fuzz::run_guarded("strip_brown_tags", [&] { (void)moe::data::strip_brown_tags(text); });
  (void)moe::data::find_invalid_utf8(text);
  const std::string& path = file.write(data, size);
  moe::fuzz::run_guarded("prepare_text", [&] {
    std::error_code ec;
    std::filesystem::remove_all(out_dir.path(), ec);
    (void)moe::data::prepare_text({path}, out_dir.path());
  });
  moe::fuzz::run_guarded("tokenize_text", [&] {
    const moe::data::TokenStream s = moe::data::tokenize_text(*byte_tok, text);
    if (s.total_bytes != size || moe::data::count_bytes(s, 0, s.ids.size()) != s.total_bytes) {
      std::fprintf(stderr, "FINDING: byte tokenizer counts %llu bytes of %zu\n",
                   static_cast<unsigned long long>(s.total_bytes), size);
      std::abort();
    }
  });
  return 0;
}
