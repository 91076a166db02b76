// onednn_gemm_bf16: oneDNN's bf16 matmul on one product shape of bf16 training, measured by the
// rule of `moe bench gemm-bf16` (one warm-up call, then the median of --repeats calls), so
// docs/KERNELS.md can put the library beside our kernel (include/moe/kernels/gemm_bf16.h). moe
// never links oneDNN; this tool is built by `cmake --build build --target onednn_gemm_bf16`.
//
//   C[M, N] (f32) = op(A)[M, K] · op(B)[K, N],  A, B bf16 row-major; op = transpose with --ta/--tb
//
// The transposes are strides of the memory descriptors (A is [K, M] when --ta, B is [N, K] when
// --tb), as gemm_bf16 reads them; the primitive is created once, outside the timing, as a
// training loop would cache it. Values: N(0,1) for A, N(0, 0.02²) for B, rounded to bf16.
// Threads: oneDNN's OpenMP runtime, OMP_NUM_THREADS.
// Usage: onednn_gemm_bf16 --m M --n N --k K [--ta 0|1] [--tb 0|1] [--repeats 5]
// Prints one JSON line: {"m", "n", "k", "ta", "tb", "gflops", "ms"}.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <string>
#include <vector>

#include "../common/gemm_ref_cli.h"

namespace {

using gemm_ref::Args;

// core/half.h's f32_to_bf16 (nearest even; the values here are finite).
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dnnl;
  using dt = memory::data_type;
  const Args a = gemm_ref::parse("onednn_gemm_bf16", argc, argv);
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const memory::dims a_strides = a.ta ? memory::dims{1, a.m} : memory::dims{a.k, 1};
  const memory::dims b_strides = a.tb ? memory::dims{1, a.k} : memory::dims{a.n, 1};
  const memory::desc a_md({a.m, a.k}, dt::bf16, a_strides), b_md({a.k, a.n}, dt::bf16, b_strides),
      c_md({a.m, a.n}, dt::f32, memory::dims{a.n, 1});
  const matmul::primitive_desc pd(matmul::desc(a_md, b_md, c_md), eng);  // the 2.x API
  const matmul prim(pd);

  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<uint16_t> A(std::size_t(a.m * a.k)), B(std::size_t(a.k * a.n));
  for (auto& x : A) x = to_bf16(g(rng));
  for (auto& x : B) x = to_bf16(0.02f * g(rng));
  std::vector<float> C(std::size_t(a.m * a.n));
  memory am(a_md, eng, A.data()), bm(b_md, eng, B.data()), cm(c_md, eng, C.data());
  auto run = [&] {
    prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    s.wait();
  };
  const double sec = gemm_ref::median_seconds(a.repeats, run);
  std::printf(
      "{\"m\": %lld, \"n\": %lld, \"k\": %lld, \"ta\": %d, \"tb\": %d, \"gflops\": %.3f, "
      "\"ms\": %.4f}\n",
      (long long)a.m, (long long)a.n, (long long)a.k, int(a.ta), int(a.tb),
      2.0 * double(a.m) * double(a.n) * double(a.k) / sec / 1e9, sec * 1e3);
  return 0;
}
