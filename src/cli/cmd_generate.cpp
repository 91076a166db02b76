// moe generate (text from a model through the inference engine) and the hidden
// moe sample-probs (the sampler chain's distribution on given logits, for
// tests/python/test_sampler_llama.py).
#include <fmt/format.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/threading.h"
#include "moe/data/vocab.h"
#include "moe/formats/model_file.h"
#include "moe/infer/engine.h"
#include "moe/infer/generator.h"
#include "moe/infer/sampler.h"
#include "moe/train/checkpoint.h"
#include "moe/train/memory_estimate.h"

namespace moe::cli {

namespace {

// The sampler flags, named and defaulted as llama.cpp's (common/arg.cpp).
void add_sampler_options(CLI::App* c, infer::SamplerOptions& o) {
  c->add_option("--temperature", o.temperature, "0 = greedy")->capture_default_str();
  c->add_option("--top-k", o.top_k, "keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  c->add_option("--top-p", o.top_p, "keep the most likely tokens up to this mass (1 = off)")
      ->capture_default_str();
  c->add_option("--min-p", o.min_p,
                "keep tokens at least this fraction as likely as the best (0 = off)")
      ->capture_default_str();
  c->add_option("--repeat-penalty", o.repeat_penalty,
                "penalise the tokens of the last --repeat-last-n (1 = off)")
      ->capture_default_str();
  c->add_option("--repeat-last-n", o.repeat_last_n, "context tokens the penalties look at")
      ->capture_default_str();
  c->add_option("--frequency-penalty", o.frequency_penalty,
                "subtracted per occurrence in that window (0 = off)")
      ->capture_default_str();
  c->add_option("--presence-penalty", o.presence_penalty,
                "subtracted once per token present in that window (0 = off)")
      ->capture_default_str();
  c->add_option("--seed", o.seed, "sampling seed")->capture_default_str();
}

struct GenArgs {
  std::string checkpoint, prompt = "The ", prompt_file;
  int tokens = 200, context = 0, threads = 0;
  std::vector<std::string> stop;
  infer::SamplerOptions sampler;
};

// The context when --context is not given: our checkpoint's training seq_len (RoPE positions
// past it were never trained), else the model's max_seq_len, as llama.cpp's n_ctx = 0.
int default_context(const formats::ModelReader& r) {
  if (r.format() == "moe") return read_checkpoint_meta(r.path()).config.train.seq_len;
  return r.config().max_seq_len;
}

void run_generate(const GenArgs& a) {
  set_threads(a.threads, "--threads");
  a.sampler.validate();
  // Cheap errors first: the prompt file before the model.
  const std::string prompt = a.prompt_file.empty() ? a.prompt : read_file(a.prompt_file);
  std::unique_ptr<formats::ModelReader> reader = formats::open_model(a.checkpoint);
  std::unique_ptr<data::Tokenizer> tok = reader->tokenizer();
  MOE_CHECK(tok != nullptr, "{}: the file carries no tokenizer", a.checkpoint);
  const int max_seq = reader->config().max_seq_len;
  std::vector<int32_t> ids = tok->encode(prompt);
  MOE_CHECK(!ids.empty(), "the prompt is empty: give --prompt TEXT or --prompt-file FILE");
  // A vocabulary from a model file carries its special ids: the prompt starts with BOS where
  // llama.cpp would add it (tokenizer.ggml.add_bos_token; common_tokenize with add_special), and
  // EOS ends the generation.
  const data::Vocab* vocab = data::vocab_of(*tok);
  if (vocab && vocab->add_bos && vocab->bos >= 0) ids.insert(ids.begin(), vocab->bos);
  // The KV cache holds the positions this generation can use, not max_seq_len blindly (a file
  // claiming a context of 1e8 would take gigabytes for a short prompt).
  const int64_t wanted = std::max<int64_t>(int64_t(ids.size()) + a.tokens, int64_t(ids.size()) + 1);
  const int context =
      a.context > 0 ? a.context
                    : int(std::min<int64_t>(std::min(default_context(*reader), max_seq), wanted));
  MOE_CHECK(context <= max_seq, "--context {}: the model's max_seq_len is {}", context, max_seq);
  infer::check_prompt_fits(int(ids.size()), context);
  const ModelConfig& mc = reader->config();
  const double kv = 2.0 * mc.n_layers * context * double(mc.n_kv_heads) * mc.head_dim * 4;
  const std::optional<double> avail = available_memory_bytes();
  MOE_CHECK(!avail || kv < 0.9 * *avail,
            "{}: a KV cache of {} positions needs {} (2 × {} layers × {} × {} kv width × 4 bytes) "
            "but {} is available: lower --context or --tokens",
            a.checkpoint, context, human_bytes(kv), mc.n_layers, context,
            int64_t(mc.n_kv_heads) * mc.head_dim, human_bytes(avail.value_or(0)));
  infer::EngineOptions eo;
  eo.context = context;
  std::unique_ptr<infer::Engine> engine = infer::Engine::open(*reader, eo);
  infer::GenerateOptions go;
  go.max_new_tokens = a.tokens;
  go.sampler = a.sampler;
  go.stop = a.stop;
  go.eos = vocab ? vocab->eos : -1;
  fmt::print("{}", prompt);
  std::fflush(stdout);
  const infer::GenerateResult r = infer::generate(*engine, *tok, ids, go, [](std::string_view s) {
    fmt::print("{}", s);
    std::fflush(stdout);
  });
  fmt::print("\n");
  std::fflush(stdout);
  if (r.reason == infer::StopReason::kContextFull)
    fmt::print(stderr,
               "moe: note: stopped after {} tokens: the context of {} positions is full "
               "({} prompt + {} generated; --context / model max_seq_len)\n",
               r.generated_tokens, context, r.prompt_tokens, r.generated_tokens);
}

struct SampleProbsArgs {
  infer::SamplerOptions opt;
  std::string logits;
  int vocab = 0;
  std::vector<int32_t> history;
};

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenArgs>();
  CLI::App* c = app.add_subcommand(
      "generate",
      "Generate text from a model (prefill, then KV-cache decode; llama.cpp's samplers)");
  c->add_option("--checkpoint", a->checkpoint,
                "model: our checkpoint (.safetensors), a .gguf file or a Hugging Face directory")
      ->required();
  CLI::Option* prompt =
      c->add_option("--prompt", a->prompt, "text to continue")->capture_default_str();
  c->add_option("--prompt-file", a->prompt_file, "read the text to continue from this file")
      ->excludes(prompt);
  c->add_option("--tokens", a->tokens, "tokens to generate at most")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->add_option("--stop", a->stop,
                "end when the generated text contains this string, which is not printed "
                "(repeatable)");
  c->add_option("--context", a->context,
                "KV cache positions: prompt + generated tokens (default: the model's "
                "max_seq_len; our checkpoints: the training seq_len)")
      ->check(CLI::PositiveNumber);
  c->add_option("--threads", a->threads, "OpenMP threads (0 = default)")
      ->check(CLI::Range(0, kMaxThreads));
  add_sampler_options(c, a->sampler);
  c->callback([a] { run_generate(*a); });
}

void register_sample_probs(CLI::App& app) {
  auto a = std::make_shared<SampleProbsArgs>();
  CLI::App* c = app.add_subcommand(
      "sample-probs",
      "(testing) the sampler chain's distribution for each row of a raw f32 [rows, V] file");
  c->group("");  // hidden from --help
  c->add_option("--logits", a->logits, "raw little-endian f32 [rows, V]")->required();
  c->add_option("--vocab", a->vocab, "V")->required()->check(CLI::PositiveNumber);
  c->add_option("--history", a->history, "context ids, oldest first (for the penalties)")
      ->delimiter(',');
  add_sampler_options(c, a->opt);
  c->callback([a] {
    const std::string bytes = read_file(a->logits);
    const int64_t row_bytes = checked_mul(a->vocab, int64_t(sizeof(float)), "--vocab");
    MOE_CHECK(int64_t(bytes.size()) % row_bytes == 0,
              "{}: {} bytes is not a whole number of rows of --vocab {} floats", a->logits,
              bytes.size(), a->vocab);
    infer::Sampler s(a->opt, a->vocab);
    std::vector<float> row(a->vocab);
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t off = 0; off < int64_t(bytes.size()); off += row_bytes) {
      std::memcpy(row.data(), bytes.data() + off, std::size_t(row_bytes));
      nlohmann::json ids = nlohmann::json::array(), probs = nlohmann::json::array();
      for (const infer::Candidate& x : s.distribution(row.data(), a->history)) {
        ids.push_back(x.id);
        probs.push_back(double(x.p));
      }
      rows.push_back({{"ids", ids}, {"probs", probs}});
    }
    fmt::print("{}\n", nlohmann::json{{"rows", rows}}.dump());
  });
}

}  // namespace moe::cli
