#include "moe/train/sweep.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/json_util.h"
#include "moe/scaling/accounting.h"
#include "moe/train/trainer.h"

namespace moe {

using json = nlohmann::json;

static std::vector<double> numbers(const json& g, const char* key, const std::string& path) {
  MOE_CHECK(g.contains(key), "{}: field {} missing", path, key);
  std::vector<double> v;
  const json& a = g[key];
  if (a.is_number()) return {a.get<double>()};
  MOE_CHECK(a.is_array() && !a.empty(), "{}: field {}: expected a number or a list of numbers",
            path, key);
  for (auto& x : a) {
    MOE_CHECK(x.is_number() && x.get<double>() > 0,
              "{}: field {}: bad entry {}, expected a positive number", path, key, json_excerpt(x));
    v.push_back(x.get<double>());
  }
  return v;
}

std::map<std::string, json> read_finished_runs(const std::string& path) {
  std::map<std::string, json> done;
  if (!file_exists(path)) return done;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("name") && j["name"].is_string())
      done[j["name"].get<std::string>()] = j;
  }
  return done;
}

SweepSummary run_sweep(const std::string& grid_path, Communicator& comm,
                       const SweepProgress& progress) {
  // Depth-bounded, and every field type-checked naming it (a wrong type used to surface as
  // nlohmann's "type_error.302" with no file or field).
  json g = parse_json(read_file(grid_path), grid_path);
  MOE_CHECK(g.is_object(), "{}: not a JSON object", grid_path);
  auto require = [&](const char* key, bool ok, const char* expected) {
    MOE_CHECK(!g.contains(key) || ok, "{}: field {}: got {}, expected {}", grid_path, key,
              json_excerpt(g[key]), expected);
  };
  require("base", g.value("base", json("")).is_string(), "a config file name");
  require("out_dir", g.value("out_dir", json("")).is_string(), "a directory name");
  require("router", g.value("router", json("")).is_string(), "a router kind");
  require("expansion", g.value("expansion", json(1)).is_number_integer(), "an integer");
  require("set", g.value("set", json::array()).is_array(), "a list of \"key=value\" strings");
  for (const json& s : g.value("set", json::array()))
    MOE_CHECK(s.is_string(), "{}: field set: entry {} is not a \"key=value\" string", grid_path,
              json_excerpt(s));
  for (auto& [k, _] : g.items())
    MOE_CHECK(k == "comment" || k == "base" || k == "out_dir" || k == "d_model" || k == "tokens" ||
                  k == "granularity" || k == "expansion" || k == "router" || k == "set",
              "{}: unknown field {} (known: base, out_dir, d_model, tokens, granularity, "
              "expansion, router, set)",
              grid_path, k);
  const std::string base_path = g.value("base", std::string());
  json base = base_path.empty() ? json::object() : parse_json(read_file(base_path), base_path);
  MOE_CHECK(base.is_object() && (!base.contains("train") || base["train"].is_object()),
            "{}: a config must be a JSON object (with an object \"train\")", base_path);
  const std::string out = g.value("out_dir", std::string("runs/sweep"));
  const auto widths = numbers(g, "d_model", grid_path), tokens = numbers(g, "tokens", grid_path),
             grans = numbers(g, "granularity", grid_path);
  const int E = g.value("expansion", 4);
  const std::string router = g.value("router", std::string("topk"));
  make_dirs(out);
  SweepSummary sum;
  sum.runs_file = out + "/runs.jsonl";
  const auto done = read_finished_runs(sum.runs_file);
  for (double d : widths)
    for (double D : tokens)
      for (double G : grans) {
        const int dm = int(d), gi = int(G);
        MOE_CHECK(dm % 64 == 0, "{}: d_model {} is not a multiple of 64 (d_model = 64·n_blocks)",
                  grid_path, dm);
        const std::string name = fmt::format("d{}_t{:.0f}_g{}", dm, D, gi);
        if (done.count(name)) {
          ++sum.skipped;
          continue;
        }
        json j = base;
        j["model"]["d_model"] = dm;
        j["model"]["n_layers"] = dm / 64;
        j["model"]["n_heads"] = dm / 64;
        j["model"]["ffn"] = {{"kind", "moe"},  {"activation", "gelu"},
                             {"d_ff", 4 * dm}, {"granularity", gi},
                             {"expansion", E}, {"router", {{"kind", router}}}};
        // The sizes as the config will read them (defaults 16 and 128); a wrong type is left for
        // config_from_json to name.
        auto size = [&](const char* k, int dflt) {
          const json v = j["train"].value(k, json(dflt));
          return v.is_number_integer() && v.get<int64_t>() > 0 && v.get<int64_t>() < (1 << 30)
                     ? int(v.get<int64_t>())
                     : dflt;
        };
        const int B = size("batch_size", 16), T = size("seq_len", 128);
        const int steps = std::max(1, int(std::llround(D / (double(B) * T))));
        j["train"]["steps"] = steps;
        j["train"]["warmup_steps"] = std::min(100, std::max(1, steps / 10));
        j["train"]["out_dir"] = out + "/" + name;
        j["train"]["eval_every"] = 0;
        j["train"]["checkpoint_every"] = 0;
        j["train"]["time_limit_s"] = 0;
        if (g.contains("set"))
          for (auto& s : g["set"]) apply_override(j, s.get<std::string>());
        Config cfg = config_from_json(j, grid_path + " (run " + name + ")");
        progress.run_started(name, steps);
        // A run without a line in runs.jsonl did not finish: it starts again from scratch.
        TrainOptions opts;
        opts.overwrite = true;
        Trainer t(cfg, comm, opts);
        TrainResult r = t.run();
        // Smoothed final training loss: the mean over the last 10% of steps.
        const auto& L = t.losses();
        const std::size_t tail = std::max<std::size_t>(1, L.size() / 10);
        double loss = 0;
        for (std::size_t i = L.size() - tail; i < L.size(); ++i) loss += L[i];
        loss /= tail;
        const ModelCount mc = count_model(cfg.model, cfg.train.seq_len);
        const double N = double(mc.total - mc.embedding - mc.head - mc.router);
        const double tokens_seen = double(steps) * B * T * cfg.train.grad_accum;
        json line = {{"name", name},
                     {"N", N},
                     {"D", tokens_seen},
                     {"G", gi},
                     {"E", E},
                     {"d_model", dm},
                     {"flops", mc.flops_train * tokens_seen},
                     {"loss", loss},
                     {"val_bpb", r.last_val.bpb}};
        append_line_atomic(sum.runs_file, line.dump());
        ++sum.ran;
        progress.run_finished(line);
      }
  return sum;
}

}  // namespace moe
