#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <optional>

#include "commands.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/threading.h"
#include "moe/data/corpus.h"
#include "moe/formats/model_file.h"
#include "moe/train/checkpoint.h"
#include "moe/train/memory_estimate.h"
#include "moe/train/trainer.h"
#include "train_progress.h"
#include "world.h"

namespace moe::cli {

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string resume, init_from, upcycle_from;
  bool allow_model_change = false;
  bool quiet = false, overwrite = false;
  int64_t stop_after = 0;
  int expert_parallel = 1;
};

struct EvalArgs {
  std::string checkpoint, split = "test", data_dir, text;
  std::string precision;  // empty: the checkpoint's train.precision
  int batch = 8, seq = 0, threads = 0;
  bool json = false;
};

// A model ready for inference from any model file (our checkpoint, GGUF, Hugging Face
// directory): its run config (a file from outside gets defaults around its model), tokenizer and
// weights.
struct Loaded {
  CheckpointMeta meta;
  std::unique_ptr<data::Tokenizer> tok;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<formats::ModelReader> reader;  // the open file, kept for build_model()
  // A moe.cpp checkpoint (its config has a training seq_len and data dir; load_checkpoint reads
  // it, expert-parallel shards included).
  bool ours() const { return reader->format() == "moe"; }
};

// Opens path and reads its config and tokenizer; the model is built by build_model().
Loaded open_for_inference(const std::string& path) {
  Loaded l;
  l.reader = formats::open_model(path);
  const formats::ModelReader* r = l.reader.get();
  if (l.ours()) {
    l.meta = read_checkpoint_meta(path);
  } else {
    l.meta.config.model = r->config();
    // Windows as long as the model's context allows, up to 512 tokens by default; no data
    // directory of its own (eval needs --text or --data-dir).
    l.meta.config.train.seq_len = std::min(512, r->config().max_seq_len);
    l.meta.config.data.dir.clear();
  }
  l.tok = r->tokenizer();
  MOE_CHECK(l.tok != nullptr, "{}: the file carries no tokenizer", path);
  MOE_CHECK(l.tok->vocab_size() <= l.meta.config.model.vocab_size,
            "{}: the tokenizer has {} tokens but the model's vocabulary is {}", path,
            l.tok->vocab_size(), l.meta.config.model.vocab_size);
  return l;
}

void build_model(Loaded& l, const std::string& path, int batch, int seq) {
  l.model = std::make_unique<Transformer>(l.meta.config.model, batch, seq, world());
  if (l.ours()) {
    load_checkpoint(path, *l.model, nullptr);
  } else {
    formats::load_weights(*l.reader, *l.model);
  }
}

