// What the CPU this process runs on can execute, read once from CPUID (GCC's
// __builtin_cpu_supports) and cached. The kernels choose their instruction set from it at run
// time, so one binary runs on any x86-64 and uses what the CPU has.
//
// AMX needs the OS as well as the CPU: the tile state is saved on context switches only for a
// process that asked for it (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)), so the
// first cpu_features() call asks, and amx_usable says whether the tiles may be used.
#pragma once
#include <string>

namespace moe {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;         // vcvtph2ps (CPUID.1:ECX[29]; the AVX2 qmatmul path needs it)
  bool avx512 = false;       // AVX512 F, BW, VL and DQ together (the subset every kernel assumes)
  bool avx512_bf16 = false;  // vdpbf16ps, vcvtne2ps2bf16 (Zen 4, Cooper Lake, Sapphire Rapids)
  bool avx512_vnni = false;  // vpdpbusd
  bool amx_tile = false;     // CPUID.(7,0):EDX[24]
  bool amx_bf16 = false;     // CPUID.(7,0):EDX[22] (Sapphire Rapids and later)
  // AMX-TILE, AMX-BF16 and AVX512-BF16 on the CPU, the tile state enabled in XCR0 (bits 17, 18)
  // and the kernel's permission granted to this process: gemm_bf16's amx path runs.
  bool amx_usable = false;
};

// The features of this CPU (computed on the first call; thread-safe).
const CpuFeatures& cpu_features();

// A short list for logs and benchmarks, e.g. "avx2 fma avx512 avx512bf16 avx512vnni".
std::string cpu_features_string();

}  // namespace moe
