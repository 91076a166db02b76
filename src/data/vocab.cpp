// Vocab: llama.cpp's defaults, validation, the serialized blob and the GPT-2 byte alphabet.
#include "moe/data/vocab.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "moe/core/error.h"

namespace moe::data {

namespace {

// UTF-8 of a code point below U+110000 (no validity checks: surrogates encode as 3 bytes, as
// llama.cpp's unicode_cpt_to_utf8 does).
std::string utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(char(cp));
  } else if (cp < 0x800) {
    s.push_back(char(0xC0 | (cp >> 6)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(char(0xE0 | (cp >> 12)));
    s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(char(0xF0 | (cp >> 18)));
    s.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(char(0x80 | (cp & 0x3F)));
  }
  return s;
}

std::vector<std::string> make_gpt2_table() {
  // GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
  // U+0100.. in byte order, so every byte becomes a visible, non-space character.
  std::vector<std::string> table(256);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    table[b] = utf8_of(keep ? uint32_t(b) : uint32_t(256 + n++));
  }
  return table;
}

bool is_spm_byte_token(const std::string& t) {
  // llama.cpp parses the two digits with strtol, so lower case is a byte token too.
  const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

// --- the blob: "moe-vocab 1\n", then fields in order, integers little-endian ---
constexpr std::string_view kMagic = "moe-vocab 1\n";

void put_u32(std::string& out, uint32_t v) {
  for (int k = 0; k < 4; ++k) out.push_back(char((v >> (8 * k)) & 0xFF));
}
void put_str(std::string& out, const std::string& s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out += s;
}

class Reader {
 public:
  Reader(std::string_view b, const std::string& source) : b_(b), source_(source) {}
  uint32_t u32(const char* what) {
    need(4, what);
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) v |= uint32_t(uint8_t(b_[pos_ + k])) << (8 * k);
    pos_ += 4;
    return v;
  }
  std::string str(const char* what) {
    const uint32_t n = u32(what);
    need(n, what);
    std::string s(b_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  // A count of items each at least min_item_bytes long, checked against what is left before
  // anything is allocated for them.
  uint32_t count(const char* what, uint64_t min_item_bytes) {
    const uint32_t n = u32(what);
    MOE_CHECK(uint64_t(n) * min_item_bytes <= b_.size() - pos_,
              "{}: vocab blob: {} count {} exceeds the {} bytes left", source_, what, n,
              b_.size() - pos_);
    return n;
  }
  void need(uint64_t n, const char* what) {
    MOE_CHECK(n <= b_.size() - pos_,
              "{}: vocab blob truncated in {} (need {} bytes at {}, {} left)", source_, what, n,
              pos_, b_.size() - pos_);
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  std::string_view b_;
  const std::string& source_;
  std::size_t pos_ = 0;
};

}  // namespace

const std::string& gpt2_byte_to_utf8(uint8_t b) {
  static const std::vector<std::string> table = make_gpt2_table();
  return table[b];
}

const std::vector<std::string>& bpe_pre_names() {
  static const std::vector<std::string> names = {"default",   "gpt-2", "llama3", "llama-v3",
                                                 "llama-bpe", "qwen2", "olmo",   "deepseek-llm"};
  return names;
}

Vocab make_default_vocab(Vocab::Model model, const std::string& pre) {
  Vocab v;
  v.model = model;
  if (model == Vocab::Model::kSpm) {
    v.bos = 1;
    v.eos = 2;
    v.unk = 0;
    v.add_bos = true;
    v.add_space_prefix = true;
  } else {
    v.pre = pre.empty() ? "default" : pre;
    v.bos = v.eos = 11;
    if (v.pre == "llama3" || v.pre == "llama-v3" || v.pre == "llama-bpe") {
      v.ignore_merges = true;
      v.add_bos = true;
    }
  }
  return v;
}

void validate_vocab(const Vocab& v, const std::string& source) {
  const std::size_t n = v.tokens.size();
  MOE_CHECK(n > 0 && n < (std::size_t{1} << 31), "{}: tokenizer has {} tokens, expected 1..2^31",
            source, n);
  MOE_CHECK(v.scores.size() == n,
            "{}: tokenizer scores has {} entries, expected {} (one per token)", source,
            v.scores.size(), n);
  MOE_CHECK(v.types.size() == n, "{}: tokenizer token_type has {} entries, expected {}", source,
            v.types.size(), n);
  std::unordered_map<std::string_view, int32_t> ids;
  ids.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    MOE_CHECK(!v.tokens[i].empty(), "{}: token {} is empty", source, i);
    MOE_CHECK(v.types[i] >= 0 && v.types[i] <= 6,
              "{}: token {} ('{}') has token_type {}, expected 0..6", source, i, v.tokens[i],
              v.types[i]);
    const auto [it, fresh] = ids.emplace(v.tokens[i], int32_t(i));
    MOE_CHECK(fresh, "{}: token {} ('{}') duplicates token {}", source, i, v.tokens[i], it->second);
    if (v.types[i] == int32_t(TokenType::kByte)) {  // llama.cpp's token_to_byte parses these
      MOE_CHECK(is_spm_byte_token(v.tokens[i]),
                "{}: byte token {} is '{}', expected the form <0xXX>", source, i, v.tokens[i]);
    }
  }
  const auto check_id = [&](int32_t id, const char* what) {
    MOE_CHECK(id >= -1 && id < int64_t(n), "{}: {} token id {} out of range [0, {})", source, what,
              id, n);
  };
  check_id(v.bos, "bos");
  check_id(v.eos, "eos");
  check_id(v.unk, "unknown");
  check_id(v.pad, "padding");
  check_id(v.eot, "eot");
  check_id(v.eom, "eom");
  check_id(v.fim_pad, "fim_pad");
  check_id(v.fim_rep, "fim_rep");
  check_id(v.fim_sep, "fim_sep");
  if (v.model == Vocab::Model::kSpm) {
    MOE_CHECK(v.merges.empty(), "{}: SPM tokenizer has {} merges, expected none", source,
              v.merges.size());
    return;
  }
  const auto& names = bpe_pre_names();
  MOE_CHECK(std::find(names.begin(), names.end(), v.pre) != names.end(),
            "{}: unknown BPE pre-tokenizer tokenizer.ggml.pre='{}' (supported: default, gpt-2, "
            "llama3, llama-v3, llama-bpe, qwen2, olmo, deepseek-llm)",
            source, v.pre);
  // An empty merge list is legal (llama.cpp loads it: a pure byte-level vocabulary, which is how
  // our byte tokenizer goes out); a missing tokenizer.ggml.merges key is refused by the reader.
  for (std::size_t r = 0; r < v.merges.size(); ++r) {
    const std::string& m = v.merges[r];
    // llama.cpp splits at the first space after the first byte.
    const std::size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    MOE_CHECK(sp != std::string::npos && sp + 1 < m.size(),
              "{}: merge {} is '{}', expected 'left right'", source, r, m);
    const std::string left = m.substr(0, sp), right = m.substr(sp + 1);
    MOE_CHECK(ids.count(left) && ids.count(right) && ids.count(left + right),
              "{}: merge {} '{}' names a token that is not in the vocabulary ('{}', '{}' or '{}')",
              source, r, m, left, right, left + right);
  }
}

std::string vocab_to_bytes(const Vocab& v) {
  std::string out(kMagic);
  out.push_back(v.model == Vocab::Model::kSpm ? 's' : 'b');
  put_str(out, v.pre);
  put_u32(out, static_cast<uint32_t>(v.tokens.size()));
  for (std::size_t i = 0; i < v.tokens.size(); ++i) {
    put_str(out, v.tokens[i]);
    uint32_t bits;
    std::memcpy(&bits, &v.scores[i], 4);
    put_u32(out, bits);
    put_u32(out, static_cast<uint32_t>(v.types[i]));
  }
  put_u32(out, static_cast<uint32_t>(v.merges.size()));
  for (const auto& m : v.merges) put_str(out, m);
  for (int32_t id : {v.bos, v.eos, v.unk, v.pad}) put_u32(out, static_cast<uint32_t>(id));
  put_u32(out, (v.add_bos ? 1u : 0u) | (v.add_eos ? 2u : 0u) | (v.add_space_prefix ? 4u : 0u) |
                   (v.ignore_merges ? 8u : 0u));
  // The end-of-generation ids follow only when one is set, so a vocabulary without them keeps
  // the bytes it always had (checkpoints written before them read the same).
  const int32_t eog[] = {v.eot, v.eom, v.fim_pad, v.fim_rep, v.fim_sep};
  if (std::any_of(std::begin(eog), std::end(eog), [](int32_t id) { return id >= 0; }))
    for (int32_t id : eog) put_u32(out, static_cast<uint32_t>(id));
  return out;
}

Vocab vocab_from_bytes(std::string_view bytes, const std::string& source) {
  MOE_CHECK(bytes.size() > kMagic.size() && bytes.substr(0, kMagic.size()) == kMagic,
            "{}: not a moe vocab blob (bad magic)", source);
  Reader r(bytes.substr(kMagic.size() + 1), source);
  Vocab v;
  const char model = bytes[kMagic.size()];
  MOE_CHECK(model == 's' || model == 'b', "{}: vocab blob model '{}', expected 's' or 'b'", source,
            model);
  v.model = model == 's' ? Vocab::Model::kSpm : Vocab::Model::kBpe;
  v.pre = r.str("pre");
  const uint32_t n = r.count("tokens", 12);
  v.tokens.resize(n);
  v.scores.resize(n);
  v.types.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    v.tokens[i] = r.str("token");
    const uint32_t bits = r.u32("score");
    std::memcpy(&v.scores[i], &bits, 4);
    v.types[i] = static_cast<int32_t>(r.u32("type"));
  }
  const uint32_t m = r.count("merges", 4);
  v.merges.resize(m);
  for (uint32_t i = 0; i < m; ++i) v.merges[i] = r.str("merge");
  v.bos = static_cast<int32_t>(r.u32("bos"));
  v.eos = static_cast<int32_t>(r.u32("eos"));
  v.unk = static_cast<int32_t>(r.u32("unk"));
  v.pad = static_cast<int32_t>(r.u32("pad"));
  const uint32_t flags = r.u32("flags");
  MOE_CHECK(flags < 16, "{}: vocab blob flags {:#x} unknown", source, flags);
  v.add_bos = flags & 1;
  v.add_eos = flags & 2;
  v.add_space_prefix = flags & 4;
  v.ignore_merges = flags & 8;
  if (!r.done()) {
    v.eot = static_cast<int32_t>(r.u32("eot"));
    v.eom = static_cast<int32_t>(r.u32("eom"));
    v.fim_pad = static_cast<int32_t>(r.u32("fim_pad"));
    v.fim_rep = static_cast<int32_t>(r.u32("fim_rep"));
    v.fim_sep = static_cast<int32_t>(r.u32("fim_sep"));
  }
  MOE_CHECK(r.done(), "{}: vocab blob has trailing bytes", source);
  validate_vocab(v, source);
  return v;
}

}  // namespace moe::data
