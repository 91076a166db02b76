#include "moe/data/data_config.h"

namespace moe {

std::span<const EnumSpelling<TokenizerConfig::Kind>> spellings(TokenizerConfig::Kind) {
  using K = TokenizerConfig::Kind;
  static constexpr EnumSpelling<K> k[] = {{K::kByte, "byte"}, {K::kBpe, "bpe"}};
  return k;
}

const FieldTable<TokenizerConfig>& tokenizer_config_fields() {
  static const FieldTable<TokenizerConfig> t = [] {
    using T = TokenizerConfig;
    FieldTable<T> t;
    t.section("`tokenizer` (evaluation is always in bits per byte, so tokenizers compare)");
    t.add("kind", &T::kind,
          "`byte` (256 ids) or `bpe` (SentencePiece BPE trained on `data.dir/train.txt`, byte "
          "fallback, byte-exact)");
    t.add("vocab_size", &T::vocab_size, "bpe vocabulary (sets model.vocab_size)",
          rule::between(260, 65536));
    return t;
  }();
  return t;
}

const FieldTable<DataConfig>& data_config_fields() {
  static const FieldTable<DataConfig> t = [] {
    FieldTable<DataConfig> t;
    t.section("`data`");
    t.add("dir", &DataConfig::dir, "directory holding `train.txt`, `val.txt`, `test.txt`");
    return t;
  }();
  return t;
}

}  // namespace moe
