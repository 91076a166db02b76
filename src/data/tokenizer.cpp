#include "moe/data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "vocab_internal.h"

namespace moe::data {

namespace {

// SentencePiece's visible stand-in for a space.
constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581
// Training "sentences" longer than this are cut (at a character boundary); SentencePiece
// silently skips sentences above its max_sentence_length, which would bias the sample.
constexpr std::size_t kMaxTrainLine = 16384;
// Fixed so training is reproducible; SentencePiece otherwise seeds from std::random_device.
constexpr unsigned int kSentencePieceSeed = 20240601;
// Text that must survive encode → decode unchanged for a model to be accepted: repeated and
// leading/trailing spaces, tabs, newlines, control bytes, multi-byte UTF-8, a literal U+2581
// and an invalid byte.
constexpr std::string_view kProbe =
    "  The  jury\tsaid \"no\" .\n\n\t x\r\n\x01\x7f "
    "naïve café 日本語 🙂 ▁ ▁▁x \xff end  ";

// Length in bytes of the valid UTF-8 character starting at text[i], or 0 if none starts there.
std::size_t utf8_char_len(std::string_view text, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
  const std::size_t left = text.size() - i;
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  const auto cont = [&](std::size_t k) { return k < left && (b(k) & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(1) >= 0xA0) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

class ByteTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "byte"; }
  int vocab_size() const override { return 256; }
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out(ids.size(), '\0');
    for (std::size_t i = 0; i < ids.size(); ++i) {
      MOE_CHECK(ids[i] >= 0 && ids[i] < 256,
                "byte tokenizer: token id {} at position {} is out of range [0, 256)", ids[i], i);
      out[i] = static_cast<char>(ids[i]);
    }
    return out;
  }
  int token_bytes(int32_t id) const override {
    MOE_CHECK(id >= 0 && id < 256, "byte tokenizer: token id {} out of range [0, 256)", id);
    return 1;
  }
  std::string serialize() const override { return ""; }
};

constexpr char kBase64Alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

namespace detail {

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v =
        (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kBase64Alphabet[(v >> s) & 63]);
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    out.push_back(kBase64Alphabet[(v >> 18) & 63]);
    out.push_back(kBase64Alphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < in.size() ? kBase64Alphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// Strict: standard alphabet, '=' padding to a multiple of 4, nothing else (no whitespace).
std::string base64_decode(std::string_view in, const char* what) {
  MOE_CHECK(in.size() % 4 == 0, "{}: not base64 (length {} is not a multiple of 4)", what,
            in.size());
  int8_t value[256];
  std::fill(std::begin(value), std::end(value), int8_t{-1});
  for (int k = 0; k < 64; ++k) value[static_cast<uint8_t>(kBase64Alphabet[k])] = int8_t(k);
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (std::size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    const int pad = last ? (in[i + 3] == '=') + (in[i + 2] == '=' && in[i + 3] == '=') : 0;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + k];
      int d = 0;
      if (k < 4 - pad) {
        d = value[static_cast<uint8_t>(c)];
        MOE_CHECK(d >= 0, "{}: not base64 (character {:#04x} at offset {})", what, uint8_t(c),
                  i + k);
      }
      v = (v << 6) | uint32_t(d);
    }
    out.push_back(char(v >> 16));
    if (pad < 2) out.push_back(char((v >> 8) & 0xFF));
    if (pad < 1) out.push_back(char(v & 0xFF));
  }
  return out;
}

}  // namespace detail

