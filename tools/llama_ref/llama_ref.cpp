// llama_ref: the outside reference our interop tests compare against. A thin harness over the
// prebuilt libllama from npm's @node-llama-cpp/linux-x64 (scripts/setup_llama_ref.sh); it is
// built only for tests and benchmarks, the `moe` binary never links it.
//
//   llama_ref tokenize MODEL.gguf TEXT_FILE        -> {"ids": [...]}   (no BOS/EOS added,
//                                                     special-token text not parsed)
//   llama_ref eog MODEL.gguf                       -> {"eog": [...]}  (the ids llama_vocab_is_eog
//                                                     accepts, ascending)
//   llama_ref loss MODEL.gguf TEXT_FILE SEQ_LEN [THREADS] [LOGITS_OUT]
//       -> {"loss": mean nats per predicted token, "tokens": predicted tokens, "nll_sum": ...}
//   The ids of the whole file are cut into non-overlapping windows of SEQ_LEN tokens: window w
//   feeds ids wT … wT+T−1 and predicts ids wT+1 … wT+T (the last window shorter), exactly the
//   rule of `moe eval --text`. KV cache in F32 and flash attention off, so llama.cpp's own
//   arithmetic is as close to fp32 as it goes. LOGITS_OUT, if given, receives the first
//   window's logits as raw little-endian f32 [T, V] for element-wise debugging.
//   llama_ref quantize IN.gguf OUT.gguf Q4_0|Q4_K_M
//       llama.cpp's own quantizer (llama_model_quantize, as llama-quantize runs it): the test
//       files for our Q4_0/Q4_K/Q6_K kernels. Q4_K_M mixes Q4_K and Q6_K tensors by its rules.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "llama_ref: %s\n", msg.c_str());
  std::exit(1);
}

std::string read_file(const char* path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) die(std::string("cannot read ") + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

llama_model* load_model(const char* path, bool vocab_only) {
  llama_model_params mp = llama_model_default_params();
  mp.vocab_only = vocab_only;
  llama_model* model = llama_model_load_from_file(path, mp);
  if (model == nullptr) die(std::string("llama.cpp could not load ") + path);
  return model;
}

std::vector<llama_token> tokenize(const llama_vocab* vocab, const std::string& text) {
  // First call with no room reports the count as a negative number.
  int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), nullptr, 0,
                             /*add_special=*/false, /*parse_special=*/false);
  if (n == INT32_MIN) die("tokenize: text too long");
  std::vector<llama_token> ids(n < 0 ? -n : n);
  if (!ids.empty()) {
    n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                       static_cast<int32_t>(ids.size()), false, false);
    if (n < 0) die("tokenize failed");
    ids.resize(n);
  }
  return ids;
}

int cmd_tokenize(const char* model_path, const char* text_path) {
  llama_model* model = load_model(model_path, /*vocab_only=*/true);
  std::vector<llama_token> ids = tokenize(llama_model_get_vocab(model), read_file(text_path));
  std::printf("{\"ids\": [");
  for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? ", %d" : "%d", ids[i]);
  std::printf("]}\n");
  llama_model_free(model);
  return 0;
}

int cmd_eog(const char* model_path) {
  llama_model* model = load_model(model_path, /*vocab_only=*/true);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::printf("{\"eog\": [");
  bool first = true;
  for (llama_token id = 0; id < llama_vocab_n_tokens(vocab); ++id) {
    if (!llama_vocab_is_eog(vocab, id)) continue;
    std::printf(first ? "%d" : ", %d", id);
    first = false;
  }
  std::printf("]}\n");
  llama_model_free(model);
  return 0;
}

