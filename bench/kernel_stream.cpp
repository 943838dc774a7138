// Decode's matrix product streamed from memory: one kernel tier's product of a weight matrix too
// large for any cache (192 MiB by default) with one activation row, as GB/s of weights read,
// beside a plain read of the same bytes (vector loads and nothing else), best of N passes each,
// alternated. Cache-resident speed is kernel_micro.cpp's; this one adds what the memory system
// and the prefetchers make of a kernel's access pattern (the rows of short rows prefetched ahead,
// quant_x86.h). Build against a core library as kernel_micro.cpp says:
//   g++ -O2 -std=c++17 -mavx2 -Icpp/src bench/kernel_stream.cpp build/dev-cmake/libtova_core.a -lpthread -o /tmp/ks
//   /tmp/ks [tier] [type] [n] [MiB] [passes]      (default avx2 Q4_K 1536 192 10)
// (-mavx2 for the plain read's loads; on AArch64 leave it out: the plain read is then scalar.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/kernels_cpu.h"
#include "quant.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

using namespace tova;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Reads every byte once; returns something that depends on all of them.
uint64_t plain_read(const uint8_t* p, size_t bytes) {
#if defined(__AVX2__)
  __m256i s = _mm256_setzero_si256();
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    s = _mm256_xor_si256(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    s = _mm256_xor_si256(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    s = _mm256_xor_si256(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    s = _mm256_xor_si256(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
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

}  // namespace

int main(int argc, char** argv) {
  CpuTier tier = CpuTier::Avx2;
  for (CpuTier t : kCpuTiers)
    if (argc > 1 && std::strcmp(argv[1], tier_name(t)) == 0) tier = t;
  if (!tier_supported(tier)) {
    std::fprintf(stderr, "tier %s: not supported by this CPU or build\n", tier_name(tier));
    return 1;
  }
  GgmlType type = GgmlType::Q4_K;
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K,
                     GgmlType::Q6_K})
    if (argc > 2 && std::strcmp(argv[2], type_traits(t).name) == 0) type = t;
  const int64_t n = argc > 3 ? std::atoll(argv[3]) : 1536;
  const size_t mib = argc > 4 ? static_cast<size_t>(std::atoll(argv[4])) : 192;
  const int passes = argc > 5 ? std::atoi(argv[5]) : 10;
  const TypeTraits& tt = type_traits(type);
  if (n <= 0 || n % tt.block_size != 0 || mib == 0 || passes <= 0) {
    std::fprintf(stderr, "n must be a positive multiple of %s's block (%d); MiB and passes positive\n", tt.name,
                 static_cast<int>(tt.block_size));
    return 1;
  }
  const size_t xs = row_bytes(type, n), ys = row_bytes(tt.vec_dot_type, n);
  const int64_t m = static_cast<int64_t>((mib << 20) / xs);
  std::vector<uint8_t> x(xs * static_cast<size_t>(m));
  // Random bytes as weights (see kernel_micro.cpp: the timing does not depend on the values).
  std::mt19937 rng(1);
  for (size_t i = 0; i + 4 <= x.size(); i += 4) {
    const uint32_t v = rng();
    std::memcpy(&x[i], &v, 4);
  }
  std::vector<float> yf(static_cast<size_t>(n));
  for (auto& v : yf) v = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
  const CpuKernels& k = tier_kernels(tier, static_cast<uint32_t>(type));
  const CpuKernels& ka = tier_kernels(tier, static_cast<uint32_t>(tt.vec_dot_type));
  std::vector<uint8_t> y(ys);
  ka.quantize(yf.data(), y.data(), n);
  std::vector<float> out(static_cast<size_t>(m));
  double best_kernel = 1e9, best_read = 1e9;
  volatile uint64_t sink = 0;  // keeps the plain read
  for (int p = 0; p < passes; ++p) {
    auto t0 = std::chrono::steady_clock::now();
    k.gemm(n, x.data(), xs, m, y.data(), ys, 1, out.data(), static_cast<size_t>(m));
    best_kernel = std::min(best_kernel, seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    sink = sink ^ plain_read(x.data(), x.size());
    best_read = std::min(best_read, seconds_since(t0));
  }
  std::printf("%-6s %s n=%lld rows of %zu bytes: kernel %.2f GB/s, plain read %.2f GB/s (%.0f %%)\n", tier_name(tier),
              tt.name, static_cast<long long>(n), xs, x.size() / best_kernel / 1e9, x.size() / best_read / 1e9,
              100.0 * best_read / best_kernel);
  return 0;
}
