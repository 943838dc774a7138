// Decode's matrix product streamed from memory: one kernel tier's product of a weight matrix too
// large for any cache (192 MiB by default) with one activation row, as GB/s of weights read,
// beside a plain read of the same bytes (vector loads and nothing else), best of N passes each,
// alternated. Cache-resident speed is kernel_micro.cpp's; this one adds what the memory system
// and the prefetchers make of a kernel's access pattern (the AVX-512 Q4_K tile prefetches short
// rows, quant_avx512_util.h). Build against a core library as kernel_micro.cpp says:
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

#include "kernel_bench.h"
#include "quant.h"

using namespace tova;
using kernel_bench::seconds_since;

int main(int argc, char** argv) {
  const CpuTier tier = kernel_bench::tier_arg(argc, argv, 1);
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
  std::mt19937 rng(1);
  const std::vector<uint8_t> x = kernel_bench::random_bytes(xs * static_cast<size_t>(m), rng);
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
    sink = sink ^ kernel_bench::plain_read(x.data(), x.size());
    best_read = std::min(best_read, seconds_since(t0));
  }
  std::printf("%-6s %s n=%lld rows of %zu bytes: kernel %.2f GB/s, plain read %.2f GB/s (%.0f %%)\n", tier_name(tier),
              tt.name, static_cast<long long>(n), xs, x.size() / best_kernel / 1e9, x.size() / best_read / 1e9,
              100.0 * best_read / best_kernel);
  return 0;
}
