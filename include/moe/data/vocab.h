// The tokenizer vocabularies real MoE models ship with, tokenized exactly as llama.cpp does
// (src/llama-vocab.cpp, src/unicode.cpp of the llama.cpp in build/llama_ref are the reference;
// tests/python/test_tokenizers_llama.py compares ids with it).
//
// A Vocab holds what GGUF's tokenizer.ggml.* keys hold. Two models:
//   kSpm (GGUF "llama"): SentencePiece-style. Spaces become U+2581; with add_space_prefix a
//        space is put before the text (and after every user-defined token); the characters are
//        merged greedily by the score of the merged token (highest first, leftmost on ties);
//        a piece that is not a token becomes its bytes' <0xXX> tokens (byte fallback).
//   kBpe (GGUF "gpt2"): GPT-2 byte-level BPE. The text is split by the pre-tokenizer regexes of
//        `pre` (PCRE2, Unicode properties), each word's bytes are mapped to printable code
//        points (the GPT-2 byte↔unicode table) and merged by the rank of the merge (its index
//        in `merges`).
// In both, user-defined tokens (type 4) are cut out of the text first, longest first, and
// emitted as themselves; control and unknown tokens are never produced by encode.
//
// Invalid UTF-8: exactly as llama.cpp, the BPE pre-tokenizer decodes the text leniently (an
// overlong form decodes to its value, a surrogate to itself) and replaces each byte that starts
// no sequence by U+FFFD, so such bytes tokenize as the 3 bytes EF BF BD (lossy, like
// llama.cpp). A 4-byte form above U+10FFFF makes llama.cpp throw; we refuse it with a clear
// error. SPM cuts the text at lead bytes and turns what is not a token into byte tokens.
//
// token_bytes(id) is the length of what the token decodes to: SPM ▁ counts as its one space
// byte, byte tokens 1, control/unknown/unused tokens 0, BPE the byte length after unmapping.
// decode(ids) concatenates those pieces (llama.cpp's token_to_piece without special tokens).
// Where decode(encode(t)) != t and Σ token_bytes != t.size() (tokenizer.h), as in llama.cpp:
//   SPM: add_space_prefix adds one space in front (and after each user-defined token); a
//        literal U+2581 in the text decodes as a space; a space escaped to U+2581 that an
//        invalid lead byte swallows into its "character" comes back as the 3 bytes E2 96 81;
//   BPE: each invalid byte comes back as EF BF BD, an overlong form as its code point.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "moe/data/tokenizer.h"

namespace moe::data {

// llama_token_type (llama.h).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct Vocab {
  enum class Model { kSpm, kBpe };
  Model model = Model::kSpm;
  // tokenizer.ggml.pre; BPE only. One of bpe_pre_names() ("" reads as "default", as llama.cpp).
  std::string pre;
  std::vector<std::string> tokens;  // [V] the token texts (SPM: with U+2581; BPE: byte-mapped)
  std::vector<float> scores;        // [V] SPM merge priority (BPE: unused, may be all 0)
  std::vector<int32_t> types;       // [V] TokenType values
  std::vector<std::string> merges;  // BPE: "left right", rank = index
  // Special ids, -1 when absent. Defaults per model are llama.cpp's (make_default_vocab).
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  // llama.cpp's other special ids that end a generation (tokenizer.ggml.eot_token_id,
  // eom_token_id, fim_pad/fim_rep/fim_sep_token_id), -1 when the file names none: eog_ids
  // reads them.
  int32_t eot = -1, eom = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
  // What llama.cpp would add with add_special=true; encode() never adds them (the eval command
  // windows raw ids) but they are kept so a converted checkpoint round-trips its tokenizer.
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = false;  // SPM: default true; BPE: always false in llama.cpp
  bool ignore_merges = false;     // BPE: a word that is a whole token skips merging (llama3)
};

// A Vocab with llama.cpp's defaults for the model (and, for BPE, the pre): SPM bos 1, eos 2,
// unk 0, add_bos, add_space_prefix; BPE bos = eos = 11 (llama.cpp's odd default), llama3 adds
// bos and ignores merges. Ids outside the vocabulary are dropped to -1 by validate_vocab's
// caller (vocab_from_gguf), as llama.cpp does.
Vocab make_default_vocab(Vocab::Model model, const std::string& pre);

