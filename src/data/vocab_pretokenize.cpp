// BPE pre-tokenization: llama.cpp's unicode_regex_split with PCRE2 as the regex engine.
//
// llama.cpp first decodes the text to code points leniently (unicode_cpts_from_utf8: any byte
// that starts no complete sequence becomes U+FFFD and one byte is skipped; overlong forms and
// surrogates decode to their values), then applies its regexes one after the other: each
// regex cuts every current piece into its matches and the gaps between them. Finally each
// piece is re-encoded to UTF-8 and mapped through the GPT-2 byte alphabet.
//
// llama.cpp runs the gpt-2/llama3/qwen2 regexes through hand-written matchers and the others
// through std::regex over a "collapsed" text; both classify code points with its Unicode tables
// (letters \p{L}, numbers \p{N}, punctuation \p{P}, whitespace = the White_Space property). The
// PCRE2 patterns below are llama.cpp's with these changes, which keep the results identical:
//   - whitespace is \p{White_Space} (the property llama.cpp's table holds): PCRE2's \s under
//     UCP also matches U+180E, which is not White_Space since Unicode 6.3;
//   - a regex without \p{..} runs in llama.cpp through std::wregex on the code points with
//     every non-ASCII whitespace replaced by \v (so its literal classes never match them); we
//     run it on the same replaced text ("wide" patterns below);
//   - `$` is end of piece only (PCRE2_DOLLAR_ENDONLY, as ECMAScript).
// PCRE2 needs valid UTF-8: surrogate code points (which llama.cpp keeps) are matched as U+FFFD,
// which every pattern here classifies the same way (not a letter, number, punctuation or space).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <memory>

#include "moe/core/error.h"
#include "vocab_internal.h"

namespace moe::data::detail {

namespace {

// Whitespace, non-whitespace and the "other" class [^\s\p{L}\p{N}] of llama.cpp's tables.
#define WS "\\p{White_Space}"
#define NOT_WS "\\P{White_Space}"
#define CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

// gpt-2, olmo: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
constexpr const char* kGpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\p{White_Space}\\p{L}\\p{N}]+|" WS
    "+(?!" NOT_WS ")";
// llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//         ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
constexpr const char* kLlama3 = CONTRACTIONS
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\p{White_Space}\\p{L}\\p{N}]+[\\r\\n]*|" WS
    "*[\\r\\n]+|" WS "+(?!" NOT_WS ")|" WS "+";
// qwen2: as llama3 with single digits.
constexpr const char* kQwen2 = CONTRACTIONS
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\p{White_Space}\\p{L}\\p{N}]+[\\r\\n]*|" WS
    "*[\\r\\n]+|" WS "+(?!" NOT_WS ")|" WS "+";

// One regex of a pre-tokenizer. wide: llama.cpp runs it through std::wregex on the text with
// non-ASCII whitespace replaced by \v (it has no \p{..}); otherwise on the text as is.
struct Pattern {
  const char* regex;
  bool wide;
};

