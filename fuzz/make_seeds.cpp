// Writes the seed corpora of the fuzz targets (fuzz/README in docs/RELIABILITY.md) from our own
// files and writers, so every seed is a valid input that reaches deep into its parser:
//   config/        configs/**/*.json, and one with `--set` overrides (NUL-separated)
//   safetensors/   the small safetensors fixtures and a tiny checkpoint
//   checkpoint/    tiny checkpoints (dense, MoE, PEER) with each tokenizer kind in the metadata
//   tokenizer/     each tokenizer's blob, as fuzz_tokenizer reads it (mode byte + blob)
//   corpus/        Brown-tagged text, CRLF text, paragraphs, invalid UTF-8
//   gguf/          the tiny models exported to GGUF (F32, F16, Q8_0) with each vocabulary
//   hf_config/     each tests/fixtures/hf_*/config.json behind its fixture's index byte
//   hf_tokenizer/  byte-level BPE tokenizer.json files (gpt-2, llama3, qwen2)
// plus fuzz/seeds/<target>/ (small hand-made seeds, committed). Usage: make_seeds OUT_DIR.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../src/data/vocab_internal.h"
#include "moe/core/file_io.h"
#include "moe/data/tokenizer.h"
#include "moe/data/vocab.h"
#include "moe/formats/gguf_model.h"
#include "moe/formats/gguf_tokenizer.h"
#include "moe/formats/model_file.h"
#include "moe/model/transformer.h"
#include "moe/train/checkpoint.h"
#include "moe/train/config.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kSrc = MOE_SOURCE_DIR;

void put(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

void copy_small(const fs::path& from, const std::string& to_dir, std::uintmax_t max_bytes) {
  if (fs::file_size(from) > max_bytes) return;
  fs::create_directories(to_dir);
  fs::copy_file(
      from, to_dir + "/" + from.parent_path().filename().string() + "_" + from.filename().string(),
      fs::copy_options::overwrite_existing);
}

moe::data::Vocab bpe_vocab(const std::string& pre) {
  using moe::data::TokenType;
  moe::data::Vocab v = moe::data::make_default_vocab(moe::data::Vocab::Model::kBpe, pre);
  for (int b = 0; b < 256; ++b) v.tokens.push_back(moe::data::gpt2_byte_to_utf8(uint8_t(b)));
  const std::string sp = moe::data::gpt2_byte_to_utf8(' ');
  for (const char* m : {"t h", "th e", "SP t", "SP th", "SP the", "e r", "i n", "a n"}) {
    std::string merge = m;
    if (merge.rfind("SP ", 0) == 0) merge = sp + " " + merge.substr(3);
    const auto cut = merge.find(' ');
    v.merges.push_back(merge);
    v.tokens.push_back(merge.substr(0, cut) + merge.substr(cut + 1));
  }
  v.tokens.push_back("<|endoftext|>");
  v.tokens.push_back("<sep>");
  v.types.assign(v.tokens.size(), int32_t(TokenType::kNormal));
  v.types[v.types.size() - 2] = int32_t(TokenType::kControl);
  v.types.back() = int32_t(TokenType::kUserDefined);
  v.scores.assign(v.tokens.size(), 0.0f);
  v.bos = v.eos = int32_t(v.tokens.size()) - 2;
  return v;
}

moe::data::Vocab spm_vocab() {
  using moe::data::TokenType;
  moe::data::Vocab v = moe::data::make_default_vocab(moe::data::Vocab::Model::kSpm, "");
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.types = {int32_t(TokenType::kUnknown), int32_t(TokenType::kControl),
             int32_t(TokenType::kControl)};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v.tokens.push_back(name);
    v.types.push_back(int32_t(TokenType::kByte));
  }
  for (const char* p : {"\xE2\x96\x81", "t", "h", "e", "a", "\xE2\x96\x81t", "he",
                        "\xE2\x96\x81the", "in", "<sep>"}) {
    v.tokens.push_back(p);
    v.types.push_back(int32_t(TokenType::kNormal));
  }
  v.types.back() = int32_t(TokenType::kUserDefined);
  v.scores.resize(v.tokens.size());
  for (std::size_t i = 0; i < v.scores.size(); ++i) v.scores[i] = -float(i);
  return v;
}

