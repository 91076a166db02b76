// libFuzzer target: our own checkpoints as `moe eval/generate/train --resume/--init-from` open
// them: the metadata (train/checkpoint.h read_checkpoint_meta: format tag, config JSON,
// train_state JSON, tokenizer kind and blob) and the model view (formats::open_moe_checkpoint:
// config, tokenizer, every parameter's tensor read as f32 with the shape the config implies).
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "moe/core/checked_math.h"
#include "moe/formats/model_file.h"
#include "moe/train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static moe::fuzz::InputFile file(".safetensors");
  const std::string& path = file.write(data, size);
  moe::fuzz::run_guarded("read_checkpoint_meta", [&] { (void)moe::read_checkpoint_meta(path); });
  moe::fuzz::run_guarded("open_moe_checkpoint", [&] {
    auto r = moe::formats::open_moe_checkpoint(path);
    (void)r->config();
    (void)r->format();
    (void)r->architecture();
    auto tok = r->tokenizer();
    if (tok) (void)tok->decode(tok->encode("The jury said ."));
    for (const moe::formats::SourceTensor& t : r->tensors()) {
      const int64_t n = moe::checked_numel(t.shape, "fuzz");
      if (n > moe::fuzz::kMaxFuzzReadElements) continue;
      std::vector<float> dst(std::size_t(n) + 1);
      r->read(t.our_name, t.shape, dst.data());
    }
  });
  return 0;
}
