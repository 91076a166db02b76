// The SPM and byte-level BPE tokenizers over a Vocab, step for step as llama.cpp's
// llama_vocab::impl::tokenize(text, add_special=false, parse_special=false):
//   1. user-defined tokens are cut out of the text (tokenizer_st_partition);
//   2. each remaining fragment is tokenized by llm_tokenizer_spm_session (SPM) or
//      llm_tokenizer_bpe_session (BPE).
// The merge loops keep llama.cpp's priority queues (same comparators, same push order), so ties
// resolve the same way.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <queue>
#include <unordered_map>

#include "moe/core/error.h"
#include "moe/data/vocab.h"
#include "vocab_internal.h"

namespace moe::data {

namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  for (std::size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) {
    out.append(s, i, j - i);
    out += to;
  }
  out.append(s, i, std::string::npos);
  s = std::move(out);
}

// One symbol of the merge loops: a byte range of the text and its neighbours.
struct Symbol {
  int prev;
  int next;
  const char* text;
  std::size_t n;
};

// Symbols for each lead-byte-sized "character" of text (llama.cpp cuts invalid UTF-8 the same
// way: a lead byte claims its announced length, clamped to the end).
std::vector<Symbol> split_chars(const std::string& text) {
  std::vector<Symbol> symbols;
  int index = 0;
  for (std::size_t offs = 0; offs < text.size();) {
    Symbol s;
    s.text = text.data() + offs;
    s.n = std::min(detail::lead_len(text[offs]), text.size() - offs);
    offs += s.n;
    s.prev = index - 1;
    s.next = offs == text.size() ? -1 : index + 1;
    ++index;
    symbols.push_back(s);
  }
  return symbols;
}

// A merge pair as one unambiguous map key (token texts may hold any byte).
std::string rank_key(const std::string& left, const std::string& right) {
  return std::to_string(left.size()) + ':' + left + right;
}

class VocabTokenizer final : public Tokenizer {
 public:
  VocabTokenizer(Vocab v, const std::string& source)
      : v_(std::move(v)), pre_(v_.model == Vocab::Model::kBpe ? v_.pre : "default") {
    validate_vocab(v_, source);
    const int n = static_cast<int>(v_.tokens.size());
    for (int id = 0; id < n; ++id) id_of_.emplace(v_.tokens[id], id);
    if (v_.model == Vocab::Model::kBpe) {
      for (int r = 0; r < static_cast<int>(v_.merges.size()); ++r) {
        const std::string& m = v_.merges[r];
        const std::size_t sp = m.find(' ', 1);
        ranks_.emplace(rank_key(m.substr(0, sp), m.substr(sp + 1)), r);  // first rank wins
      }
      pre_tok_ = std::make_unique<detail::PreTokenizer>(v_.pre);
      for (int b = 0; b < 256; ++b) byte_of_[gpt2_byte_to_utf8(uint8_t(b))] = uint8_t(b);
    }
    pieces_.resize(n);
    for (int id = 0; id < n; ++id) pieces_[id] = make_piece(id);
    // tokenizer_st_partition's list: with parse_special=false only user-defined tokens, longest
    // first (std::sort over ascending ids, as llama.cpp sorts its cache).
    for (int id = 0; id < n; ++id) {
      if (v_.types[id] == int32_t(TokenType::kUserDefined)) user_defined_.push_back(id);
    }
    std::sort(user_defined_.begin(), user_defined_.end(),
              [&](int a, int b) { return v_.tokens[a].size() > v_.tokens[b].size(); });
  }

