// The data and tokenizer sections of the config ("data", "tokenizer"). Every field is declared
// once, with its JSON name, rule and doc line, in src/data/data_config.cpp; the member
// initialisers are the defaults.
#pragma once
#include <span>
#include <string>

#include "moe/core/config_fields.h"

namespace moe {

struct TokenizerConfig {
  enum class Kind { kByte, kBpe };
  Kind kind = Kind::kByte;
  int vocab_size = 4096;  // bpe only
};
std::span<const EnumSpelling<TokenizerConfig::Kind>> spellings(TokenizerConfig::Kind);

struct DataConfig {
  std::string dir = "data/brown";  // holds train.txt, val.txt, test.txt
};

// The declarations (JSON paths relative to "tokenizer" and "data").
const FieldTable<TokenizerConfig>& tokenizer_config_fields();
const FieldTable<DataConfig>& data_config_fields();

}  // namespace moe
