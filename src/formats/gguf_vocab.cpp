// GGUF tokenizer.ggml.* ↔ Vocab (see gguf_vocab.h; llama.cpp's llama-vocab.cpp load()).
#include "moe/formats/gguf_vocab.h"

#include "moe/core/error.h"

namespace moe::formats {

data::Vocab vocab_from_gguf(const GgufFile& f) {
  using data::Vocab;
  const std::string& path = f.path();
  MOE_CHECK(f.has("tokenizer.ggml.model"),
            "{}: no tokenizer (metadata 'tokenizer.ggml.model' is "
            "missing)",
            path);
  const std::string model = f.get_string("tokenizer.ggml.model");
  MOE_CHECK(model == "llama" || model == "gpt2",
            "{}: tokenizer.ggml.model '{}' is not supported (expected 'llama' (SPM) or 'gpt2' "
            "(byte-level BPE))",
            path, model);
  const std::string pre = f.get_string_or("tokenizer.ggml.pre", "");
  Vocab v =
      data::make_default_vocab(model == "llama" ? Vocab::Model::kSpm : Vocab::Model::kBpe, pre);
  v.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const std::size_t n = v.tokens.size();
  for (std::size_t i = 0; i < n; ++i) {
    // llama.cpp renames an empty token so it cannot match anything.
    if (v.tokens[i].empty()) v.tokens[i] = "[EMPTY_" + std::to_string(i) + "]";
  }
  if (f.has("tokenizer.ggml.scores")) {
    const std::vector<double> s = f.get_float_array("tokenizer.ggml.scores");
    MOE_CHECK(s.size() >= n, "{}: tokenizer.ggml.scores has {} entries for {} tokens", path,
              s.size(), n);
    v.scores.assign(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(n));
  } else {
    v.scores.assign(n, 0.0f);
  }
  if (f.has("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> t = f.get_int_array("tokenizer.ggml.token_type");
    MOE_CHECK(t.size() >= n, "{}: tokenizer.ggml.token_type has {} entries for {} tokens", path,
              t.size(), n);
    v.types.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      // llama.cpp reads any other value as "undefined" (0).
      v.types[i] = t[i] >= 0 && t[i] <= 6 ? static_cast<int32_t>(t[i]) : 0;
    }
  } else {
    v.types.assign(n, static_cast<int32_t>(data::TokenType::kNormal));
  }
  if (v.model == Vocab::Model::kBpe) {
    MOE_CHECK(f.has("tokenizer.ggml.merges"),
              "{}: BPE tokenizer without merges (metadata 'tokenizer.ggml.merges' is missing)",
              path);
    v.merges = f.get_string_array("tokenizer.ggml.merges");
  }
  const auto special = [&](const char* key, int32_t& id) {
    if (id >= 0 && static_cast<std::size_t>(id) >= n) id = -1;  // default out of range
    if (!f.has(key)) return;
    const int64_t x = f.get_int(key);
    if (x >= 0 && static_cast<uint64_t>(x) < n) id = static_cast<int32_t>(x);
  };
  special("tokenizer.ggml.bos_token_id", v.bos);
  special("tokenizer.ggml.eos_token_id", v.eos);
  special("tokenizer.ggml.unknown_token_id", v.unk);
  special("tokenizer.ggml.padding_token_id", v.pad);
  special("tokenizer.ggml.eot_token_id", v.eot);
  special("tokenizer.ggml.eom_token_id", v.eom);
  special("tokenizer.ggml.fim_pad_token_id", v.fim_pad);
  special("tokenizer.ggml.fim_rep_token_id", v.fim_rep);
  special("tokenizer.ggml.fim_sep_token_id", v.fim_sep);
  v.add_bos = f.get_bool_or("tokenizer.ggml.add_bos_token", v.add_bos);
  v.add_eos = f.get_bool_or("tokenizer.ggml.add_eos_token", v.add_eos);
  if (v.model == Vocab::Model::kSpm) {
    v.add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  } else {
    // llama.cpp reads the key for BPE too; no BPE pre we support escapes spaces, so a true value
    // would only prepend a raw space, which llama.cpp does not do for BPE either.
    v.add_space_prefix = false;
  }
  // tokenizer.ggml.remove_extra_whitespaces is read by llama.cpp but only used by the UGM (T5)
  // tokenizer; SPM and BPE ignore it, and so do we.
  data::validate_vocab(v, path);
  return v;
}

void add_vocab_to_gguf(const data::Vocab& v, GgufWriter& w) {
  const bool spm = v.model == data::Vocab::Model::kSpm;
  w.add_string("tokenizer.ggml.model", spm ? "llama" : "gpt2");
  if (!spm) w.add_string("tokenizer.ggml.pre", v.pre);
  w.add_string_array("tokenizer.ggml.tokens", v.tokens);
  w.add_f32_array("tokenizer.ggml.scores", v.scores);
  w.add_i32_array("tokenizer.ggml.token_type", v.types);
  if (!spm) w.add_string_array("tokenizer.ggml.merges", v.merges);
  const auto id = [&](const char* key, int32_t x) {
    if (x >= 0) w.add_u32(key, static_cast<uint32_t>(x));
  };
  id("tokenizer.ggml.bos_token_id", v.bos);
  id("tokenizer.ggml.eos_token_id", v.eos);
  id("tokenizer.ggml.unknown_token_id", v.unk);
  id("tokenizer.ggml.padding_token_id", v.pad);
  id("tokenizer.ggml.eot_token_id", v.eot);
  id("tokenizer.ggml.eom_token_id", v.eom);
  id("tokenizer.ggml.fim_pad_token_id", v.fim_pad);
  id("tokenizer.ggml.fim_rep_token_id", v.fim_rep);
  id("tokenizer.ggml.fim_sep_token_id", v.fim_sep);
  w.add_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.add_bool("tokenizer.ggml.add_eos_token", v.add_eos);
  if (spm) w.add_bool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
}

}  // namespace moe::formats
