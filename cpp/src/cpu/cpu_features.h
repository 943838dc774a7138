// Which instruction-set extensions this CPU (and OS) supports, detected once at run time.
// SIMD kernels are compiled with their own ISA flags and only called when these say so; the
// build never uses -march=native.
#pragma once

namespace tova {

struct CpuFeatures {
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512vnni = false;
  bool neon = false;     // AArch64 Advanced SIMD (always there on AArch64)
  bool dotprod = false;  // AArch64 SDOT / UDOT (Armv8.2 dot-product extension)

  // Everything the kernels in quant_avx2*.cpp need.
  bool has_avx2_kernels() const { return avx2 && fma && f16c; }
  // Everything the kernels in quant_avx512*.cpp need (they also use AVX2 and F16C instructions).
  bool has_avx512_kernels() const { return has_avx2_kernels() && avx512f && avx512bw && avx512vl && avx512dq && avx512vnni; }
};

// Detected on first call; later calls return the same object.
const CpuFeatures& cpu_features();

}  // namespace tova
