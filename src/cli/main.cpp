// moe <subcommand>: the command-line front end. Every moe::Error is caught here and printed as
// one line ("moe: error: ..."), with a non-zero exit status.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moe/core/error.h"
#include "moe/dist/communicator.h"
#include "moe/kernels/cpu_features.h"
#include "moe/kernels/gemm_bf16.h"
#include "world.h"

extern "C" char* openblas_get_corename(void);

// OpenBLAS (DYNAMIC_ARCH) picks its kernels from CPUID when it loads. Virtual CPUs that report a
// generic model make it fall back to Prescott (SSE3) kernels, 2-4x slower than the AVX-512 ones
// the CPU can run. The choice is made at load time, so the only fix from inside is to set
// OPENBLAS_CORETYPE and re-execute once. A user's own OPENBLAS_CORETYPE is always respected.
static void pick_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("MOE_NO_BLAS_REEXEC")) return;
  const char* core = openblas_get_corename();
  if (!core || (std::strcmp(core, "Prescott") != 0 && std::strcmp(core, "Core2") != 0 &&
                std::strcmp(core, "Nehalem") != 0))
    return;
  const char* better = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                           ? "SkylakeX"
                       : __builtin_cpu_supports("avx2") ? "Haswell"
                                                        : nullptr;
  if (!better) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  setenv("MOE_NO_BLAS_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on with the slow kernels
}

// CLI11's range messages print a range's ends in full: "not in range 0.000000 to 17976931348623157
// ...(300 digits)". Any run of more than 18 digits (with its fraction) becomes %.3g.
static std::string shorten_numbers(const std::string& msg) {
  std::string out;
  for (std::size_t i = 0; i < msg.size();) {
    std::size_t j = i;
    while (j < msg.size() && std::isdigit(static_cast<unsigned char>(msg[j]))) ++j;
    if (j - i > 18) {
      std::size_t k = j;
      if (k < msg.size() && msg[k] == '.')
        for (++k; k < msg.size() && std::isdigit(static_cast<unsigned char>(msg[k]));) ++k;
      out += fmt::format("{:.3g}", std::strtod(msg.substr(i, k - i).c_str(), nullptr));
      i = k;
    } else if (j > i) {
      out.append(msg, i, j - i);
      i = j;
    } else {
      out += msg[i++];
    }
  }
  return out;
}

int main(int argc, char** argv) {
  pick_blas_kernels(argv);
  CLI::App app{"moe.cpp: train, measure and run Mixture-of-Experts language models on CPUs"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  moe::cli::register_train(app);
  moe::cli::register_eval(app);
  moe::cli::register_generate(app);
  moe::cli::register_sample_probs(app);
  moe::cli::register_params(app);
  moe::cli::register_data(app);
  moe::cli::register_bench(app);
  moe::cli::register_scaling(app);
  moe::cli::register_sweep(app);
  moe::cli::register_compare(app);
  moe::cli::register_convert(app);
  moe::cli::register_inspect(app);
  try {
    moe::cli::set_world(moe::make_communicator(&argc, &argv, moe::cli::launched_by_mpirun()));
    // The AMX tile program is checked before bf16 products use it (kernels/gemm_bf16.h); only a
    // CPU with AMX runs the check (~1 ms), and only a failed one is reported.
    if (moe::amx_refused())
      fmt::print(stderr,
                 "moe: warning: the AMX tile program's bf16 products differ from the reference on "
                 "this CPU ({}); bf16 products run on AVX512-BF16 instead. Please report it.\n",
                 moe::cpu_features_string());
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --help-all arrive as "errors" with exit code 0: CLI11 prints them. A real
    // parse error is one line, as every other error is.
    if (e.get_exit_code() == 0) return app.exit(e);
    if (argc > 1 && argv[1][0] != '-') {
      // CLI11 reports an unknown subcommand as "a subcommand is required": name it instead.
      std::string known;
      bool found = false;
      for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        found = found || sub->get_name() == argv[1];
        known += (known.empty() ? "" : ", ") + sub->get_name();
      }
      if (!found) {
        fmt::print(stderr, "moe: error: unknown subcommand '{}' (known: {})\n", argv[1], known);
        return e.get_exit_code();
      }
    }
    fmt::print(stderr, "moe: error: {} (see moe --help)\n", shorten_numbers(e.what()));
    return e.get_exit_code();
  } catch (const std::bad_alloc&) {
    // Last resort: the memory estimates (memory_estimate.h) refuse what cannot fit before
    // allocating; anything that still runs out of memory says so in one line.
    std::fflush(stdout);
    fmt::print(stderr,
               "moe: error: out of memory (an allocation failed; try a smaller model, batch or "
               "seq_len)\n");
    if (moe::cli::world().size() > 1) moe::cli::world().abort(1);
    return 1;
  } catch (const nlohmann::json::exception& e) {
    // Every reader of outside JSON type-checks and names file and field; a value that slips
    // through still gets one line rather than a crash.
    std::fflush(stdout);
    fmt::print(stderr, "moe: error: unexpected JSON value ({})\n", e.what());
    if (moe::cli::world().size() > 1) moe::cli::world().abort(1);
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    if (moe::cli::world().size() > 1) {
      fmt::print(stderr, "moe: error (rank {}): {}\n", moe::cli::world().rank(), e.what());
      std::fflush(stderr);
      moe::cli::world().abort(1);
    }
    fmt::print(stderr, "moe: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