  const Vocab& vocab() const { return v_; }
  std::string kind() const override {
    return v_.model == Vocab::Model::kSpm ? "spm" : "bpe-bytelevel";
  }
  int vocab_size() const override { return static_cast<int>(v_.tokens.size()); }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> out;
    bool prev_special = true;  // SPM: the first fragment gets the space prefix
    for (const Fragment& f : partition(text)) {
      if (f.token >= 0) {
        out.push_back(f.token);
        prev_special = true;
        continue;
      }
      std::string frag = text.substr(f.offset, f.length);
      if (v_.model == Vocab::Model::kSpm) {
        if (v_.add_space_prefix && prev_special) frag.insert(frag.begin(), ' ');
        replace_all(frag, " ", kSpaceMarker);
        spm_tokenize(frag, out);
        prev_special = false;
      } else {
        bpe_tokenize(frag, out);
      }
    }
    return out;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      MOE_CHECK(ids[i] >= 0 && ids[i] < vocab_size(),
                "{} tokenizer: token id {} at position {} is out of range [0, {})", kind(), ids[i],
                i, vocab_size());
      out += pieces_[ids[i]];
    }
    return out;
  }

  int token_bytes(int32_t id) const override {
    MOE_CHECK(id >= 0 && id < vocab_size(), "{} tokenizer: token id {} out of range [0, {})",
              kind(), id, vocab_size());
    return static_cast<int>(pieces_[id].size());
  }

  std::string serialize() const override { return detail::base64_encode(vocab_to_bytes(v_)); }

 private:
  struct Fragment {
    int32_t token;  // >= 0: a user-defined token; -1: raw text [offset, offset + length)
    std::size_t offset, length;
  };

  // llama.cpp's token_to_piece(special=false): control/unknown/unused/undefined → "", user-defined
  // as written, byte tokens their byte, normal tokens unescaped (SPM) or unmapped (BPE).
  std::string make_piece(int id) const {
    const std::string& t = v_.tokens[id];
    switch (static_cast<TokenType>(v_.types[id])) {
      case TokenType::kUserDefined:
        return t;
      case TokenType::kByte:
        // "<0xXX>" in both models (validate_vocab checks the form).
        return std::string(1, char(std::stoi(t.substr(3, 2), nullptr, 16)));
      case TokenType::kNormal: {
        if (v_.model == Vocab::Model::kSpm) {
          std::string s = t;
          replace_all(s, kSpaceMarker, " ");
          return s;
        }
        std::string s;
        for (std::size_t i = 0; i < t.size();) {
          const std::size_t len = std::min(detail::lead_len(t[i]), t.size() - i);
          const auto it = byte_of_.find(t.substr(i, len));
          if (it != byte_of_.end()) {
            s.push_back(char(it->second));
          } else {
            // llama.cpp's llama_decode_text for a character outside the byte alphabet.
            s += "[UNK_BYTE_0x";
            for (std::size_t k = i; k < i + len; ++k) s += fmt::format("{:02x}", uint8_t(t[k]));
            s += t + "]";
          }
          i += len;
        }
        return s;
      }
      default:
        return "";
    }
  }

  int32_t find(const std::string& text) const {
    const auto it = id_of_.find(text);
    return it == id_of_.end() ? -1 : it->second;
  }

  std::vector<Fragment> partition(const std::string& text) const {
    std::vector<Fragment> frags;
    if (!text.empty()) frags.push_back({-1, 0, text.size()});
    for (int id : user_defined_) {
      const std::string& tok = v_.tokens[id];
      std::vector<Fragment> next;
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          next.push_back(f);
          continue;
        }
        std::size_t off = f.offset, len = f.length;
        while (len > 0) {
          const std::size_t m = std::string_view(text.data(), off + len).find(tok, off);
          if (m == std::string_view::npos) {
            next.push_back({-1, off, len});
            break;
          }
          if (m > off) next.push_back({-1, off, m - off});
          next.push_back({id, 0, 0});
          len -= (m - off) + tok.size();
          off = m + tok.size();
        }
      }
      frags = std::move(next);
    }
    return frags;
  }

  int32_t spm_byte_token(uint8_t b, const std::string& source) const {
    static constexpr char kHex[] = "0123456789ABCDEF";
    const char buf[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
    int32_t id = find(buf);
    if (id < 0) id = find(std::string(1, char(b)));
    MOE_CHECK(id >= 0,
              "spm tokenizer: no token for byte {:#04x} (neither <0x{:02X}> nor the byte) "
              "needed by '{}'",
              b, b, source);
    return id;
  }

  // llm_tokenizer_spm_session::tokenize on already escaped text.
  void spm_tokenize(const std::string& text, std::vector<int32_t>& out) const {
    struct Bigram {
      int left, right;
      float score;
      std::size_t size;
    };
    const auto less = [](const Bigram& l, const Bigram& r) {
      return l.score < r.score || (l.score == r.score && l.left > r.left);
    };
    std::priority_queue<Bigram, std::vector<Bigram>, decltype(less)> queue(less);
    std::vector<Symbol> sym = split_chars(text);
    std::map<std::string, std::pair<int, int>> rev_merge;
    const auto try_add = [&](int left, int right) {
      if (left == -1 || right == -1) return;
      std::string s(sym[left].text, sym[left].n + sym[right].n);
      const int32_t id = find(s);
      if (id < 0) return;
      queue.push({left, right, v_.scores[id], s.size()});
      rev_merge[s] = {left, right};
    };
    for (int i = 1; i < static_cast<int>(sym.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = sym[b.left];
      Symbol& r = sym[b.right];
      if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;  // already merged away
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }
    // A symbol that is not a token is split back along the merges that built it; what is left
    // becomes byte tokens.
    const auto resegment = [&](auto&& self, const Symbol& s) -> void {
      const std::string piece(s.text, s.n);
      const int32_t id = find(piece);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
      const auto p = rev_merge.find(piece);
      if (p == rev_merge.end()) {
        for (std::size_t j = 0; j < s.n; ++j)
          out.push_back(spm_byte_token(uint8_t(s.text[j]), piece));
        return;
      }
      self(self, sym[p->second.first]);
      self(self, sym[p->second.second]);
    };
    if (sym.empty()) return;
    for (int i = 0; i != -1; i = sym[i].next) resegment(resegment, sym[i]);
  }

  int rank(const std::string& left, const std::string& right) const {
    const auto it = ranks_.find(rank_key(left, right));
    return it == ranks_.end() ? -1 : it->second;
  }

  // llm_tokenizer_bpe_session::tokenize.
  void bpe_tokenize(const std::string& text, std::vector<int32_t>& out) const {
    struct Bigram {
      int left, right;
      std::string text;
      int rank;
    };
    const auto greater = [](const Bigram& l, const Bigram& r) {
      return l.rank > r.rank || (l.rank == r.rank && l.left > r.left);
    };
    for (const std::string& word : pre_tok_->split(text)) {
      std::vector<Symbol> sym;
      if (v_.ignore_merges && find(word) >= 0) {
        sym.push_back({-1, -1, word.data(), word.size()});
      } else {
        sym = split_chars(word);
      }
      std::priority_queue<Bigram, std::vector<Bigram>, decltype(greater)> queue(greater);
      const auto add = [&](int left, int right) {
        if (left == -1 || right == -1) return;
        std::string l(sym[left].text, sym[left].n), r(sym[right].text, sym[right].n);
        const int rk = rank(l, r);
        if (rk < 0) return;
        queue.push({left, right, l + r, rk});
      };
      for (int i = 1; i < static_cast<int>(sym.size()); ++i) add(i - 1, i);
      while (!queue.empty()) {
        const Bigram b = queue.top();
        queue.pop();
        Symbol& l = sym[b.left];
        Symbol& r = sym[b.right];
        if (l.n == 0 || r.n == 0) continue;
        if (std::string(l.text, l.n) + std::string(r.text, r.n) != b.text) continue;  // outdated
        l.n += r.n;
        r.n = 0;
        l.next = r.next;
        if (r.next >= 0) sym[r.next].prev = b.left;
        add(l.prev, b.left);
        add(b.left, l.next);
      }
      for (const Symbol& s : sym) {
        if (s.n == 0) continue;
        const std::string str(s.text, s.n);
        const int32_t id = find(str);
        if (id >= 0) {
          out.push_back(id);
          continue;
        }
        // llama.cpp looks each byte of the mapped text up as a one-byte token and drops the
        // ones that are not (only ASCII can be): lossy, kept for identical ids.
        for (char c : str) {
          const int32_t b = find(std::string(1, c));
          if (b >= 0) out.push_back(b);
        }
      }
    }
  }

  Vocab v_;
  std::string pre_;
  std::unordered_map<std::string, int32_t> id_of_;
  std::unordered_map<std::string, int> ranks_;        // rank_key(left, right) → rank
  std::unordered_map<std::string, uint8_t> byte_of_;  // GPT-2 alphabet character → byte
  std::unique_ptr<detail::PreTokenizer> pre_tok_;
  std::vector<std::string> pieces_;  // [V] what each id decodes to
  std::vector<int> user_defined_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_vocab_tokenizer(Vocab v, const std::string& source) {
  return std::make_unique<VocabTokenizer>(std::move(v), source);
}

const Vocab* vocab_of(const Tokenizer& t) {
  const auto* vt = dynamic_cast<const VocabTokenizer*>(&t);
  return vt ? &vt->vocab() : nullptr;
}

}  // namespace moe::data
