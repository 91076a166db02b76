// llama_ref sample: llama.cpp's own sampler chain on given logits, for
// tests/python/test_sampler_llama.py. The chain is the one common/sampling.cpp builds with
// llama.cpp's defaults for the samplers left off (DRY, typical, XTC, top-n-sigma are no-ops
// there): penalties, top-k, top-p, min-p, temperature (temp_ext with no dynamic range), and no
// final dist sampler, so what is left is the distribution a draw would use.
//
//   llama_ref sample --logits FILE --vocab V [--history ID,ID,...] [--temperature T]
//       [--top-k K] [--top-p P] [--min-p M] [--repeat-penalty R] [--repeat-last-n N]
//       [--frequency-penalty F] [--presence-penalty F]
//   FILE: raw little-endian f32 [rows, V]. History: the context ids, oldest first, accepted
//   into each row's fresh chain (only the penalties read them).
//   -> {"rows": [{"ids": [...], "probs": [...]}, ...]}: per row the surviving candidates in the
//   chain's order and their softmax probabilities (double) over the surviving logits. Greedy
//   (temperature 0) leaves the others at -inf; those are not survivors and are not printed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "llama.h"

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "llama_ref sample: %s\n", msg.c_str());
  std::exit(1);
}

struct Flags {
  std::string logits, history;
  int vocab = 0, top_k = 40, repeat_last_n = 64;
  float temperature = 0.8f, top_p = 0.95f, min_p = 0.05f, repeat_penalty = 1.0f;
  float frequency_penalty = 0.0f, presence_penalty = 0.0f;
};

Flags parse(int argc, char** argv) {
  Flags f;
  for (int i = 0; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--logits")
      f.logits = v;
    else if (k == "--history")
      f.history = v;
    else if (k == "--vocab")
      f.vocab = std::atoi(v.c_str());
    else if (k == "--top-k")
      f.top_k = std::atoi(v.c_str());
    else if (k == "--repeat-last-n")
      f.repeat_last_n = std::atoi(v.c_str());
    else if (k == "--temperature")
      f.temperature = std::strtof(v.c_str(), nullptr);
    else if (k == "--top-p")
      f.top_p = std::strtof(v.c_str(), nullptr);
    else if (k == "--min-p")
      f.min_p = std::strtof(v.c_str(), nullptr);
    else if (k == "--repeat-penalty")
      f.repeat_penalty = std::strtof(v.c_str(), nullptr);
    else if (k == "--frequency-penalty")
      f.frequency_penalty = std::strtof(v.c_str(), nullptr);
    else if (k == "--presence-penalty")
      f.presence_penalty = std::strtof(v.c_str(), nullptr);
    else
      die("unknown flag " + k);
  }
  if (argc % 2 != 0) die("every flag takes one value");
  if (f.logits.empty() || f.vocab <= 0) die("--logits FILE and --vocab V are required");
  return f;
}

std::vector<llama_token> parse_ids(const std::string& s) {
  std::vector<llama_token> ids;
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t j = std::min(s.find(',', i), s.size());
    ids.push_back(std::atoi(s.substr(i, j - i).c_str()));
    i = j + 1;
  }
  return ids;
}

llama_sampler* make_chain(const Flags& f) {
  llama_sampler* chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
  llama_sampler_chain_add(chain,
                          llama_sampler_init_penalties(f.vocab, f.repeat_last_n, f.repeat_penalty,
                                                       f.frequency_penalty, f.presence_penalty));
  llama_sampler_chain_add(chain, llama_sampler_init_top_k(f.top_k));
  llama_sampler_chain_add(chain, llama_sampler_init_top_p(f.top_p, 0));
  llama_sampler_chain_add(chain, llama_sampler_init_min_p(f.min_p, 0));
  llama_sampler_chain_add(chain, llama_sampler_init_temp_ext(f.temperature, 0.0f, 1.0f));
  return chain;
}

}  // namespace

int llama_ref_sample(int argc, char** argv) {
  const Flags f = parse(argc, argv);
  const std::vector<llama_token> history = parse_ids(f.history);
  std::ifstream in(f.logits, std::ios::binary);
  if (!in) die("cannot read " + f.logits);
  std::vector<float> row(f.vocab);
  std::printf("{\"rows\": [");
  for (int r = 0; in.read(reinterpret_cast<char*>(row.data()), f.vocab * sizeof(float)); ++r) {
    llama_sampler* chain = make_chain(f);
    for (llama_token t : history) llama_sampler_accept(chain, t);
    std::vector<llama_token_data> data(f.vocab);
    for (int v = 0; v < f.vocab; ++v) data[v] = {v, row[v], 0.0f};
    llama_token_data_array cur = {data.data(), data.size(), -1, false};
    llama_sampler_apply(chain, &cur);
    double mx = -INFINITY, sum = 0;
    for (std::size_t i = 0; i < cur.size; ++i) mx = std::max(mx, double(cur.data[i].logit));
    for (std::size_t i = 0; i < cur.size; ++i) sum += std::exp(double(cur.data[i].logit) - mx);
    std::string ids, probs;
    for (std::size_t i = 0; i < cur.size; ++i) {
      if (std::isinf(cur.data[i].logit) && cur.data[i].logit < 0) continue;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s%d", ids.empty() ? "" : ", ", cur.data[i].id);
      ids += buf;
      std::snprintf(buf, sizeof buf, "%s%.17g", probs.empty() ? "" : ", ",
                    std::exp(double(cur.data[i].logit) - mx) / sum);
      probs += buf;
    }
    std::printf("%s{\"ids\": [%s], \"probs\": [%s]}", r ? ", " : "", ids.c_str(), probs.c_str());
    llama_sampler_free(chain);
  }
  std::printf("]}\n");
  return 0;
}