// A tiny model of the given FFN kind, saved as a checkpoint with the given tokenizer.
std::string tiny_checkpoint(const std::string& dir, const std::string& name, const json& ffn,
                            const moe::data::Tokenizer& tok) {
  json j = {{"model",
             {{"d_model", 16},
              {"n_layers", 1},
              {"n_heads", 2},
              {"max_seq_len", 16},
              {"vocab_size", tok.vocab_size()},
              {"ffn", ffn}}},
            {"train", {{"batch_size", 1}, {"seq_len", 8}, {"steps", 1}}}};
  moe::Config cfg = moe::config_from_json(j, name);
  moe::Transformer m(cfg.model, 1, 8);
  m.params().initialize(7);
  const std::string path = dir + "/" + name + ".safetensors";
  moe::save_checkpoint(path, m, nullptr, {cfg, {3, 24, 0.5}, tok.kind(), tok.serialize()});
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds OUT_DIR\n");
    return 2;
  }
  const std::string out = argv[1];
  try {
    // Hand-made seeds first.
    if (fs::exists(kSrc + "/fuzz/seeds"))
      fs::copy(kSrc + "/fuzz/seeds", out,
               fs::copy_options::recursive | fs::copy_options::overwrite_existing);

    for (const auto& e : fs::recursive_directory_iterator(kSrc + "/configs"))
      if (e.path().extension() == ".json") copy_small(e.path(), out + "/config", 1 << 16);
    put(out + "/config/overrides", moe::read_file(kSrc + "/configs/default.json") +
                                       std::string(1, '\0') + "model.d_model=64" +
                                       std::string(1, '\0') + "train.steps=3" +
                                       std::string(1, '\0') + "model.ffn.kind=\"moe\"");

    for (const auto& e : fs::recursive_directory_iterator(kSrc + "/tests/fixtures"))
      if (e.path().extension() == ".safetensors") copy_small(e.path(), out + "/safetensors", 40000);

    // Tokenizers: byte, SentencePiece BPE trained on a little text, and the two vocab kinds.
    const std::string text_path = out + "/train_text.txt";
    std::string text;
    for (int i = 0; i < 200; ++i)
      text += "the jury said that the city election was conducted in a manner of praise " +
              std::to_string(i) + " caf\xC3\xA9 na\xC3\xAFve \xE2\x82\xAC\n";
    put(text_path, text);
    std::vector<std::unique_ptr<moe::data::Tokenizer>> toks;
    toks.push_back(moe::data::make_byte_tokenizer());
    toks.push_back(moe::data::train_bpe(text_path, 300));
    toks.push_back(moe::data::make_vocab_tokenizer(spm_vocab(), "spm seed"));
    toks.push_back(moe::data::make_vocab_tokenizer(bpe_vocab("gpt-2"), "bpe seed"));
    fs::remove(text_path);
    for (std::size_t k = 0; k < toks.size(); ++k) {
      const std::string blob = toks[k]->serialize();
      put(out + "/tokenizer/" + toks[k]->kind() + ".text", std::string(1, char(k)) + blob);
      if (!blob.empty())
        put(out + "/tokenizer/" + toks[k]->kind() + ".raw",
            std::string(1, char(k | 4)) + moe::data::detail::base64_decode(blob, "seed"));
    }

    const json dense = {{"kind", "dense"}, {"d_ff", 32}};
    const json moe_ffn = {{"kind", "moe"}, {"d_ff", 32}, {"granularity", 2}, {"expansion", 2}};
    const json peer = {
        {"kind", "peer"}, {"num_experts", 16}, {"heads", 2}, {"top_k", 2}, {"d_key", 8}};
    const std::string ck = out + "/checkpoint";
    fs::create_directories(ck);
    std::vector<std::string> cks = {tiny_checkpoint(ck, "dense_byte", dense, *toks[0]),
                                    tiny_checkpoint(ck, "moe_spm", moe_ffn, *toks[2]),
                                    tiny_checkpoint(ck, "peer_bpe", peer, *toks[3]),
                                    tiny_checkpoint(ck, "dense_sp", dense, *toks[1]),
                                    tiny_checkpoint(ck, "dense_bpe", dense, *toks[3])};
    copy_small(cks[0], out + "/safetensors", 1 << 20);

    // GGUF exports of the dense and MoE checkpoints (PEER has no GGUF form, nor has a SentencePiece
    // model a GGUF vocabulary here), in each dtype.
    using moe::formats::GgmlType;
    fs::create_directories(out + "/gguf");
    int k = 0;
    for (const std::string& c : {cks[0], cks[1], cks[4]}) {
      auto r = moe::formats::open_moe_checkpoint(c);
      const auto tok = r->tokenizer();
      for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0}) {
        moe::formats::write_gguf_model(*r, *tok, t,
                                       out + "/gguf/m" + std::to_string(k++) + ".gguf");
      }
    }

    const char* hf[] = {"hf_deepseek", "hf_llama", "hf_mixtral", "hf_olmoe",
                        "hf_qwen2moe", "hf_qwen3", "hf_qwen3moe"};
    for (int i = 0; i < 7; ++i)
      put(out + "/hf_config/" + hf[i],
          std::string(1, char(i)) +
              moe::read_file(kSrc + "/tests/fixtures/" + hf[i] + "/config.json"));

    for (const char* pre : {"gpt-2", "llama3", "qwen2"})
      put(out + "/hf_tokenizer/bpe_" + std::string(pre) + ".json",
          moe::data::vocab_to_hf_tokenizer_json(bpe_vocab(pre), pre));

    put(out + "/corpus/brown",
        "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ``/`` no/at "
        "evidence/nn ''/'' ./.\n\n\n\tIt/pps 1/2/cd Atlanta's/np$ ./.\n");
    put(out + "/corpus/crlf",
        "First paragraph\r\nline two\r\n\r\nSecond one.\r\n\r\n\r\nThird.  \r\n");
    put(out + "/corpus/utf8", "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\n\nnext\n\nlast\n");
    put(out + "/corpus/bad_utf8", "ok\n\n\x80\xC0\xAF \xED\xA0\x80\n\nend\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
