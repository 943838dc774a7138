// What the kernel benchmarks share (kernel_micro.cpp, kernel_stream.cpp, kernel_ab.cpp): the
// tier argument, random weight bytes, a timer and a plain read of memory to compare against.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/kernels_cpu.h"

namespace kernel_bench {

// The tier named by argv[i] (default avx2); exits with a message if this CPU or build lacks it.
inline tova::CpuTier tier_arg(int argc, char** argv, int i) {
  tova::CpuTier tier = tova::CpuTier::Avx2;
  for (tova::CpuTier t : tova::kCpuTiers)
    if (argc > i && std::strcmp(argv[i], tova::tier_name(t)) == 0) tier = t;
  if (!tova::tier_supported(tier)) {
    std::fprintf(stderr, "tier %s: not supported by this CPU or build\n", tova::tier_name(tier));
    std::exit(1);
  }
  return tier;
}

// Random bytes as weights: the timing does not depend on the values (some f16 scales are then
// NaN or infinite, which costs nothing extra).
inline std::vector<uint8_t> random_bytes(size_t n, std::mt19937& rng) {
  std::vector<uint8_t> x(n);
  for (size_t i = 0; i + 4 <= n; i += 4) {
    const uint32_t v = rng();
    std::memcpy(&x[i], &v, 4);
  }
  return x;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Reads every byte once (vector loads and nothing else where the build has AVX2); returns
// something that depends on all of them.
inline uint64_t plain_read(const uint8_t* p, size_t bytes) {
#if defined(__AVX2__)
  __m256i s = _mm256_setzero_si256();
  for (size_t i = 0; i + 128 <= bytes; i += 128)
    for (size_t j = 0; j < 128; j += 32)
      s = _mm256_xor_si256(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + j)));
  return static_cast<uint64_t>(_mm256_extract_epi64(s, 0) ^ _mm256_extract_epi64(s, 3));
#else
  uint64_t s = 0, v;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    std::memcpy(&v, p + i, 8);
    s ^= v;
  }
  return s;
#endif
}

}  // namespace kernel_bench
