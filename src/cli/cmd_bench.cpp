// moe bench sgemm | train | moe | peer | qmatmul | infer | gemm-bf16: measurements that
// bench/run_bench.sh puts side by side with PyTorch (infer: with llama.cpp). Each benchmark lives
// in its own file under bench/ (bench/bench.h lists them).
#include "bench/bench.h"
#include "commands.h"

namespace moe::cli {

void register_bench(CLI::App& app) {
  CLI::App* b = app.add_subcommand("bench", "Benchmarks (see bench/ for the side-by-side runs)");
  b->require_subcommand(1);
  register_bench_sgemm(*b);
  register_bench_train(*b);
  register_bench_moe(*b);
  register_bench_peer(*b);
  register_bench_qmatmul(*b);
  register_bench_infer(*b);
  register_bench_gemm_bf16(*b);
}

}  // namespace moe::cli
