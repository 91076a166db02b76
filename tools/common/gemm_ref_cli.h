// The command line and timing rule shared by the bf16 GEMM reference tools
// (tools/onednn_ref/onednn_gemm_bf16.cpp, tools/libxsmm_ref/libxsmm_gemm_bf16.cpp), which put a
// library beside `moe bench gemm-bf16` on one product shape:
//   TOOL --m M --n N --k K [--ta 0|1] [--tb 0|1] [--repeats R]
// Header-only: the oneDNN tool links nothing of moe.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace gemm_ref {

struct Args {
  int64_t m = 1024, n = 1024, k = 1024;
  bool ta = false, tb = false;
  int repeats = 5;
};

[[noreturn]] inline void usage(const char* tool, const std::string& why) {
  std::fprintf(stderr, "%s: %s\nusage: %s --m M --n N --k K [--ta 0|1] [--tb 0|1] [--repeats R]\n",
               tool, why.c_str(), tool);
  std::exit(2);
}

inline Args parse(const char* tool, int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) usage(tool, "every option takes a value");
    const std::string k = argv[i];
    const long long v = std::atoll(argv[i + 1]);
    if (k == "--m")
      a.m = v;
    else if (k == "--n")
      a.n = v;
    else if (k == "--k")
      a.k = v;
    else if (k == "--ta")
      a.ta = v != 0;
    else if (k == "--tb")
      a.tb = v != 0;
    else if (k == "--repeats")
      a.repeats = int(v);
    else
      usage(tool, "unknown option " + k);
  }
  if (a.m < 1 || a.n < 1 || a.k < 1 || a.m > 65536 || a.n > 65536 || a.k > 65536)
    usage(tool, "--m, --n, --k must be in 1..65536");
  if (a.repeats < 1 || a.repeats > 1000) usage(tool, "--repeats must be in 1..1000");
  return a;
}

// `moe bench`'s rule: one warm-up call (caches, pages, JIT, scratchpads), then the upper median
// of `repeats` timed calls, in seconds.
template <typename F>
double median_seconds(int repeats, F&& run) {
  run();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace gemm_ref
