// moe convert, moe inspect: model files in and out (docs/FORMATS.md).
#include <fmt/format.h>
#include <omp.h>

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/threading.h"
#include "moe/data/token_data.h"
#include "moe/formats/gguf_model.h"
#include "moe/formats/gguf_tokenizer.h"
#include "moe/formats/hf_model.h"
#include "moe/formats/model_file.h"
#include "moe/scaling/accounting.h"
#include "moe/train/checkpoint.h"
#include "moe/train/model_identity.h"
#include "moe/train/trainer.h"
#include "world.h"

namespace moe::cli {

namespace {

formats::GgmlType parse_dtype(const std::string& s) {
  if (s == "f32") return formats::GgmlType::kF32;
  if (s == "f16") return formats::GgmlType::kF16;
  if (s == "bf16") return formats::GgmlType::kBF16;
  if (s == "q8_0") return formats::GgmlType::kQ8_0;
  MOE_FAIL("--dtype {}: expected f32, f16, bf16 or q8_0", s);
}

// Our checkpoint from any reader: the model in fp32 (our checkpoints hold fp32 masters).
void write_moe_checkpoint(const formats::ModelReader& r, const data::Tokenizer& tok,
                          const std::string& out) {
  CheckpointMeta meta;
  meta.config.model = r.config();
  meta.config.train.seq_len = std::min(meta.config.train.seq_len, r.config().max_seq_len);
  meta.tokenizer_kind = tok.kind();
  meta.tokenizer_blob = tok.serialize();
  Transformer model(r.config(), 1, 1, world());
  formats::load_weights(r, model);
  save_checkpoint(out, model, nullptr, meta);
}

// Bytes a tensor takes in its file.
uint64_t file_bytes(const formats::SourceTensor& t) {
  if (t.file_bytes > 0) return t.file_bytes;
  uint64_t n = 1;
  for (int64_t s : t.shape) n *= uint64_t(s);
  if (t.dtype == "F32" || t.dtype == "I32") return 4 * n;
  if (t.dtype == "F16" || t.dtype == "BF16") return 2 * n;
  return 0;
}

nlohmann::json describe(const formats::ModelReader& r) {
  const ModelConfig& c = r.config();
  const ModelCount m = count_model(c, std::min(512, c.max_seq_len));
  nlohmann::json layers = nlohmann::json::array();
  for (int l = 0; l < c.n_layers; ++l) {
    const FfnConfig& f = c.ffn_for(l);
    nlohmann::json j = {{"layer", l}};
    if (f.kind == FfnConfig::Kind::kMoe) {
      j["ffn"] = "moe";
      j["experts"] = f.moe.num_experts;
      j["top_k"] = f.moe.top_k;
      j["d_expert"] = f.moe.d_expert;
      j["shared_experts"] = f.moe.shared_experts;
    } else {
      j["ffn"] = f.kind == FfnConfig::Kind::kDense ? "dense" : "peer";
      j["d_ff"] = f.d_ff;
    }
    layers.push_back(j);
  }
  std::map<std::string, std::pair<int64_t, uint64_t>> dtypes;  // dtype → (tensors, bytes)
  uint64_t bytes = 0;
  for (const formats::SourceTensor& t : r.tensors()) {
    auto& d = dtypes[t.dtype];
    d.first += 1;
    d.second += file_bytes(t);
    bytes += file_bytes(t);
  }
  nlohmann::json dj = nlohmann::json::object();
  for (auto& [k, v] : dtypes) dj[k] = {{"tensors", v.first}, {"bytes", v.second}};
  return {{"path", r.path()},
          {"format", r.format()},
          {"architecture", r.architecture()},
          {"config", model_config_fields().to_json(c)},
          {"model_identity", model_identity_hash(c)},
          {"total_params", m.total},
          {"active_params", m.active},
          {"flops_per_token_forward", m.flops_fwd},
          {"bytes_weights_file", bytes},
          {"bytes_weights_fp32", m.total * 4},
          {"dtypes", dj},
          {"layers", layers}};
}

void print_description(const nlohmann::json& d) {
  const nlohmann::json& c = d["config"];
  fmt::print("{} ({} file, architecture {})\n", d["path"].get<std::string>(),
             d["format"].get<std::string>(), d["architecture"].get<std::string>());
  fmt::print("  d_model {}, {} layers, {} heads ({} kv) of {}, vocabulary {}, context {}\n",
             c.value("d_model", 0), c.value("n_layers", 0), c.value("n_heads", 0),
             c.value("n_kv_heads", 0), c.value("head_dim", 0), c.value("vocab_size", 0),
             c.value("max_seq_len", 0));
  fmt::print("  parameters: {:L} total, {:L} active per token; {:.4g} forward FLOPs per token\n",
             d["total_params"].get<int64_t>(), d["active_params"].get<int64_t>(),
             d["flops_per_token_forward"].get<double>());
  fmt::print(
      "  model identity {} (the same for every checkpoint of this model: what resume and "
      "--init-from compare)\n",
      d["model_identity"].get<std::string>());
  for (const auto& l : d["layers"]) {
    if (l["ffn"] == "moe")
      fmt::print("  block {:>3}: MoE, {} experts of width {}, top-{}, {} shared\n",
                 l["layer"].get<int>(), l["experts"].get<int>(), l["d_expert"].get<int>(),
                 l["top_k"].get<int>(), l["shared_experts"].get<int>());
    else
      fmt::print("  block {:>3}: {} FFN of width {}\n", l["layer"].get<int>(),
                 l["ffn"].get<std::string>(), l["d_ff"].get<int>());
  }
  for (auto& [k, v] : d["dtypes"].items())
    fmt::print("  {:>5}: {} tensors, {:.1f} MiB\n", k, v["tensors"].get<int64_t>(),
               v["bytes"].get<uint64_t>() / 1048576.0);
  fmt::print("  memory: {:.1f} MiB of weights as stored, {:.1f} MiB in fp32\n",
             d["bytes_weights_file"].get<uint64_t>() / 1048576.0,
             d["bytes_weights_fp32"].get<int64_t>() / 1048576.0);
}

void print_routing(const nlohmann::json& moe) {
  fmt::print("Routing over the text (per MoE layer):\n");
  for (const auto& m : moe) {
    if (m.value("kind", "") == "peer") continue;
    std::string loads;
    for (auto& t : m["tokens_per_expert"]) loads += fmt::format(" {}", t.get<int64_t>());
    fmt::print(
        "  layer {}: router entropy {:.3f} nats, unused experts {}, max/mean load {:.2f}\n"
        "    tokens per expert:{}\n",
        m["layer"].get<int>(), m["router_entropy"].get<double>(), m["unused_experts"].get<int>(),
        m["max_over_mean_load"].get<double>(), loads);
  }
}

}  // namespace

void register_convert(CLI::App& app) {
  struct Args {
    std::string in, out, dtype = "f32";
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand(
      "convert", "Convert a model between our checkpoints, GGUF and Hugging Face directories");
  c->add_option("in", a->in, "our checkpoint (.safetensors), a .gguf file or a HF directory")
      ->required();
  c->add_option("out", a->out, "OUT.gguf, OUT.safetensors (ours) or a directory (Hugging Face)")
      ->required();
  c->add_option("--dtype", a->dtype, "f32 | f16 | bf16 | q8_0 (GGUF; HF takes f32/f16/bf16)");
  c->callback([a] {
    std::unique_ptr<formats::ModelReader> r = formats::open_model(a->in);
    std::unique_ptr<data::Tokenizer> tok = r->tokenizer();
    MOE_CHECK(tok != nullptr, "{}: the file carries no tokenizer", a->in);
    const std::string base = std::filesystem::path(a->out).filename().string();
    const bool hf_dir = !a->out.ends_with(".gguf") && !a->out.ends_with(".safetensors");
    MOE_CHECK(
        !hf_dir || base.find('.') == std::string::npos || std::filesystem::is_directory(a->out),
        "{}: expected OUT.gguf, OUT.safetensors (ours) or a directory name without an "
        "extension (Hugging Face)",
        a->out);
    if (a->out.ends_with(".gguf")) {
      formats::write_gguf_model(*r, *tok, parse_dtype(a->dtype), a->out);
    } else if (a->out.ends_with(".safetensors")) {
      MOE_CHECK(a->dtype == "f32", "--dtype {}: our checkpoints hold fp32 weights", a->dtype);
      write_moe_checkpoint(*r, *tok, a->out);
    } else {
      formats::HfWriteOptions o;
      MOE_CHECK(a->dtype == "f32" || a->dtype == "bf16" || a->dtype == "f16",
                "--dtype {}: a Hugging Face directory takes f32, bf16 or f16", a->dtype);
      o.dtype = a->dtype == "f32" ? DType::F32 : a->dtype == "bf16" ? DType::BF16 : DType::F16;
      // The tokenizer first: a vocabulary tokenizer.json cannot express stops before any weight.
      const std::string tj = formats::hf_tokenizer_json(*tok);
      // The HF classes rotate halves: an interleaved-RoPE model (a GGUF llama/deepseek) goes out
      // with its q/k rows permuted back, which computes the same scores.
      std::unique_ptr<formats::ModelReader> half;
      if (r->config().rope_style == RopeStyle::kInterleaved) half = formats::as_rotate_half(*r);
      formats::write_hf_model(half ? *half : *r, a->out, o);
      write_file_atomic(a->out + "/tokenizer.json", tj);
    }
    const std::string what = r->format() == "moe" ? std::string("moe.cpp checkpoint")
                                                  : r->format() + " " + r->architecture();
    fmt::print("{} ({}) → {}\n", a->in, what, a->out);
  });
}

void register_inspect(CLI::App& app) {
  struct Args {
    std::string model, text;
    bool json = false, routing = false;
    int seq = 0, threads = 0;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand(
      "inspect", "Describe a model file: architecture, parameters, experts, dtypes, memory");
  c->add_option("model", a->model, "our checkpoint, a .gguf file or a Hugging Face directory")
      ->required();
  c->add_flag("--json", a->json, "print one JSON object");
  c->add_flag("--routing", a->routing,
              "run the model over --text and report each MoE layer's expert loads, router "
              "entropy and unused experts");
  c->add_option("--text", a->text, "text file for --routing");
  c->add_option("--seq-len", a->seq, "window length for --routing (default min(512, context))");
  c->add_option("--threads", a->threads, "OpenMP threads (0 = default)")
      ->check(CLI::Range(0, kMaxThreads));
  c->callback([a] {
    set_threads(a->threads, "--threads");
    MOE_CHECK(!a->routing || !a->text.empty(), "--routing needs --text FILE");
    std::unique_ptr<formats::ModelReader> r = formats::open_model(a->model);
    nlohmann::json d = describe(*r);
    if (a->routing) {
      const ModelConfig& cfg = r->config();
      const int T = a->seq > 0 ? a->seq : std::min(512, cfg.max_seq_len);
      MOE_CHECK(T <= cfg.max_seq_len, "--seq-len {}: the model's context is {}", T,
                cfg.max_seq_len);
      std::unique_ptr<data::Tokenizer> tok = r->tokenizer();
      MOE_CHECK(tok != nullptr, "{}: the file carries no tokenizer", a->model);
      data::TokenStream s = data::tokenize_file(*tok, a->text);
      Transformer model(cfg, 1, T, world());
      formats::load_weights(*r, model);
      EvalResult e = evaluate(model, s, 1, T);
      d["routing"] = e.moe.is_null() ? nlohmann::json::array() : e.moe;
      d["routing_text"] = {
          {"path", a->text}, {"tokens", e.tokens}, {"loss", e.loss}, {"bpb", e.bpb}};
    }
    if (a->json) {
      fmt::print("{}\n", d.dump());
      return;
    }
    print_description(d);
    if (a->routing) print_routing(d["routing"]);
  });
}

}  // namespace moe::cli
