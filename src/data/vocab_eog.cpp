// eog_ids (moe/data/vocab.h): the tokens that end a generation, by llama.cpp's rule
// (llama-vocab.cpp, load(): the special-token ids, their detection by text, special_eog_ids).
#include <algorithm>
#include <set>
#include <span>
#include <string>
#include <string_view>

#include "moe/data/vocab.h"

namespace moe::data {

namespace {

using Texts = std::span<const std::string_view>;

// The texts llama.cpp takes a missing special id from (first found; see eog_ids on ties).
constexpr std::string_view kEotTexts[] = {
    "<|eot_id|>",        "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>",   "<EOT>",      "_<EOT>",  "[EOT]",         "<｜end▁of▁sentence｜>",
    "<end_of_utterance>"};
constexpr std::string_view kEomTexts[] = {"<|eom_id|>"};
constexpr std::string_view kFimPadTexts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
                                             "[PAD]"};
constexpr std::string_view kFimRepTexts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                             "<REPO>", "<reponame>"};
constexpr std::string_view kFimSepTexts[] = {"<|file_sep|>"};

// The texts that end a generation whatever the metadata says.
constexpr std::string_view kEogTexts[] = {"<|eot_id|>",
                                          "<|im_end|>",
                                          "<|end|>",
                                          "<|return|>",
                                          "<|call|>",
                                          "<|flush|>",
                                          "<|calls|>",
                                          "<end_of_turn>",
                                          "<|endoftext|>",
                                          "</s>",
                                          "<|eom_id|>",
                                          "<EOT>",
                                          "_<EOT>",
                                          "[EOT]",
                                          "[EOS]",
                                          "<|end_of_text|>",
                                          "<end_of_utterance>",
                                          "<eos>",
                                          "<turn|>",
                                          "<|tool_response>",
                                          "<｜end▁of▁sentence｜>",
                                          "[e~["};

bool is_one_of(const std::string& text, Texts texts) {
  return std::find(texts.begin(), texts.end(), std::string_view(text)) != texts.end();
}

// The id the metadata gives, else the lowest id whose text is one of `texts`, else -1.
int32_t id_or_detected(const Vocab& v, int32_t id, Texts texts) {
  if (id >= 0) return id;
  for (std::size_t i = 0; i < v.tokens.size(); ++i)
    if (is_one_of(v.tokens[i], texts)) return static_cast<int32_t>(i);
  return -1;
}

}  // namespace

std::vector<int32_t> eog_ids(const Vocab& v) {
  std::set<int32_t> eog;
  for (auto [id, texts] :
       {std::pair{v.fim_pad, Texts(kFimPadTexts)}, std::pair{v.fim_rep, Texts(kFimRepTexts)},
        std::pair{v.fim_sep, Texts(kFimSepTexts)}})
    if (const int32_t d = id_or_detected(v, id, texts); d >= 0) eog.insert(d);
  for (std::size_t i = 0; i < v.tokens.size(); ++i)
    if (is_one_of(v.tokens[i], kEogTexts)) eog.insert(static_cast<int32_t>(i));
  // eos, eot and eom always end a generation (llama.cpp adds them with a warning when the texts
  // missed them). A detected eot or eom has a text of kEogTexts, so it is already in.
  for (int32_t id :
       {v.eos, id_or_detected(v, v.eot, kEotTexts), id_or_detected(v, v.eom, kEomTexts)})
    if (id >= 0) eog.insert(id);
  // The two exceptions, for tokenizers where these texts mean "turn over" rather than "stop".
  const auto find = [&](std::string_view text) {
    for (int32_t id : eog)
      if (v.tokens[static_cast<std::size_t>(id)] == text) return id;
    return int32_t(-1);
  };
  const bool has_call = find("<|call|>") >= 0 || find("<|calls|>") >= 0;
  const int32_t end = find("<|end|>");
  if (end >= 0 && has_call && (find("<|return|>") >= 0 || find("<|flush|>") >= 0)) eog.erase(end);
  if (const int32_t s = find("</s>"); s >= 0 && find("<|tool_response>") >= 0) eog.erase(s);
  return {eog.begin(), eog.end()};
}

}  // namespace moe::data