namespace {

using detail::base64_decode;
using detail::base64_encode;

// A SentencePiece BPE model used byte-exactly. SentencePiece does the segmentation of ordinary
// text; the bytes it cannot represent faithfully are routed straight to its byte-fallback
// tokens, and decoding is done here from a per-id table rather than by SentencePiece (whose
// decoder treats a leading space and a literal U+2581 specially).
class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(std::string model_proto) : model_(std::move(model_proto)) {
    const auto status = sp_.LoadFromSerializedProto(model_);
    MOE_CHECK(status.ok(), "bpe tokenizer: not a SentencePiece model ({})", status.ToString());
    const int n = sp_.GetPieceSize();
    byte_id_.assign(256, -1);
    decoded_.resize(n);
    bytes_.assign(n, 0);
    for (int id = 0; id < n; ++id) {
      const std::string& piece = sp_.IdToPiece(id);
      if (sp_.IsByte(id)) {
        // Byte pieces are spelled "<0xAB>".
        MOE_CHECK(piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>',
                  "bpe tokenizer: malformed byte piece '{}' (id {})", piece, id);
        const int b = std::stoi(piece.substr(3, 2), nullptr, 16);
        byte_id_[b] = id;
        decoded_[id] = std::string(1, char(b));
        bytes_[id] = 1;
      } else if (sp_.IsControl(id) || sp_.IsUnknown(id) || sp_.IsUnused(id)) {
        // Never produced by encode(); stands for no text.
      } else {
        std::string text;
        for (std::size_t i = 0; i < piece.size();) {
          if (piece.compare(i, kSpaceMarker.size(), kSpaceMarker) == 0) {
            text.push_back(' ');
            i += kSpaceMarker.size();
          } else {
            text.push_back(piece[i++]);
          }
        }
        // encode() feeds SentencePiece one line at a time, which is only equivalent to
        // encoding the whole text if no piece spans a newline.
        MOE_CHECK(text.find('\n') == std::string::npos,
                  "bpe tokenizer: piece {} contains a newline; not a moe model", id);
        MOE_CHECK(text.size() <= std::numeric_limits<uint16_t>::max(),
                  "bpe tokenizer: piece {} is {} bytes long", id, text.size());
        bytes_[id] = static_cast<int>(text.size());
        decoded_[id] = std::move(text);
      }
    }
    for (int b = 0; b < 256; ++b) {
      MOE_CHECK(byte_id_[b] >= 0,
                "bpe tokenizer: no byte-fallback token for byte {:#04x} (needs byte_fallback)", b);
    }
    // The normaliser settings are not visible through the processor's API, so check their
    // effect instead: a model trained with another normalisation fails this.
    const std::string probe(kProbe);
    const std::vector<int32_t> ids = encode(probe);
    std::size_t sum = 0;
    for (int32_t id : ids) sum += bytes_[id];
    MOE_CHECK(decode(ids) == probe && sum == probe.size(),
              "bpe tokenizer: the model does not reproduce text exactly (it needs identity "
              "normalisation, no dummy prefix and whitespace kept; train it with train_bpe)");
  }

  std::string kind() const override { return "bpe"; }
  int vocab_size() const override { return static_cast<int>(decoded_.size()); }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 1);
    std::vector<int> run_ids;
    const std::string_view all(text);
    std::size_t run_start = 0;
    auto flush_run = [&](std::size_t end) {
      if (end > run_start) {
        const auto status = sp_.Encode(all.substr(run_start, end - run_start), &run_ids);
        MOE_CHECK(status.ok(), "bpe tokenizer: SentencePiece failed to encode ({})",
                  status.ToString());
        ids.insert(ids.end(), run_ids.begin(), run_ids.end());
      }
    };
    // Runs of valid UTF-8 go to SentencePiece. Newlines (so a long text is encoded a line at a
    // time), literal U+2581 markers (SentencePiece would turn them into spaces) and invalid
    // bytes (it would replace them) become byte tokens directly.
    std::size_t i = 0;
    while (i < all.size()) {
      const std::size_t len = utf8_char_len(all, i);
      const bool marker = len == 3 && all.compare(i, 3, kSpaceMarker) == 0;
      if (len != 0 && all[i] != '\n' && !marker) {
        i += len;
        continue;
      }
      flush_run(i);
      const std::size_t n = len == 0 ? 1 : len;
      for (std::size_t k = 0; k < n; ++k) ids.push_back(byte_id_[uint8_t(all[i + k])]);
      i += n;
      run_start = i;
    }
    flush_run(all.size());
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    const int32_t n = vocab_size();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      MOE_CHECK(ids[i] >= 0 && ids[i] < n,
                "bpe tokenizer: token id {} at position {} is out of range [0, {})", ids[i], i, n);
      out += decoded_[ids[i]];
    }
    return out;
  }

  int token_bytes(int32_t id) const override {
    MOE_CHECK(id >= 0 && id < vocab_size(), "bpe tokenizer: token id {} out of range [0, {})", id,
              vocab_size());
    return bytes_[id];
  }

  std::string serialize() const override { return base64_encode(model_); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  std::string model_;                 // serialized ModelProto
  std::vector<int32_t> byte_id_;      // [256] byte value → its byte-fallback token id
  std::vector<std::string> decoded_;  // [V] the bytes each token stands for
  std::vector<int> bytes_;            // [V] decoded_[id].size()
};

