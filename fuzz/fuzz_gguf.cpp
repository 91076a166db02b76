// libFuzzer target: a GGUF file from outside, every way we read one: formats::GgufFile (header,
// typed metadata, tensor infos, alignment, offsets), each metadata value through the typed getter
// of its type, each small tensor dequantized, the vocabulary and tokenizer it carries
// (vocab_from_gguf, tokenizer_from_gguf), and the model view `moe eval/generate/convert` use
// (formats::open_model on a ".gguf" path: architecture keys → ModelConfig, name map, reads).
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "moe/core/checked_math.h"
#include "moe/formats/gguf.h"
#include "moe/formats/gguf_tokenizer.h"
#include "moe/formats/gguf_vocab.h"
#include "moe/formats/model_file.h"

namespace {

using moe::formats::GgufFile;
using moe::formats::GgufValueType;

void read_metadata(const GgufFile& f) {
  for (const std::string& key : f.keys()) {
    const auto type = f.type_of(key);
    if (!type) continue;
    moe::fuzz::run_guarded("GgufFile getters", [&] {
      switch (*type) {
        case GgufValueType::kString:
          (void)f.get_string(key);
          break;
        case GgufValueType::kBool:
          (void)f.get_bool(key);
          break;
        case GgufValueType::kF32:
        case GgufValueType::kF64:
          (void)f.get_float(key);
          break;
        case GgufValueType::kArray: {
          const auto et = f.array_type(key);
          (void)f.array_size(key);
          if (et == GgufValueType::kString)
            (void)f.get_string_array(key);
          else if (et == GgufValueType::kBool)
            (void)f.get_bool_array(key);
          else if (et == GgufValueType::kF32 || et == GgufValueType::kF64)
            (void)f.get_float_array(key);
          else
            (void)f.get_int_array(key);
          break;
        }
        default:
          (void)f.get_int(key);
          (void)f.get_float(key);
      }
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static moe::fuzz::InputFile file(".gguf");
  const std::string& path = file.write(data, size);
  moe::fuzz::run_guarded("GgufFile", [&] {
    GgufFile f(path);
    (void)f.version();
    (void)f.alignment();
    read_metadata(f);
    for (const moe::formats::GgufTensor& t : f.tensors()) {
      if (t.numel > moe::fuzz::kMaxFuzzReadElements) continue;
      moe::fuzz::run_guarded("GgufFile::read_f32", [&] { (void)f.read_f32(t); });
    }
    moe::fuzz::run_guarded("vocab_from_gguf", [&] { (void)moe::formats::vocab_from_gguf(f); });
    moe::fuzz::run_guarded("tokenizer_from_gguf", [&] {
      auto tok = moe::formats::tokenizer_from_gguf(f);
      if (tok) (void)tok->decode(tok->encode("The jury said  it .\n caf\xC3\xA9 \x80"));
    });
  });
  moe::fuzz::run_guarded("open_model(.gguf)", [&] {
    auto r = moe::formats::open_model(path);
    (void)r->config();
    auto tok = r->tokenizer();
    for (const moe::formats::SourceTensor& t : r->tensors()) {
      const int64_t n = moe::checked_numel(t.shape, "fuzz");
      if (n > moe::fuzz::kMaxFuzzReadElements) continue;
      std::vector<float> dst(std::size_t(n) + 1);
      r->read(t.our_name, t.shape, dst.data());
    }
  });
  return 0;
}
