// Each subcommand registers itself on the CLI11 app and runs from its callback.
#pragma once
#include <CLI/CLI.hpp>

namespace moe::cli {
void register_train(CLI::App& app);
void register_eval(CLI::App& app);
void register_generate(CLI::App& app);
void register_sample_probs(CLI::App& app);  // hidden: for tests
void register_params(CLI::App& app);
void register_data(CLI::App& app);
void register_bench(CLI::App& app);
void register_scaling(CLI::App& app);
void register_sweep(CLI::App& app);
void register_compare(CLI::App& app);
void register_convert(CLI::App& app);
void register_inspect(CLI::App& app);
}  // namespace moe::cli
