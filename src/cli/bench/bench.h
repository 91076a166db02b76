// `moe bench <name>`: one file per benchmark in this folder, each registering its subcommand on
// the `bench` app. A benchmark file holds its arguments, the measurement (a function that returns
// a result struct and prints nothing) and the printing of that result, text or one JSON object.
// bench/run_bench.sh parses the JSON fields: keep them when changing a benchmark.
#pragma once
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <vector>

namespace moe::cli {

void register_bench_sgemm(CLI::App& bench);      // bench_sgemm.cpp: OpenBLAS sgemm, the ceiling
void register_bench_train(CLI::App& bench);      // bench_train.cpp: a whole model's training step
void register_bench_moe(CLI::App& bench);        // bench_moe.cpp: one MoE layer, forward + backward
void register_bench_peer(CLI::App& bench);       // bench_peer.cpp: one PEER layer's training step
void register_bench_qmatmul(CLI::App& bench);    // bench_qmatmul.cpp: inference products vs triad
void register_bench_infer(CLI::App& bench);      // bench_infer.cpp: inference pp/tg speed
void register_bench_gemm_bf16(CLI::App& bench);  // bench_gemm_bf16.cpp: bf16 GEMM vs sgemm

using BenchClock = std::chrono::steady_clock;

inline double seconds_since(BenchClock::time_point t) {
  return std::chrono::duration<double>(BenchClock::now() - t).count();
}

// The upper median of the timed repeats (v.size() / 2 after sorting).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace moe::cli