// Test-only fault injection (docs/DISTRIBUTED.md, tests/python/test_data_parallel.py):
// MOE_FAULT_REPLICA_RANK=r makes rank r of a multi-rank run move one replicated weight at start.
// Read strictly: a value that is not a rank number stops the job, naming the variable.
std::optional<int> fault_replica_rank_from_env(int ranks) {
  const char* f = std::getenv("MOE_FAULT_REPLICA_RANK");
  if (!f || ranks == 1) return std::nullopt;
  char* end = nullptr;
  const long r = std::strtol(f, &end, 10);
  MOE_CHECK(*f != '\0' && *end == '\0',
            "environment variable MOE_FAULT_REPLICA_RANK: got \"{}\", expected a rank number", f);
  if (r < 0 || r >= ranks) return std::nullopt;  // no such rank: nothing moves
  return int(r);
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* c = app.add_subcommand("train", "Train a model from a JSON config");
  c->add_option("--config", a->config, "config file (JSON); omitted = all defaults");
  c->add_option("--set", a->sets, "override a config field, e.g. --set train.lr=3e-4 (repeatable)");
  c->add_option("--resume", a->resume,
                "continue from a checkpoint with optimizer state (bit-identical to an "
                "uninterrupted run)");
  c->add_option("--init-from", a->init_from,
                "start a fresh run from a model's weights and tokenizer: our checkpoint (its "
                "model must equal the config's, see --allow-model-change), or a .gguf file / "
                "Hugging Face directory, whose model then replaces the config's (the config "
                "keeps its training settings and MoE loss coefficients)");
  c->add_flag("--allow-model-change", a->allow_model_change,
              "with --init-from a checkpoint of ours: accept a config whose model differs from "
              "the checkpoint's in fields that change the weights' meaning (top-k, RoPE base, …; "
              "the differences are printed); without it such a config is refused");
  c->add_option("--upcycle-from", a->upcycle_from,
                "start an MoE run from a dense checkpoint: experts copy (or slice) its FFNs");
  c->add_flag("--quiet", a->quiet, "no progress output");
  c->add_flag("--overwrite", a->overwrite,
              "start afresh in a train.out_dir that already holds a run (its checkpoints and "
              "metrics.jsonl are removed); without it such a directory is refused");
  c->add_option("--stop-after", a->stop_after,
                "stop with a checkpoint after this many steps (resume later with --resume)");
  c->add_option("--expert-parallel", a->expert_parallel,
                "partition each MoE layer's experts over this many MPI ranks (1 or all ranks; "
                "mpirun -np P moe train ... --expert-parallel P)")
      ->check(CLI::PositiveNumber);
  c->callback([a] {
    MOE_CHECK(a->resume.empty() || a->init_from.empty(),
              "--resume and --init-from are exclusive: resume continues a run, init-from starts "
              "a new one");
    Config cfg = load_config(a->config, a->sets);
    install_stop_handlers();
    MOE_CHECK(a->resume.empty() || a->upcycle_from.empty(),
              "--resume and --upcycle-from are exclusive");
    Communicator& comm = world();
    MOE_CHECK(a->expert_parallel == 1 || a->expert_parallel == comm.size(),
              "--expert-parallel {}: expected 1 (off) or the number of MPI ranks ({})",
              a->expert_parallel, comm.size());
    TrainOptions opts;
    opts.resume = a->resume;
    MOE_CHECK(!a->allow_model_change || !a->init_from.empty(),
              "--allow-model-change applies to --init-from only (a resumed run keeps its model)");
    opts.init_from = a->init_from;
    opts.allow_model_change = a->allow_model_change;
    opts.upcycle_from = a->upcycle_from;
    opts.stop_after = a->stop_after;
    opts.overwrite = a->overwrite;
    opts.expert_parallel = a->expert_parallel;
    opts.stop_requested = stop_requested;
    opts.fault_replica_rank = fault_replica_rank_from_env(comm.size());
    // One rank speaks.
    TrainProgress progress(::isatty(STDOUT_FILENO));
    TrainObserver silent;
    const bool speak = !a->quiet && comm.is_root();
    Trainer t(cfg, comm, opts, speak ? static_cast<TrainObserver&>(progress) : silent);
    // Said even with --quiet: the run reads the weights with a meaning they were not trained for.
    if (comm.is_root() && !t.allowed_model_change().empty())
      fmt::print(stderr, "moe: note: {} (allowed by --allow-model-change)\n",
                 t.allowed_model_change());
    TrainResult r = t.run();
    if (!a->quiet)
      fmt::print("done: {} steps, final train loss {:.4f}, val bpb {}, checkpoint {}\n",
                 r.steps_done, r.final_loss,
                 // No evaluation ran (stopped or resumed with no steps left): say so, not 0.
                 r.last_val.tokens > 0 ? fmt::format("{:.4f}", r.last_val.bpb) : "n/a",
                 r.checkpoint);
  });
}