std::vector<Pattern> patterns_for(const std::string& pre) {
  if (pre == "gpt-2" || pre == "olmo") return {{kGpt2, false}};
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe") return {{kLlama3, false}};
  if (pre == "qwen2") return {{kQwen2, false}};
  if (pre == "deepseek-llm") {
    // llama.cpp's regexes with their literal classes written as code points (tooling may
    // normalize precomposed characters such as U+1FD3 or U+212A in a source file).
    return {
        {"[\\r\\n]", true},
        {WS "?"
            "[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}"
            "\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}"
            "\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}"
            "\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}"
            "\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}"
            "\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}"
            "\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}"
            "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}"
            "\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"
            "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"
            "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}"
            "\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}"
            "\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}"
            "\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}"
            "\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}"
            "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}"
            "\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"
            "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}"
            "\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}"
            "\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}"
            "\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}"
            "\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
         true},
        {WS "?"
            "[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}"
            "\\x{3000}-\\x{3002}]+",
         true},
        {WS "+$", true},
        {"[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+", true},
        {"\\p{N}+", false},
    };
  }
  if (pre == "default") {
    return {{"[\\p{P}\\$\\+<=>\\^~\\|]+", false},
            {kGpt2, false},
            {"\\p{N}+", false},
            {"[0-9][0-9][0-9]", true}};
  }
  MOE_FAIL(
      "unknown BPE pre-tokenizer tokenizer.ggml.pre='{}' (supported: default, gpt-2, llama3, "
      "llama-v3, llama-bpe, qwen2, olmo, deepseek-llm)",
      pre);
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

// llama.cpp's unicode_cpt_from_utf8 + unicode_cpts_from_utf8: lead-bit driven, no checks for
// overlong forms or surrogates; a byte that starts no complete sequence becomes U+FFFD.
std::vector<uint32_t> lenient_cpts(std::string_view s) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  const auto b = [&](std::size_t i) { return static_cast<uint8_t>(s[i]); };
  const auto cont = [&](std::size_t i) { return i < s.size() && (b(i) & 0xC0) == 0x80; };
  for (std::size_t i = 0; i < s.size();) {
    const uint8_t c = b(i);
    if (c < 0x80) {
      cps.push_back(c);
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && cont(i + 1)) {
      cps.push_back(uint32_t(c & 0x1F) << 6 | (b(i + 1) & 0x3F));
      i += 2;
    } else if ((c & 0xF0) == 0xE0 && cont(i + 1) && cont(i + 2)) {
      cps.push_back(uint32_t(c & 0x0F) << 12 | uint32_t(b(i + 1) & 0x3F) << 6 | (b(i + 2) & 0x3F));
      i += 3;
    } else if ((c & 0xF8) == 0xF0 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      const uint32_t cp = uint32_t(c & 0x07) << 18 | uint32_t(b(i + 1) & 0x3F) << 12 |
                          uint32_t(b(i + 2) & 0x3F) << 6 | (b(i + 3) & 0x3F);
      // llama.cpp decodes it, then throws when re-encoding ("invalid codepoint").
      MOE_CHECK(cp <= 0x10FFFF,
                "bpe-bytelevel tokenizer: byte offset {} encodes U+{:X}, above U+10FFFF "
                "(llama.cpp refuses such text too)",
                i, cp);
      cps.push_back(cp);
      i += 4;
    } else {
      cps.push_back(0xFFFD);
      i += 1;
    }
  }
  return cps;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

// The text PCRE2 sees (valid UTF-8) with, for each code point, where it starts, and for each
// byte offset that starts a code point, that code point's index.
struct Subject {
  std::string text;
  std::vector<uint32_t> byte_at;  // [cps + 1]
  std::vector<uint32_t> cp_at;    // [text.size() + 1], valid at code point starts
};

// Surrogates (kept by llama.cpp's decoder, invalid for PCRE2) are seen as U+FFFD; with
// vt_at, the code points marked there are seen as \v.
Subject make_subject(const std::vector<uint32_t>& cps, const std::vector<bool>* vt_at) {
  Subject s;
  s.text.reserve(cps.size() + 8);
  s.byte_at.resize(cps.size() + 1);
  for (std::size_t i = 0; i < cps.size(); ++i) {
    s.byte_at[i] = static_cast<uint32_t>(s.text.size());
    uint32_t cp = cps[i];
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
    if (vt_at && (*vt_at)[i]) cp = 0x0B;
    append_utf8(s.text, cp);
    s.cp_at.resize(s.text.size(), uint32_t(i));
  }
  s.byte_at[cps.size()] = static_cast<uint32_t>(s.text.size());
  s.cp_at.resize(s.text.size() + 1, uint32_t(cps.size()));
  return s;
}

pcre2_code* compile(const std::string& pre, const char* pattern) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                    PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &err_off, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    MOE_FAIL("pre-tokenizer '{}': PCRE2 cannot compile '{}' at {}: {}", pre, pattern, err_off,
             reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // faster if available; interpreted otherwise
  return code;
}

using Code = std::unique_ptr<pcre2_code, CodeDeleter>;
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

// pcre2_match with one clear error for anything but a match or no match.
bool match(const pcre2_code* code, const char* subject, std::size_t len, std::size_t pos,
           pcre2_match_data* md) {
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject), len, pos,
                             PCRE2_NO_UTF_CHECK, md, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    MOE_FAIL("bpe-bytelevel pre-tokenizer: PCRE2 failed on a piece of {} bytes: {}", len,
             reinterpret_cast<const char*>(msg));
  }
  return true;
}

}  // namespace

