// llama_ref bench MODEL.gguf PP TG THREADS [KV_TYPE]: llama.cpp's own prompt-processing (pp) and
// text-generation (tg) speed on a GGUF file, measured as llama-bench measures them
// (tools/llama-bench/llama-bench.cpp: test_prompt, test_gen), for the `infer` benchmark of
// bench/run_bench.sh, which runs `moe bench infer` on the same file the same way:
//
//   pp: one llama_decode of PP tokens from an empty cache (n_batch = n_ubatch = PP, so one
//       pass; logits of the last token only, as llama_batch_get_one asks);
//   tg: TG llama_decode calls of one token each, from an empty cache, each synchronized;
//   one warm-up of each first (pp: a whole PP run; tg: one token), then the timed runs.
// Context: n_ctx = PP + TG, KV cache F32 (type_k = type_v = F32; KV_TYPE bf16: GGML_TYPE_BF16,
// f16: GGML_TYPE_F16 — moe's --kv-type bf16 is compared with bf16 where this libllama's context
// accepts it, else with f16, and the JSON's kv_type says which ran), flash attention off (with a
// bf16 K, ggml's CPU matmul rounds q and, for V, the softmax weights to bf16 too, where moe keeps
// them f32), the model memory-mapped (llama.cpp's default), n_threads = n_threads_batch = THREADS.
// Token ids: the benchmark's fixed sequence (splitmix64 from seed 1234, id = value mod vocabulary;
// pp feeds the first PP, tg the next TG), identical to moe's (src/cli/bench/bench_infer.cpp).
//
// Prints one JSON object: pp_tokens_per_s, tg_tokens_per_s, pp_s, tg_s, load_s (model load +
// context creation), peak_rss_bytes (getrusage ru_maxrss: the mapped file's pages count once
// touched, as on moe's side), model_bytes (llama_model_size), n_params, pp, tg, threads, kv_type
// (the cache type that ran: f32, bf16 or f16) and kv_type_requested.
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "llama.h"

namespace {

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "llama_ref bench: %s\n", msg.c_str());
  std::exit(1);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The benchmark's token ids (the same rule as moe bench infer): splitmix64 from seed 1234.
std::vector<llama_token> bench_token_ids(int n, int vocab) {
  uint64_t state = 1234;
  std::vector<llama_token> ids(n);
  for (auto& id : ids) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    id = static_cast<llama_token>(z % static_cast<uint64_t>(vocab));
  }
  return ids;
}

void decode(llama_context* ctx, const llama_token* ids, int n) {
  // llama_batch_get_one: positions follow the cache, logits of the last token only.
  if (llama_decode(ctx, llama_batch_get_one(const_cast<llama_token*>(ids), n)) != 0) {
    fail("llama_decode failed");
  }
  llama_synchronize(ctx);
}

// Seconds for one pp run: PP tokens in one decode from an empty cache.
double run_pp(llama_context* ctx, const std::vector<llama_token>& ids, int pp) {
  llama_memory_clear(llama_get_memory(ctx), false);
  const double t0 = now_s();
  decode(ctx, ids.data(), pp);
  return now_s() - t0;
}

// Seconds for one tg run: n single-token decodes from an empty cache.
double run_tg(llama_context* ctx, const std::vector<llama_token>& ids, int pp, int n) {
  llama_memory_clear(llama_get_memory(ctx), false);
  const double t0 = now_s();
  for (int i = 0; i < n; ++i) decode(ctx, &ids[pp + i], 1);
  return now_s() - t0;
}

llama_context* init_context(llama_model* model, llama_context_params cp, const std::string& kv) {
  const ggml_type t = kv == "bf16" ? GGML_TYPE_BF16 : kv == "f16" ? GGML_TYPE_F16 : GGML_TYPE_F32;
  cp.type_k = t;
  cp.type_v = t;
  return llama_init_from_model(model, cp);
}

}  // namespace

// argv: MODEL PP TG THREADS (after "llama_ref bench").
int llama_ref_bench(int argc, char** argv) {
  if (argc != 4 && argc != 5)
    fail("usage: llama_ref bench MODEL.gguf PP TG THREADS [f32|bf16|f16]");
  const char* path = argv[0];
  const std::string kv_requested = argc == 5 ? argv[4] : "f32";
  if (kv_requested != "f32" && kv_requested != "bf16" && kv_requested != "f16")
    fail("KV_TYPE '" + kv_requested + "': expected f32, bf16 or f16");
  const int pp = std::atoi(argv[1]), tg = std::atoi(argv[2]), threads = std::atoi(argv[3]);
  if (pp < 1 || tg < 1 || threads < 1) fail("PP, TG and THREADS must be >= 1");

  const double t_load = now_s();
  llama_model_params mp = llama_model_default_params();
  mp.load_mode = LLAMA_LOAD_MODE_MMAP;  // as llama-bench: mmap on
  llama_model* model = llama_model_load_from_file(path, mp);
  if (model == nullptr) fail(std::string("llama.cpp could not load ") + path);
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(pp + tg);
  cp.n_batch = static_cast<uint32_t>(pp);
  cp.n_ubatch = static_cast<uint32_t>(pp);
  cp.n_seq_max = 1;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.no_perf = true;
  std::string kv_type = kv_requested;
  llama_context* ctx = init_context(model, cp, kv_type);
  if (ctx == nullptr && kv_type == "bf16") {
    kv_type = "f16";  // a libllama without a bf16 cache: the nearest 16-bit type it has
    ctx = init_context(model, cp, kv_type);
  }
  if (ctx == nullptr) fail("llama_init_from_model failed (KV cache " + kv_type + ")");
  const double load_s = now_s() - t_load;

  const std::vector<llama_token> ids = bench_token_ids(pp + tg, n_vocab);
  run_pp(ctx, ids, pp);     // warm-up, as llama-bench: a whole pp run
  run_tg(ctx, ids, pp, 1);  // and one generated token
  const double pp_s = run_pp(ctx, ids, pp);
  const double tg_s = run_tg(ctx, ids, pp, tg);

  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf(
      "{\"pp_tokens_per_s\": %.6g, \"tg_tokens_per_s\": %.6g, \"pp_s\": %.6g, \"tg_s\": %.6g, "
      "\"load_s\": %.6g, \"peak_rss_bytes\": %lld, \"model_bytes\": %llu, \"n_params\": %llu, "
      "\"pp\": %d, \"tg\": %d, \"threads\": %d, \"kv_type\": \"%s\", "
      "\"kv_type_requested\": \"%s\"}\n",
      pp / pp_s, tg / tg_s, pp_s, tg_s, load_s, static_cast<long long>(ru.ru_maxrss) * 1024,
      static_cast<unsigned long long>(llama_model_size(model)),
      static_cast<unsigned long long>(llama_model_n_params(model)), pp, tg, threads,
      kv_type.c_str(), kv_requested.c_str());
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