// The ids that end a generation, ascending: llama.cpp's special_eog_ids (llama-vocab.cpp load();
// llama_vocab_is_eog), built the same way from the same metadata:
//   eos, eot, eom and fim_pad/fim_rep/fim_sep where the vocabulary names them; where it names
//   no eot, eom or fim_pad/rep/sep, the token whose text llama.cpp looks for (e.g. "<|im_end|>",
//   "<|fim_pad|>"; several candidates: the lowest id, where llama.cpp's pick follows its hash
//   map); every token whose text is one llama.cpp ends on ("<|eot_id|>", "<|im_end|>", "</s>",
//   "<|endoftext|>", …); then its two exceptions: "<|end|>" is dropped when "<|return|>" and
//   "<|call|>" (or "<|calls|>" and "<|flush|>") are in the set, "</s>" when "<|tool_response>" is.
// The same rule serves a GGUF's and a Hugging Face tokenizer's vocabulary (the latter has only
// eos from its metadata; the texts find the rest).
std::vector<int32_t> eog_ids(const Vocab& v);

// The BPE pre-tokenizer names we implement (llama.cpp's tokenizer.ggml.pre spellings; note
// llama.cpp spells GPT-2's "gpt-2" and refuses "gpt2"): default, gpt-2, llama3, llama-v3,
// llama-bpe, qwen2, olmo, deepseek-llm.
const std::vector<std::string>& bpe_pre_names();

// Checks everything encode relies on; one clear error naming `source` and the field:
// lengths of scores/types, type values, non-empty unique tokens, ids in range, BPE merges of
// the form "left right" whose two sides and concatenation are tokens, a known pre, SPM byte
// tokens "<0xXX>" of type 6.
void validate_vocab(const Vocab& v, const std::string& source);

// The tokenizer for a validated vocab. kind() is "spm" or "bpe-bytelevel"; serialize() holds
// the whole vocab (tokenizer_from_serialized rebuilds it).
std::unique_ptr<Tokenizer> make_vocab_tokenizer(Vocab v, const std::string& source = "vocab");

// The vocab behind a tokenizer made by make_vocab_tokenizer (nullptr for other kinds).
const Vocab* vocab_of(const Tokenizer& t);

// A Hugging Face tokenizer.json (text = the file's contents, source names it in errors):
//   model.type "BPE" with a ByteLevel pre-tokenizer → kBpe; pre = `pre` if not empty, else
//     inferred from the Split regex when it is one llama.cpp's convert maps to a known pre;
//   model.type "BPE" with byte_fallback and a Metaspace pre-tokenizer or a Prepend("▁") +
//     Replace(" "→"▁") normalizer (Llama/Mixtral) → kSpm, scores and types derived as
//     gguf-py's LlamaHfVocab does (score = -rank, byte tokens <0xXX> type 6, added tokens
//     control or user-defined).
Vocab vocab_from_hf_tokenizer_json(std::string_view text, const std::string& source,
                                   const std::string& pre = "");
// The inverse for byte-level BPE vocabularies whose pre-tokenizer tokenizer.json can express
// (gpt-2 as a ByteLevel pre-tokenizer; llama-bpe/llama3 and qwen2 as their Split regex before
// it): vocab_from_hf_tokenizer_json of the result gives v back (holes as unused "[PADn]" tokens
// read back as normal). Errors name `what` for SentencePiece vocabularies and other pres.
std::string vocab_to_hf_tokenizer_json(const Vocab& v, const std::string& what);

// Serialized form used by the tokenizer blob (binary, length-prefixed; parsed defensively).
std::string vocab_to_bytes(const Vocab& v);
Vocab vocab_from_bytes(std::string_view bytes, const std::string& source);

// The GPT-2 byte-level alphabet: the UTF-8 of the code point byte b is mapped to.
const std::string& gpt2_byte_to_utf8(uint8_t b);

}  // namespace moe::data