struct PreTokenizer::Impl {
  std::vector<Code> codes;
  std::vector<bool> wide;
  Code non_ascii_space;  // one non-ASCII White_Space code point
};

PreTokenizer::PreTokenizer(const std::string& pre) : impl_(std::make_unique<Impl>()) {
  for (const Pattern& p : patterns_for(pre)) {
    impl_->codes.emplace_back(compile(pre, p.regex));
    impl_->wide.push_back(p.wide);
  }
  impl_->non_ascii_space.reset(compile(pre, "[^\\P{White_Space}\\x00-\\x7F]"));
}

PreTokenizer::~PreTokenizer() = default;

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  MOE_CHECK(text.size() < (std::size_t{1} << 31),
            "bpe-bytelevel tokenizer: text of {} bytes; encode at most 2 GiB at a time",
            text.size());
  const std::vector<uint32_t> cps = lenient_cpts(text);
  const Subject plain = make_subject(cps, nullptr);
  MatchData md(pcre2_match_data_create(1, nullptr));
  Subject wide;
  if (std::find(impl_->wide.begin(), impl_->wide.end(), true) != impl_->wide.end()) {
    std::vector<bool> vt_at(cps.size(), false);
    for (std::size_t pos = 0; match(impl_->non_ascii_space.get(), plain.text.data(),
                                    plain.text.size(), pos, md.get());) {
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      vt_at[plain.cp_at[ov[0]]] = true;
      pos = ov[1];
    }
    wide = make_subject(cps, &vt_at);
  }

  // Pieces as code point counts, like llama.cpp's bpe_offsets.
  std::vector<std::size_t> pieces = {cps.size()};
  for (std::size_t r = 0; r < impl_->codes.size(); ++r) {
    const pcre2_code* code = impl_->codes[r].get();
    const Subject& sub = impl_->wide[r] ? wide : plain;
    std::vector<std::size_t> next;
    next.reserve(pieces.size() * 2);
    std::size_t start = 0;  // code point index of the piece
    for (std::size_t len : pieces) {
      // The piece alone is the subject: lookarounds and $ see its ends, as in llama.cpp.
      const std::size_t b0 = sub.byte_at[start], n = sub.byte_at[start + len] - b0;
      const char* piece = sub.text.data() + b0;
      std::size_t pos = 0, done = 0;  // byte offsets within the piece
      while (pos < n && match(code, piece, n, pos, md.get())) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        if (ov[1] == ov[0]) {  // an empty match: step over one code point, as std::regex does
          const std::size_t cp = sub.cp_at[b0 + ov[0]];
          pos = cp < cps.size() ? sub.byte_at[cp + 1] - b0 : n;
          continue;
        }
        const std::size_t m0 = sub.cp_at[b0 + ov[0]], m1 = sub.cp_at[b0 + ov[1]];
        const std::size_t d = sub.cp_at[b0 + done];
        if (m0 > d) next.push_back(m0 - d);  // the gap before the match
        next.push_back(m1 - m0);
        done = pos = ov[1];
      }
      const std::size_t d = sub.cp_at[b0 + done];
      if (start + len > d) next.push_back(start + len - d);
      start += len;
    }
    pieces = std::move(next);
  }

  std::vector<std::string> words;
  words.reserve(pieces.size());
  std::size_t start = 0;
  std::string utf8;
  for (std::size_t len : pieces) {
    utf8.clear();
    for (std::size_t i = start; i < start + len; ++i) append_utf8(utf8, cps[i]);
    std::string word;
    word.reserve(utf8.size() * 2);
    for (char c : utf8) word += gpt2_byte_to_utf8(static_cast<uint8_t>(c));
    words.push_back(std::move(word));
    start += len;
  }
  return words;
}

}  // namespace moe::data::detail
