// Vocab from a Hugging Face tokenizer.json, mapped the way llama.cpp's converters map it:
//   byte-level BPE (ByteLevel pre-tokenizer): convert_hf_to_gguf.py get_vocab_base — tokens by
//     id, added tokens CONTROL if special else USER_DEFINED, merges "left right";
//   Llama/Mixtral BPE with byte_fallback: gguf-py vocab.py LlamaHfVocab — score -1000 for every
//     token, "<0xXX>" BYTE, special tokens CONTROL, other added tokens USER_DEFINED.
#include <cctype>
#include <map>

#include "moe/core/error.h"
#include "moe/core/json_util.h"
#include "moe/data/vocab.h"

namespace moe::data {

namespace {

using nlohmann::json;

// The Split regexes llama.cpp's convert_hf_to_gguf_update.py knows, by the pre it assigns.
const std::map<std::string, std::string>& known_split_regexes() {
  static const std::map<std::string, std::string> m = {
      {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
       "gpt-2"},
      {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
       "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
       "llama-bpe"},
      {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
       "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
       "qwen2"},
  };
  return m;
}

const json* member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string type_of(const json* j) {
  const json* t = j ? member(*j, "type") : nullptr;
  return t && t->is_string() ? t->get<std::string>() : "";
}

// All objects of a pre_tokenizer/normalizer, flattening "Sequence".
std::vector<const json*> flatten(const json* j, const char* list_key) {
  std::vector<const json*> out;
  if (!j) return out;
  if (type_of(j) == "Sequence") {
    const json* items = member(*j, list_key);
    if (items && items->is_array()) {
      for (const json& x : *items) out.push_back(&x);
    }
  } else {
    out.push_back(j);
  }
  return out;
}

std::string infer_pre(const json* pre_tok, const std::string& source) {
  bool byte_level = false;
  std::string regex;
  for (const json* p : flatten(pre_tok, "pretokenizers")) {
    const std::string t = type_of(p);
    if (t == "ByteLevel") {
      byte_level = true;
      const json* use_regex = member(*p, "use_regex");
      if (regex.empty() && (!use_regex || use_regex->get<bool>())) {
        regex = known_split_regexes().begin()->first;  // ByteLevel's own regex is GPT-2's
      }
    } else if (t == "Split") {
      const json* pat = member(*p, "pattern");
      const json* rx = pat ? member(*pat, "Regex") : nullptr;
      MOE_CHECK(rx && rx->is_string(), "{}: pre_tokenizer Split without a Regex pattern", source);
      regex = rx->get<std::string>();
    }
  }
  MOE_CHECK(byte_level,
            "{}: BPE model without a ByteLevel pre-tokenizer and without byte_fallback "
            "(neither GPT-2 byte-level nor Llama SentencePiece-style)",
            source);
  const auto it = known_split_regexes().find(regex);
  MOE_CHECK(it != known_split_regexes().end(),
            "{}: cannot infer the pre-tokenizer from the Split regex '{}'; name it (one of "
            "default, gpt-2, llama3, llama-bpe, qwen2, olmo, deepseek-llm)",
            source, regex.substr(0, 80));
  return it->second;
}

// SentencePiece-style: a Metaspace pre-tokenizer, or a normalizer with Replace(" " → "▁").
bool is_spm_style(const json& root, bool* add_space_prefix) {
  bool spm = false;
  *add_space_prefix = false;
  for (const json* p : flatten(member(root, "pre_tokenizer"), "pretokenizers")) {
    if (type_of(p) == "Metaspace") {
      spm = true;
      const json* scheme = member(*p, "prepend_scheme");
      const json* add = member(*p, "add_prefix_space");
      *add_space_prefix = scheme && scheme->is_string() ? scheme->get<std::string>() != "never"
                                                        : (!add || add->get<bool>());
    }
  }
  for (const json* n : flatten(member(root, "normalizer"), "normalizers")) {
    if (type_of(n) == "Prepend") *add_space_prefix = true;
    if (type_of(n) == "Replace") spm = true;
  }
  return spm;
}

// LlamaHfVocab's r"<0x[0-9A-Fa-f]{2}>".
bool is_byte_token(const std::string& t) {
  const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// convert_hf_to_gguf's does_token_look_special: added tokens some models forget to mark special.
bool looks_special(const std::string& t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (t.rfind("<|", 0) == 0 && ends_with(t, "|>")) return true;
  if (t.rfind("<\xEF\xBD\x9C", 0) == 0 && ends_with(t, "\xEF\xBD\x9C>")) return true;  // <｜ … ｜>
  return t.rfind("<unused", 0) == 0 && ends_with(t, ">");
}

std::string replace_marker(const std::string& t) {
  std::string out;
  for (std::size_t i = 0; i < t.size();) {
    if (t.compare(i, 3, "\xE2\x96\x81") == 0) {
      out.push_back(' ');
      i += 3;
    } else {
      out.push_back(t[i++]);
    }
  }
  return out;
}

}  // namespace

Vocab vocab_from_hf_tokenizer_json(std::string_view text, const std::string& source,
                                   const std::string& pre) {
  const json root = parse_json(text, source);
  const json* model = member(root, "model");
  MOE_CHECK(model && model->is_object(), "{}: no 'model' object", source);
  const std::string mtype = type_of(model);
  MOE_CHECK(mtype == "BPE", "{}: model.type '{}' is not supported (expected 'BPE')", source, mtype);
  const json* vocab = member(*model, "vocab");
  const json* merges = member(*model, "merges");
  MOE_CHECK(vocab && vocab->is_object() && !vocab->empty(), "{}: model.vocab missing or empty",
            source);
  const json* fallback = member(*model, "byte_fallback");
  bool add_space_prefix = false;
  const bool spm = fallback && fallback->is_boolean() && fallback->get<bool>() &&
                   is_spm_style(root, &add_space_prefix);
  Vocab v = spm ? make_default_vocab(Vocab::Model::kSpm, "")
                : make_default_vocab(
                      Vocab::Model::kBpe,
                      pre.empty() ? infer_pre(member(root, "pre_tokenizer"), source) : pre);
  // Ids: model.vocab, then added tokens (which may reuse or extend them).
  std::map<int64_t, std::string> by_id;
  for (const auto& [tok, id] : vocab->items()) {
    MOE_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (1 << 30),
              "{}: model.vocab['{}'] is not an id in [0, 2^30)", source, tok);
    by_id[id.get<int64_t>()] = tok;
  }
  const int64_t base_size = by_id.rbegin()->first + 1;
  std::map<int64_t, bool> added;  // id → special
  if (const json* at = member(root, "added_tokens"); at && at->is_array()) {
    for (const json& a : *at) {
      const json* id = member(a, "id");
      const json* content = member(a, "content");
      MOE_CHECK(id && id->is_number_integer() && id->get<int64_t>() >= 0 &&
                    id->get<int64_t>() < (1 << 30) && content && content->is_string(),
                "{}: added_tokens entry without an integer id in [0, 2^30) and a string content",
                source);
      by_id[id->get<int64_t>()] = content->get<std::string>();
      const json* special = member(a, "special");
      added[id->get<int64_t>()] = special && special->is_boolean() && special->get<bool>();
    }
  }
  const int64_t n = by_id.rbegin()->first + 1;
  v.tokens.resize(n);
  v.types.assign(n, static_cast<int32_t>(TokenType::kNormal));
  v.scores.assign(n, spm ? -1000.0f : 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const auto it = by_id.find(i);
    if (it == by_id.end()) {  // a hole: convert_hf_to_gguf writes an unused placeholder
      v.tokens[i] = "[PAD" + std::to_string(i) + "]";
      v.types[i] = static_cast<int32_t>(TokenType::kUnused);
      continue;
    }
    v.tokens[i] = it->second;
    const auto a = added.find(i);
    if (spm && is_byte_token(it->second)) {
      v.types[i] = static_cast<int32_t>(TokenType::kByte);
    } else if (a != added.end() && (a->second || (!spm && looks_special(it->second)))) {
      v.types[i] = static_cast<int32_t>(TokenType::kControl);
    } else if (a != added.end() && (!spm || i >= base_size)) {
      v.types[i] = static_cast<int32_t>(TokenType::kUserDefined);
      // convert_hf_to_gguf pre-normalizes user-defined spaces of byte-level vocabularies.
      if (!spm) v.tokens[i] = replace_marker(v.tokens[i]);
    }
  }
  for (const auto& [id, special] : added) {
    if (v.tokens[id] == "<s>") v.bos = static_cast<int32_t>(id);
    if (v.tokens[id] == "</s>") v.eos = static_cast<int32_t>(id);
  }
  if (const json* unk = member(*model, "unk_token"); unk && unk->is_string()) {
    const auto it = vocab->find(unk->get<std::string>());
    if (it != vocab->end()) v.unk = static_cast<int32_t>(it->get<int64_t>());
  }
  if (spm) {
    v.add_space_prefix = add_space_prefix;
  } else {
    MOE_CHECK(merges && merges->is_array(), "{}: BPE model without model.merges", source);
    v.merges.reserve(merges->size());
    for (const json& m : *merges) {
      if (m.is_string()) {
        v.merges.push_back(m.get<std::string>());
      } else {
        MOE_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                  "{}: model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]", source,
                  v.merges.size());
        v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      }
    }
  }
  for (int32_t* id : {&v.bos, &v.eos, &v.unk}) {
    if (*id >= n) *id = -1;
  }
  validate_vocab(v, source);
  return v;
}