// Feeds SentencePiece's trainer from memory: non-blank lines, evenly thinned to the byte cap.
class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(std::vector<std::string> lines) : lines_(std::move(lines)) {}
  bool done() const override { return pos_ >= lines_.size(); }
  void Next() override { ++pos_; }
  const std::string& value() const override { return lines_[pos_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string> lines_;
  std::size_t pos_ = 0;
};

std::vector<std::string> training_lines(const std::string& text) {
  std::vector<std::string_view> lines;
  std::size_t total = 0;
  for (std::size_t start = 0; start < text.size();) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    if (line.find_first_not_of(" \t\r\v\f") != std::string_view::npos) {
      lines.push_back(line);
      total += line.size();
    }
    start = end + 1;
  }
  // Every stride-th line: the sample spans the whole file (all genres) rather than its start.
  const std::size_t stride =
      std::max<std::size_t>(1, (total + kBpeMaxTrainBytes - 1) / kBpeMaxTrainBytes);
  std::vector<std::string> out;
  for (std::size_t k = 0; k < lines.size(); k += stride) {
    std::string_view line = lines[k];
    while (line.size() > kMaxTrainLine) {
      std::size_t cut = kMaxTrainLine;
      while (cut > 0 && (uint8_t(line[cut]) & 0xC0) == 0x80) --cut;  // keep characters whole
      out.emplace_back(line.substr(0, cut));
      line.remove_prefix(cut);
    }
    out.emplace_back(line);
  }
  return out;
}

}  // namespace

Tokenizer::~Tokenizer() = default;

std::size_t find_invalid_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t len = utf8_char_len(text, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> train_bpe(const std::string& text_path, int vocab_size) {
  MOE_CHECK(vocab_size > 257 && vocab_size <= (1 << 20),
            "train_bpe: vocab_size {} must be in (257, 2^20] (256 bytes and <unk> are fixed)",
            vocab_size);
  MOE_CHECK(file_exists(text_path), "{}: no such file (run `moe data fetch brown` first?)",
            text_path);
  const std::string text = read_file(text_path);
  const std::size_t bad = find_invalid_utf8(text);
  MOE_CHECK(bad == std::string_view::npos, "{}: not valid UTF-8 (first bad byte at offset {})",
            text_path, bad);
  LineIterator lines(training_lines(text));
  MOE_CHECK(!lines.done(), "{}: no text to train a tokenizer on", text_path);

  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      // Byte-exactness: every byte has a token, nothing is normalised, spaces stay spaces.
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      // Rare characters go to byte tokens instead of spending vocabulary on them.
      {"character_coverage", "0.9995"},
      {"unk_id", "0"},
      {"bos_id", "-1"},
      {"eos_id", "-1"},
      {"pad_id", "-1"},
      // Reproducibility: take the given lines in order, no random sampling, one thread.
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"num_threads", "1"},
      {"max_sentence_length", std::to_string(kMaxTrainLine)},
      {"minloglevel", "2"},
  };
  std::string model;
  {
    // The trainer's seed is process-global state.
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    sentencepiece::SetRandomGeneratorSeed(kSentencePieceSeed);
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
    MOE_CHECK(status.ok(), "{}: training a BPE tokenizer with vocab_size {} failed ({})", text_path,
              vocab_size, status.ToString());
  }
  return std::make_unique<BpeTokenizer>(std::move(model));
}

std::unique_ptr<Tokenizer> tokenizer_from_serialized(const std::string& kind,
                                                     const std::string& blob) {
  if (kind == "byte") {
    MOE_CHECK(blob.empty(), "byte tokenizer: expected an empty blob, got {} bytes", blob.size());
    return make_byte_tokenizer();
  }
  if (kind == "bpe") {
    MOE_CHECK(!blob.empty(), "bpe tokenizer: empty blob");
    return std::make_unique<BpeTokenizer>(base64_decode(blob, "bpe tokenizer blob"));
  }
  if (kind == "spm" || kind == "bpe-bytelevel") {
    const std::string what = kind + " tokenizer blob";
    Vocab v = vocab_from_bytes(base64_decode(blob, what.c_str()), what);
    MOE_CHECK((v.model == Vocab::Model::kSpm) == (kind == "spm"),
              "{}: the vocab inside is of the other model", what);
    return make_vocab_tokenizer(std::move(v), what);
  }
  MOE_FAIL("unknown tokenizer kind '{}' (expected 'byte', 'bpe', 'spm' or 'bpe-bytelevel')", kind);
}

}  // namespace moe::data
