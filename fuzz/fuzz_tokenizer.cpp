// libFuzzer target: the tokenizer blobs a checkpoint carries in its metadata
// (data/tokenizer.h tokenizer_from_serialized: kind "bpe" = a base64 SentencePiece model proto,
// "spm" / "bpe-bytelevel" = base64 of data/vocab.h vocab_to_bytes), then the tokenizer they
// build encoding and decoding a text with every awkward kind of byte.
// Input: one mode byte, then the blob. Mode & 3 picks the kind (byte, bpe, spm, bpe-bytelevel);
// with mode & 4 the rest is the blob's binary content (base64-encoded here, so mutations reach
// the model parser), else it is the blob text itself (reaching the base64 decoder).
#include <cstdint>
#include <string>
#include <vector>

#include "../src/data/vocab_internal.h"
#include "fuzz_util.h"
#include "moe/data/tokenizer.h"

namespace {

// ASCII, a user-defined-looking token, spaces and newlines, multi-byte UTF-8, U+2581, and
// invalid UTF-8 (a lone continuation byte, a truncated sequence, an overlong form).
const std::string kText =
    "The jury said  it .\n\n<sep> caf\xC3\xA9 \xE2\x96\x81x \xF0\x9F\x98\x80 1234567 \x80 "
    "\xE2\x96 \xC0\xAF end";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  static const char* kKinds[] = {"byte", "bpe", "spm", "bpe-bytelevel"};
  const std::string kind = kKinds[data[0] & 3];
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::string blob = (data[0] & 4) ? moe::data::detail::base64_encode(rest) : rest;
  moe::fuzz::run_guarded("tokenizer_from_serialized", [&] {
    auto tok = moe::data::tokenizer_from_serialized(kind, blob);
    const std::vector<int32_t> ids = tok->encode(kText);
    for (int32_t id : ids) (void)tok->token_bytes(id);
    (void)tok->decode(ids);
    const int v = tok->vocab_size();
    std::vector<int32_t> all;
    for (int32_t id = 0; id < v && id < 4096; ++id) {
      all.push_back(id);
      (void)tok->token_bytes(id);
    }
    (void)tok->decode(all);
    // The blob it writes back must rebuild the same tokenizer.
    auto again = moe::data::tokenizer_from_serialized(tok->kind(), tok->serialize());
    if (again->encode(kText) != ids) {
      std::fprintf(stderr, "FINDING: the re-serialized tokenizer encodes differently\n");
      std::abort();
    }
  });
  return 0;
}