std::string vocab_to_hf_tokenizer_json(const Vocab& v, const std::string& what) {
  MOE_CHECK(v.model == Vocab::Model::kBpe,
            "{}: a SentencePiece vocabulary has no exact tokenizer.json form here (llama.cpp's "
            "converter reads tokenizer.model for it); export to GGUF instead",
            what);
  // The inverse of infer_pre: GPT-2's regex is ByteLevel's own; the others are a Split first.
  std::string regex;
  for (const auto& [rx, name] : known_split_regexes())
    if (name == v.pre || (v.pre == "llama3" && name == "llama-bpe")) regex = rx;
  MOE_CHECK(!regex.empty(),
            "{}: the pre-tokenizer '{}' has no tokenizer.json form here (gpt-2, llama-bpe, "
            "llama3 and qwen2 do); export to GGUF instead",
            what, v.pre);
  json pre;
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", v.pre == "gpt-2"}};
  if (v.pre == "gpt-2") {
    pre = byte_level;
  } else {
    const json split = {{"type", "Split"},
                        {"pattern", {{"Regex", regex}}},
                        {"behavior", "Isolated"},
                        {"invert", false}};
    pre = {{"type", "Sequence"}, {"pretokenizers", json::array({split, byte_level})}};
  }
  json vocab = json::object();
  json added = json::array();
  for (std::size_t i = 0; i < v.tokens.size(); ++i) {
    vocab[v.tokens[i]] = i;
    const int32_t t = v.types[i];
    if (t == int32_t(TokenType::kControl) || t == int32_t(TokenType::kUserDefined))
      added.push_back({{"id", i},
                       {"content", v.tokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", t == int32_t(TokenType::kControl)}});
  }
  const json root = {{"version", "1.0"},
                     {"truncation", nullptr},
                     {"padding", nullptr},
                     {"added_tokens", added},
                     {"normalizer", nullptr},
                     {"pre_tokenizer", pre},
                     {"post_processor", nullptr},
                     {"decoder",
                      {{"type", "ByteLevel"},
                       {"add_prefix_space", true},
                       {"trim_offsets", true},
                       {"use_regex", true}}},
                     {"model",
                      {{"type", "BPE"},
                       {"dropout", nullptr},
                       {"unk_token", nullptr},
                       {"continuing_subword_prefix", nullptr},
                       {"end_of_word_suffix", nullptr},
                       {"fuse_unk", false},
                       {"byte_fallback", false},
                       {"ignore_merges", v.ignore_merges},
                       {"vocab", vocab},
                       {"merges", v.merges}}}};
  return root.dump(1);
}

}  // namespace moe::data
