// Micro-benchmark of one kernel tier's matrix products with cache-resident data: ns per 32 weights
// times one activation row, for one activation row (decode) and four (a prompt's tile), best of 7.
// Build against a core library and run (compare two builds by building this twice):
//   g++ -O2 -std=c++17 -Icpp/src bench/kernel_micro.cpp build/dev-cmake/libtova_core.a -lpthread -o /tmp/km
//   /tmp/km [scalar|avx2|avx512|neon|neon_dot]     (default avx2)
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "kernel_bench.h"
#include "quant.h"

using namespace tova;

int main(int argc, char** argv) {
  const CpuTier tier = kernel_bench::tier_arg(argc, argv, 1);
  std::mt19937 rng(1);
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K,
                     GgmlType::Q5_K, GgmlType::Q6_K}) {
    const int64_t n = 1536;
    const int m = 64;
    const TypeTraits& tt = type_traits(t);
    const size_t xs = row_bytes(t, n), ys = row_bytes(tt.vec_dot_type, n);
    const std::vector<uint8_t> x = kernel_bench::random_bytes(xs * m, rng);
    std::vector<float> yf(static_cast<size_t>(n) * 4);
    for (auto& v : yf) v = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
    const CpuKernels& k = tier_kernels(tier, static_cast<uint32_t>(t));
    const CpuKernels& ka = tier_kernels(tier, static_cast<uint32_t>(tt.vec_dot_type));
    std::vector<uint8_t> y(ys * 4);
    for (int r = 0; r < 4; ++r) ka.quantize(yf.data() + r * n, y.data() + r * ys, n);
    std::vector<float> out(static_cast<size_t>(m) * 4);
    for (int nr : {1, 4}) {
      double best = 1e9;
      for (int rep = 0; rep < 7; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int it = 0; it < 200; ++it) k.gemm(n, x.data(), xs, m, y.data(), ys, nr, out.data(), m);
        const double s = kernel_bench::seconds_since(t0);
        best = s < best ? s : best;
      }
      std::printf("%-5s %s rows=%d  %.2f ns\n", tier_name(tier), tt.name, nr, best * 1e9 / (200.0 * m * nr * n / 32));
    }
  }
  return 0;
}
