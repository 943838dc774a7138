#include "cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // Linux's arch/arm64 hwcap bit, for older C library headers
#endif
#endif
#if defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace tova {

namespace {

#if defined(__x86_64__) || defined(__i386__)
// The OS saves the register state an extension needs (XCR0, read by xgetbv): without it the
// instructions fault even on a CPU that has them.
unsigned long long xcr0() {
  unsigned int lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  // CPUID bits (Intel SDM vol. 2A, CPUID): leaf 1 ECX and leaf 7 EBX / ECX.
  unsigned int a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  if (!osxsave) return f;
  const unsigned long long xcr = xcr0();
  const bool ymm_state = (xcr & 0x6) == 0x6;     // SSE and AVX registers
  const bool zmm_state = (xcr & 0xE6) == 0xE6;   // plus opmask and the upper ZMM registers
  f.avx = ymm_state && ((c >> 28) & 1);
  f.fma = f.avx && ((c >> 12) & 1);
  f.f16c = f.avx && ((c >> 29) & 1);
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = f.avx && ((b >> 5) & 1);
    f.avx512f = zmm_state && ((b >> 16) & 1);
    f.avx512dq = f.avx512f && ((b >> 17) & 1);
    f.avx512bw = f.avx512f && ((b >> 30) & 1);
    f.avx512vl = f.avx512f && ((b >> 31) & 1);
    f.avx512vnni = f.avx512f && ((c >> 11) & 1);
  }
#endif
#if defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is part of the AArch64 base ABI
#if defined(__linux__)
  f.dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
  // (Every Apple Silicon CPU has it; macOS before 12 has no name for it.)
  int has = 1;
  size_t size = sizeof(has);
  if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &has, &size, nullptr, 0) != 0) has = 1;
  f.dotprod = has != 0;
#endif
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace tova
