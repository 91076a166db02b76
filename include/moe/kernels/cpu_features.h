// What the CPU this process runs on can execute, read once from CPUID (GCC's
// __builtin_cpu_supports) and cached. The kernels choose their instruction set from it at run
// time, so one binary runs on any x86-64 and uses what the CPU has.
//
// AMX is reported, not used: AMX-BF16 tiles need Linux's arch_prctl(ARCH_REQ_XCOMP_PERM)
// permission before the first tile instruction, and no kernel here issues one yet.
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
};

// The features of this CPU (computed on the first call; thread-safe).
const CpuFeatures& cpu_features();

// A short list for logs and benchmarks, e.g. "avx2 fma avx512 avx512bf16 avx512vnni".
std::string cpu_features_string();

}  // namespace moe
