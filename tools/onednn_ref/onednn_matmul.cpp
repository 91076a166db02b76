// onednn_matmul: oneDNN's matmul on the inference path's product shapes, measured by the rule of
// `moe bench qmatmul` (bench/run_bench.sh runs the two side by side), so docs/INFERENCE.md can
// say whether the library or our kernels (include/moe/kernels/qmatmul.h) should serve.
//
//   Y[N, rows] = X[N, cols] · Wᵀ,  W [rows, cols] row-major (as a GGUF tensor is stored)
//
// Types: f32 (f32 × f32 → f32) and bf16 (X rounded to bf16 by a reorder inside the timed call,
// as our bf16 path rounds it; bf16 × bf16 → f32). oneDNN 2.6 has no block-scaled int8 (GGML's
// Q8_0 keeps one scale per 32 weights), so Q8_0 has no counterpart here.
// Timing: `count` weight matrices, together ≥ --min-mib (far beyond the caches), each product on
// the next one; best pass of --repeats; one primitive serves all matrices (created once, as an
// engine would). Threads: oneDNN's OpenMP runtime, OMP_NUM_THREADS.
// Layouts: `inplace` reads W as stored (strides {1, cols}: what an engine on a memory-mapped file
// gets); `packed` lets oneDNN choose its weights layout (format_tag::any) and reorders every
// matrix into it once before timing — a second copy of the weights, the library's best case.
// Usage: onednn_matmul --rows R --cols C --n N --type f32|bf16 [--layout inplace|packed]
//                      [--repeats 5] [--min-mib 256]
// Prints one JSON line: {"type", "layout", "rows", "cols", "n", "gflops", "weight_gbps",
// "us_per_product", "matrices", "isa"}.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <string>
#include <vector>

namespace {

struct Args {
  int64_t rows = 1024, cols = 2048, n = 1;
  std::string type = "f32";
  std::string layout = "inplace";
  int repeats = 5;
  double min_mib = 256;
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "onednn_matmul: %s\n", msg.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) die("flag " + k + " needs a value");
    const char* v = argv[++i];
    char* end = nullptr;
    if (k == "--type" || k == "--layout") {
      (k == "--type" ? a.type : a.layout) = v;
      continue;
    }
    const double x = std::strtod(v, &end);
    if (end == v || *end != '\0' || !(x > 0) || x > 1e9) die(k + ": got " + v + ", expected > 0");
    if (k == "--rows")
      a.rows = int64_t(x);
    else if (k == "--cols")
      a.cols = int64_t(x);
    else if (k == "--n")
      a.n = int64_t(x);
    else if (k == "--repeats")
      a.repeats = int(x);
    else if (k == "--min-mib")
      a.min_mib = x;
    else
      die("unknown flag " + k);
  }
  if (a.type != "f32" && a.type != "bf16") die("--type " + a.type + ": expected f32 or bf16");
  if (a.layout != "inplace" && a.layout != "packed")
    die("--layout " + a.layout + ": expected inplace or packed");
  return a;
}

uint16_t to_bf16(float f) {  // round to nearest even (finite inputs only here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dnnl;
  using dt = memory::data_type;
  const Args a = parse(argc, argv);
  const bool bf = a.type == "bf16";
  const std::size_t esize = bf ? 2 : 4;
  const std::size_t mat_bytes = std::size_t(a.rows * a.cols) * esize;
  const int count = int(std::max(1.0, std::ceil(a.min_mib * 1048576.0 / double(mat_bytes))));

  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const dt wt = bf ? dt::bf16 : dt::f32;
  // src [N, cols] f32 as given; the product's src in the weights' type.
  const memory::desc x_f32({a.n, a.cols}, dt::f32, memory::format_tag::ab);
  const memory::desc x_md({a.n, a.cols}, wt, memory::format_tag::ab);
  // Weights as oneDNN's [K = cols, N = rows] with strides {1, cols}: W [rows, cols] read in place.
  const memory::desc w_md({a.cols, a.rows}, wt, memory::dims{1, a.cols});
  const memory::desc y_md({a.n, a.rows}, dt::f32, memory::format_tag::ab);
  const bool packed = a.layout == "packed";
  const memory::desc w_any({a.cols, a.rows}, wt, memory::format_tag::any);
  const matmul::primitive_desc pd(matmul::desc(x_md, packed ? w_any : w_md, y_md),
                                  eng);  // the 2.x API
  const matmul prim(pd);

  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<uint8_t> wbuf(mat_bytes * std::size_t(count));
  for (std::size_t i = 0; i < std::size_t(a.rows * a.cols) * count; ++i) {
    const float v = u(rng);
    if (bf) {
      const uint16_t h = to_bf16(v);
      std::memcpy(wbuf.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(wbuf.data() + 4 * i, &v, 4);
    }
  }
  std::vector<float> X(std::size_t(a.n * a.cols)), Y(std::size_t(a.n * a.rows));
  for (float& x : X) x = u(rng);
  memory xf(x_f32, eng, X.data()), y(y_md, eng, Y.data());
  memory xw = bf ? memory(x_md, eng) : xf;
  std::vector<memory> ws;
  for (int m = 0; m < count; ++m) {
    memory stored(w_md, eng, wbuf.data() + mat_bytes * m);
    if (!packed) {
      ws.push_back(stored);
      continue;
    }
    ws.emplace_back(pd.weights_desc(), eng);
    reorder(stored, ws.back()).execute(s, stored, ws.back());
  }
  s.wait();
  if (packed) std::vector<uint8_t>().swap(wbuf);  // only the packed copies stay in memory
  reorder to_bf(xf, xw);                          // unused for f32

  auto product = [&](int m) {
    if (bf) to_bf.execute(s, xf, xw);
    prim.execute(s,
                 {{DNNL_ARG_SRC, xw}, {DNNL_ARG_WEIGHTS, ws[std::size_t(m)]}, {DNNL_ARG_DST, y}});
    s.wait();
  };
  product(0);  // warm-up: thread pool, kernels' JIT
  double best = 1e30;
  for (int rep = 0; rep < a.repeats; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int m = 0; m < count; ++m) product(m);
    const double sec =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / count;
    best = std::min(best, sec);
  }
  const char* isa = pd.impl_info_str();
  std::printf(
      "{\"type\":\"%s\",\"layout\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"n\":%lld,\"gflops\":%.6g,"
      "\"weight_gbps\":%.6g,\"us_per_product\":%.6g,\"matrices\":%d,\"impl\":\"%s\","
      "\"onednn\":\"%d.%d.%d\"}\n",
      a.type.c_str(), a.layout.c_str(), (long long)a.rows, (long long)a.cols, (long long)a.n,
      2.0 * double(a.n) * double(a.rows) * double(a.cols) / best / 1e9,
      double(mat_bytes) / best / 1e9, best * 1e6, count, isa, dnnl_version()->major,
      dnnl_version()->minor, dnnl_version()->patch);
  return 0;
}
