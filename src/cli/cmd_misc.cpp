// moe params, moe data.
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/data/corpus.h"
#include "moe/formats/model_file.h"
#include "moe/scaling/accounting.h"
#include "moe/train/config.h"

namespace moe::cli {

namespace {

// One line per split file written by `moe data fetch` / `moe data prepare`.
void print_splits(const std::vector<data::SplitSummary>& splits) {
  for (const data::SplitSummary& s : splits)
    fmt::print("{:<5} {:>5} documents {:>10} bytes {:>3} groups  {}\n", data::split_name(s.split),
               s.documents, s.bytes, s.groups, s.path);
  std::fflush(stdout);
}

}  // namespace

void register_params(CLI::App& app) {
  struct Args {
    std::string config, preset, checkpoint;
    std::vector<std::string> sets;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("params", "Count parameters and FLOPs per token of a config");
  c->add_option("--config", a->config, "config file (JSON)");
  c->add_option("--preset", a->preset,
                "a published model in configs/presets/: mixtral-8x7b, deepseek-moe-16b, "
                "olmoe-1b-7b");
  c->add_option("--checkpoint", a->checkpoint,
                "count the model of a file instead: our checkpoint, a .gguf file or a Hugging "
                "Face directory");
  c->add_option("--set", a->sets, "override a config field (repeatable)");
  c->add_flag("--json", a->json, "print one JSON object");
  c->callback([a] {
    MOE_CHECK(int(!a->config.empty()) + int(!a->preset.empty()) + int(!a->checkpoint.empty()) <= 1,
              "--config, --preset and --checkpoint are exclusive");
    std::string path = a->config;
    if (!a->preset.empty()) {
      // The presets ship with the sources; look beside the working directory first.
      path = "configs/presets/" + a->preset + ".json";
      if (!file_exists(path)) path = std::string(MOE_SOURCE_DIR) + "/" + path;
      MOE_CHECK(file_exists(path), "--preset {}: no such preset (configs/presets/{}.json)",
                a->preset, a->preset);
    }
    Config cfg;
    if (!a->checkpoint.empty()) {
      MOE_CHECK(a->sets.empty(), "--set does not apply to --checkpoint (the file fixes the model)");
      cfg.model = formats::open_model(a->checkpoint)->config();
      cfg.train.seq_len = std::min(cfg.train.seq_len, cfg.model.max_seq_len);
    } else {
      cfg = load_config(path, a->sets);
    }
    ModelCount m = count_model(cfg.model, cfg.train.seq_len);
    // Byte counts: an integer while it fits in int64, else a double (a model near 2^63
    // parameters is countable, its bytes are not; the product used to wrap negative).
    auto bytes = [&](int64_t per_param) {
      int64_t b = 0;
      return __builtin_mul_overflow(m.total, per_param, &b)
                 ? nlohmann::json(double(m.total) * double(per_param))
                 : nlohmann::json(b);
    };
    if (a->json) {
      fmt::print("{}\n",
                 nlohmann::json({{"total_params", m.total},
                                 {"active_params", m.active},
                                 {"embedding_params", m.embedding},
                                 {"attention_params", m.attention},
                                 {"ffn_params", m.ffn},
                                 {"router_params", m.router},
                                 {"expert_params", m.experts},
                                 {"shared_expert_params", m.shared},
                                 {"norm_params", m.norms},
                                 {"head_params", m.head},
                                 {"flops_per_token_forward", m.flops_fwd},
                                 {"flops_per_token_attention_forward", m.flops_attention_fwd},
                                 {"flops_per_token_train", m.flops_train},
                                 {"bytes_weights_fp32", bytes(4)},
                                 {"bytes_weights_bf16", bytes(2)},
                                 {"bytes_grads_fp32", bytes(4)},
                                 {"bytes_adamw_state_fp32", bytes(8)},
                                 {"seq_len", cfg.train.seq_len}})
                     .dump(2));
      return;
    }
    fmt::print("parameters\n");
    fmt::print("  embedding   {:>16L}\n", m.embedding);
    fmt::print("  attention   {:>16L}\n", m.attention);
    fmt::print("  ffn         {:>16L}\n", m.ffn);
    if (m.router > 0)
      fmt::print("    router    {:>16L}\n    experts   {:>16L}\n    shared    {:>16L}\n", m.router,
                 m.experts, m.shared);
    fmt::print("  norms       {:>16L}\n", m.norms);
    fmt::print("  head        {:>16L}{}\n", m.head, cfg.model.tie_embeddings ? "  (tied)" : "");
    fmt::print("  total       {:>16L}\n  active      {:>16L}\n", m.total, m.active);
    fmt::print("FLOPs per token (seq_len {}, causal mean context (T+1)/2)\n", cfg.train.seq_len);
    fmt::print(
        "  forward matmuls   {:.4g}\n  forward attention {:.4g}\n  forward total     "
        "{:.4g}\n  training          {:.4g}\n",
        m.flops_matmul_fwd, m.flops_attention_fwd, m.flops_fwd, m.flops_train);
    fmt::print(
        "memory: weights {:.1f} MiB fp32 ({:.1f} MiB bf16); training with fp32 gradients "
        "and AdamW moments: {:.1f} MiB\n",
        double(m.total) * 4 / 1048576.0, double(m.total) * 2 / 1048576.0,
        double(m.total) * 16 / 1048576.0);
  });
}

void register_data(CLI::App& app) {
  CLI::App* d = app.add_subcommand("data", "Fetch or prepare text data");
  d->require_subcommand(1);
  auto out = std::make_shared<std::string>("data/brown");
  CLI::App* f = d->add_subcommand("fetch", "Download a corpus (brown) and split it");
  auto name = std::make_shared<std::string>();
  f->add_option("corpus", *name, "corpus name (brown)")
      ->required()
      ->check(CLI::IsMember({"brown"}));
  f->add_option("--out", *out, "output directory");
  f->callback([out, name] { print_splits(data::fetch_brown(*out)); });
  auto inputs = std::make_shared<std::vector<std::string>>();
  auto pout = std::make_shared<std::string>();
  CLI::App* p = d->add_subcommand("prepare", "Split your own text files into train/val/test");
  p->add_option("--input", *inputs, "text files (UTF-8)")->required();
  p->add_option("--out", *pout, "output directory")->required();
  p->callback([inputs, pout] { print_splits(data::prepare_text(*inputs, *pout)); });
}

}  // namespace moe::cli
