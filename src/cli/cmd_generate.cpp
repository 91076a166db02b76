// moe generate (text from a model through the inference engine) and the hidden
// moe sample-probs (the sampler chain's distribution on given logits, for
// tests/python/test_sampler_llama.py).
#include <fmt/format.h>

#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/core/checked_math.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/infer/sampler.h"

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
                "keep tokens at least this fraction as likely as the best "
                "(0 = off)")
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

struct SampleProbsArgs {
  infer::SamplerOptions opt;
  std::string logits;
  int vocab = 0;
  std::vector<int32_t> history;
};

}  // namespace

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