void register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* c = app.add_subcommand("eval", "Evaluate a checkpoint on a data split (bits per byte)");
  c->add_option("--checkpoint", a->checkpoint,
                "model: our checkpoint (.safetensors), a .gguf file or a Hugging Face directory")
      ->required();
  c->add_option("--split", a->split, "train | val | test")
      ->check(CLI::IsMember({"train", "val", "test"}));
  c->add_option("--data-dir", a->data_dir, "data directory (default: the config's data.dir)");
  c->add_option("--text", a->text,
                "evaluate this whole text file instead of a split (tokenized with the model's own "
                "tokenizer, no special tokens added)");
  c->add_option("--batch", a->batch, "windows per forward pass")->check(CLI::PositiveNumber);
  c->add_option("--seq-len", a->seq,
                "window length T: window w predicts tokens wT+1 … wT+T (default: the training "
                "seq_len, or min(512, context) for an imported model)")
      ->check(CLI::NonNegativeNumber);  // -5 used to mean the default silently
  c->add_option("--threads", a->threads, "OpenMP threads (0 = default)")
      ->check(CLI::Range(0, kMaxThreads));
  c->add_option("--precision", a->precision,
                "fp32 | bf16: the operands of the model's products (default: the checkpoint's "
                "train.precision; our checkpoints only)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  c->add_flag("--json", a->json, "print one JSON object");
  c->callback([a] {
    set_threads(a->threads, "--threads");
    Loaded l = open_for_inference(a->checkpoint);
    MOE_CHECK(a->precision.empty() || l.ours(),
              "--precision {}: {} is not a moe.cpp checkpoint; an imported model runs on its "
              "stored weight types",
              a->precision, a->checkpoint);
    const Precision precision = a->precision.empty()     ? l.meta.config.train.precision
                                : a->precision == "bf16" ? Precision::kBf16
                                                         : Precision::kFp32;
    const int T = a->seq > 0 ? a->seq : l.meta.config.train.seq_len;
    MOE_CHECK(T <= l.meta.config.model.max_seq_len, "--seq-len {}: the model's max_seq_len is {}",
              T, l.meta.config.model.max_seq_len);
    std::string file = a->text;
    if (file.empty()) {
      const std::string dir = a->data_dir.empty() ? l.meta.config.data.dir : a->data_dir;
      MOE_CHECK(!dir.empty(),
                "{}: an imported model has no data directory: give --text FILE or "
                "--data-dir DIR",
                a->checkpoint);
      file = dir + "/" + a->split + ".txt";
    }
    data::TokenStream s = data::tokenize_file(*l.tok, file);
    MOE_CHECK(s.ids.size() >= 2,
              "{}: {} token(s); evaluation needs at least 2 (one to predict from, one to "
              "predict)",
              file, s.ids.size());
    EvalResult r;
    if (l.ours()) {
      // Our checkpoints keep the training model's evaluation: its capacity rule and routing
      // metrics, bit for bit what training reported. Before allocating: the model for
      // batch × T windows (not for max_seq_len positions).
      check_memory(estimate_memory(l.meta.config.model, a->batch, T, MemoryUse::kEval, 0, precision),
                   l.meta.config.model, a->batch, T, "evaluating " + a->checkpoint);
      build_model(l, a->checkpoint, a->batch, T);
      l.model->set_precision(precision);  // bf16: shadows rounded from the loaded masters
      r = evaluate(*l.model, s, a->batch, T);
    } else {
      // A model from outside runs on its stored weights (bf16, Q8_0, … read in place).
      infer::EngineOptions o;
      o.context = T;
      o.max_batch = T;
      auto engine = infer::Engine::open(*l.reader, o);
      r = evaluate(*engine, s, T);
    }
    if (!a->text.empty()) a->split = "text";
    if (a->json) {
      nlohmann::json j = {{"split", a->split},
                          {"loss", r.loss},
                          {"bpb", r.bpb},
                          {"tokens", r.tokens},
                          {"bytes", r.bytes}};
      if (l.ours()) j["precision"] = enum_name(precision);
      if (!r.moe.is_null()) j["moe"] = r.moe;
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print("{} split: {} tokens, {} bytes, loss {:.4f} nats/token, {:.4f} bits per byte\n",
                 a->split, r.tokens, r.bytes, r.loss, r.bpb);
      if (!r.moe.is_null()) {
        fmt::print("Routing over the split (per MoE/PEER layer):\n");
        for (auto& m : r.moe) {
          if (m.value("kind", "") == "peer") {
            std::string heads;
            for (auto& h : m["per_head"])
              heads += fmt::format(" {:.1f}%", 100 * h["usage"].get<double>());
            fmt::print(
                "  layer {} (PEER, {} experts): usage {:.2f}%, KL(z||uniform) {:.3f}, "
                "effective fraction exp(-KL) {:.3f}\n    usage per head:{}\n",
                m["layer"].get<int>(), m["experts"].get<int64_t>(), 100 * m["usage"].get<double>(),
                m["kl"].get<double>(), m["effective"].get<double>(), heads);
            continue;
          }
          std::string loads;
          for (auto& t : m["tokens_per_expert"]) loads += fmt::format(" {}", t.get<int64_t>());
          fmt::print(
              "  layer {}: dropped {:.2f}%, router entropy {:.3f} nats, unused experts {}, "
              "max/mean load {:.2f}, aux {:.4g}, z {:.4g}\n    tokens per expert:{}\n",
              m["layer"].get<int>(), m["dropped_pct"].get<double>(),
              m["router_entropy"].get<double>(), m["unused_experts"].get<int>(),
              m["max_over_mean_load"].get<double>(), m["aux_loss"].get<double>(),
              m["z_loss"].get<double>(), loads);
          if (m.contains("active_experts"))  // relu (ReMoE)
            fmt::print(
                "    active experts per token {:.3f}, sparsity {:.4f}, L1 coefficient {:.4g}\n",
                m["active_experts"].get<double>(), m["sparsity"].get<double>(),
                m["relu_l1_coef"].get<double>());
        }
      }
    }
  });
}

}  // namespace moe::cli
