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

  // Everything the kernels in quant_avx2*.cpp need.
  bool has_avx2_kernels() const { return avx2 && fma && f16c; }
};

// Detected on first call; later calls return the same object.
const CpuFeatures& cpu_features();

}  // namespace tova
