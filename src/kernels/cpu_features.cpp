// CPUID-based feature detection for the kernels' run-time dispatch (cpu_features.h).
#include "moe/kernels/cpu_features.h"

#include <cpuid.h>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace moe {

namespace {

// Whether this process may use the AMX tiles: the OS saves the tile state (XCR0 bits 17 XTILECFG
// and 18 XTILEDATA, readable by xgetbv once CPUID.1:ECX.OSXSAVE says so) and, on Linux, grants
// this process the dynamically enabled XTILEDATA state (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023,
// feature 18; without it the first tile instruction faults). The grant is process-wide.
bool os_grants_amx() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || (c & bit_OSXSAVE) == 0) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const unsigned tile_state = (1u << 17) | (1u << 18);
  if ((lo & tile_state) != tile_state) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuFeatures detect() {
  __builtin_cpu_init();
  CpuFeatures f;
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  // F16C from CPUID leaf 1, ECX bit 29: clang's __builtin_cpu_supports has no "f16c".
  unsigned a = 0, b = 0, c = 0, d = 0;
  f.f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
  f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
  // GCC 12's __builtin_cpu_supports does not know AMX: read leaf 7, sub-leaf 0, EDX directly.
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.amx_bf16 = (d >> 22) & 1u;
    f.amx_tile = (d >> 24) & 1u;
  }
  f.amx_usable = f.amx_tile && f.amx_bf16 && f.avx512_bf16 && os_grants_amx();
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

std::string cpu_features_string() {
  const CpuFeatures& f = cpu_features();
  std::string s;
  auto add = [&s](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.f16c, "f16c");
  add(f.avx512, "avx512");
  add(f.avx512_bf16, "avx512bf16");
  add(f.avx512_vnni, "avx512vnni");
  add(f.amx_tile, "amx-tile");
  add(f.amx_bf16, "amx-bf16");
  if (f.amx_tile && f.amx_bf16) add(true, f.amx_usable ? "(amx usable)" : "(amx not granted)");
  return s.empty() ? "baseline x86-64" : s;
}

}  // namespace moe
