// Tokenizers: text ↔ token ids, byte-exact.
//
// The "byte" and "bpe" kinds satisfy, for ANY byte string t (valid UTF-8 or not), the two
// identities below; the llama.cpp-compatible kinds "spm" and "bpe-bytelevel" (vocab.h) satisfy
// them with the exceptions listed there (a prefixed space, invalid UTF-8 in BPE):
//   decode(encode(t)) == t   and   Σ token_bytes(id) over encode(t) == t.size()
// The second identity is what makes bits-per-byte comparable across tokenizers: a model's
// summed loss over some predicted tokens is divided by the bytes those tokens stand for
// (docs/DATA.md).
//
// A tokenizer is stored inside each checkpoint's metadata as (kind(), serialize()), so a
// checkpoint can be evaluated or sampled without the text it was trained on.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe::data {

class Tokenizer {
 public:
  virtual ~Tokenizer();
  virtual std::string kind() const = 0;  // "byte" | "bpe" | "spm" | "bpe-bytelevel" (vocab.h)
  virtual int vocab_size() const = 0;    // ids are in [0, vocab_size)
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // Errors on an id outside [0, vocab_size).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The number of bytes of text the token stands for (0 for control tokens such as <unk>,
  // which encode never produces). Errors on an id out of range.
  virtual int token_bytes(int32_t id) const = 0;
  // A self-contained blob (base64 text, so it can sit in safetensors string metadata) from which
  // tokenizer_from_serialized rebuilds an identical tokenizer.
  virtual std::string serialize() const = 0;
};

// vocab 256, id = byte value, token_bytes = 1. serialize() is "" (there is nothing to store).
std::unique_ptr<Tokenizer> make_byte_tokenizer();

// Trains a SentencePiece BPE model in-process on the lines of the text file at text_path.
// The model is set up to be byte-exact: byte_fallback (ids 1..256 are the 256 byte tokens,
// id 0 is <unk>, no <s>/</s>), identity normalisation, no dummy prefix, whitespace kept as is.
// A piece's token_bytes is its UTF-8 length with the space marker U+2581 counted as the one
// byte of the space it replaces; a byte-fallback token counts 1.
// Deterministic: the same file and vocab_size give the same model. Training reads at most
// kBpeMaxTrainBytes of the file, taking evenly spaced lines when the file is larger, so it stays
// fast on big inputs. Errors name the file (missing, not UTF-8, no text, vocab_size too small
// for 257 fixed tokens plus the file's characters).
std::unique_ptr<Tokenizer> train_bpe(const std::string& text_path, int vocab_size);
inline constexpr std::size_t kBpeMaxTrainBytes = std::size_t{8} << 20;

// Rebuilds a tokenizer from (kind(), serialize()). Errors clearly on an unknown kind, a blob that
// is not base64 or not a SentencePiece model, or a model that is not byte-exact.
std::unique_ptr<Tokenizer> tokenizer_from_serialized(const std::string& kind,
                                                     const std::string& blob);

// The byte offset of the first invalid UTF-8 sequence in text (overlong forms, surrogates and
// code points above U+10FFFF are invalid), or std::string_view::npos if it is all valid.
std::size_t find_invalid_utf8(std::string_view text);

}  // namespace moe::data