int cmd_loss(const char* model_path, const char* text_path, int seq_len, int threads,
             const char* logits_out) {
  if (seq_len < 1) die("SEQ_LEN must be >= 1");
  llama_model* model = load_model(model_path, false);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  std::vector<llama_token> ids = tokenize(vocab, read_file(text_path));
  if (ids.size() < 2) die("the text has fewer than 2 tokens");

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(seq_len);
  cp.n_batch = static_cast<uint32_t>(seq_len);
  cp.n_ubatch = static_cast<uint32_t>(seq_len);
  cp.n_seq_max = 1;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.type_k = GGML_TYPE_F32;
  cp.type_v = GGML_TYPE_F32;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.no_perf = true;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) die("llama_init_from_model failed");

  const size_t n_pred = ids.size() - 1;
  double nll = 0;
  size_t counted = 0;
  llama_batch batch = llama_batch_init(seq_len, 0, 1);
  for (size_t start = 0; start < n_pred; start += seq_len) {
    const int len = static_cast<int>(std::min<size_t>(seq_len, n_pred - start));
    llama_memory_clear(llama_get_memory(ctx), true);
    batch.n_tokens = len;
    for (int t = 0; t < len; ++t) {
      batch.token[t] = ids[start + t];
      batch.pos[t] = t;
      batch.n_seq_id[t] = 1;
      batch.seq_id[t][0] = 0;
      batch.logits[t] = 1;
    }
    if (llama_decode(ctx, batch) != 0) die("llama_decode failed");
    FILE* dump = (start == 0 && logits_out) ? std::fopen(logits_out, "wb") : nullptr;
    for (int t = 0; t < len; ++t) {
      const float* z = llama_get_logits_ith(ctx, t);
      if (dump) std::fwrite(z, sizeof(float), n_vocab, dump);
      double m = z[0];
      for (int v = 1; v < n_vocab; ++v) m = std::max(m, static_cast<double>(z[v]));
      double s = 0;
      for (int v = 0; v < n_vocab; ++v) s += std::exp(static_cast<double>(z[v]) - m);
      nll += m + std::log(s) - z[ids[start + t + 1]];
      ++counted;
    }
    if (dump) std::fclose(dump);
  }
  llama_batch_free(batch);
  std::printf("{\"loss\": %.17g, \"tokens\": %zu, \"nll_sum\": %.17g}\n", nll / counted, counted,
              nll);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

int cmd_quantize(const char* in, const char* out, const std::string& type) {
  llama_model_quantize_params p = llama_model_quantize_default_params();
  if (type == "Q4_0")
    p.ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
  else if (type == "Q4_K_M")
    p.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M;
  else
    die("quantize: type '" + type + "' is not Q4_0 or Q4_K_M");
  p.nthread = 1;
  if (llama_model_quantize(in, out, &p) != 0)
    die(std::string("quantize: llama_model_quantize failed for ") + in);
  return 0;
}

}  // namespace

int llama_ref_sample(int argc, char** argv);  // llama_ref_sample.cpp: needs no model or backend

int main(int argc, char** argv) {
  if (argc < 2) die("usage: llama_ref tokenize|loss ...");
  if (std::string(argv[1]) == "sample") return llama_ref_sample(argc - 2, argv + 2);
  llama_log_set(quiet_log, nullptr);
  // The prebuilt package ships one CPU backend per micro-architecture; ggml picks the best one
  // this CPU runs. LLAMA_REF_LIB_DIR is compiled in by CMake.
  ggml_backend_load_all_from_path(LLAMA_REF_LIB_DIR);
  llama_backend_init();
  const std::string cmd = argv[1];
  int rc = 1;
  if (cmd == "tokenize" && argc == 4) {
    rc = cmd_tokenize(argv[2], argv[3]);
  } else if (cmd == "eog" && argc == 3) {
    rc = cmd_eog(argv[2]);
  } else if (cmd == "loss" && argc >= 5 && argc <= 7) {
    rc = cmd_loss(argv[2], argv[3], std::atoi(argv[4]), argc >= 6 ? std::atoi(argv[5]) : 1,
                  argc >= 7 ? argv[6] : nullptr);
  } else if (cmd == "quantize" && argc == 5) {
    rc = cmd_quantize(argv[2], argv[3], argv[4]);
  } else if (cmd == "bench") {  // llama_ref_bench.cpp
    int llama_ref_bench(int, char**);
    rc = llama_ref_bench(argc - 2, argv + 2);
  } else {
    die("usage: llama_ref tokenize MODEL TEXT | eog MODEL | loss MODEL TEXT SEQ_LEN [THREADS] "
        "[LOGITS_OUT] | quantize IN OUT Q4_0|Q4_K_M");
  }
  llama_backend_free();
  return rc;
}
