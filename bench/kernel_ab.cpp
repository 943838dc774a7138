// Two versions of the x86 k-quant kernels in one process: decode's matrix product (one
// activation row, weights streamed from memory as in bench/kernel_stream.cpp) by the old and the
// new copy, alternated pass by pass, best of N passes each, beside a plain read of the same
// bytes. On a shared machine whose memory bandwidth moves from minute to minute this is the
// comparison that holds; kernel_ab.sh builds it (the old sources' kernels renamed into namespace
// tova_old, the new ones' into tova_new) and says how to run it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernel_bench.h"
#include "quant.h"
#include "quant_blocks.h"

using GemmFn = void (*)(int64_t, const void*, size_t, int64_t, const void*, size_t, int64_t, float*, size_t);
using RowsFn = void (*)(int64_t, const void*, const void*, size_t, int, float*);

#define TOVA_AB_DECLARE(ns)                                                                                   \
  namespace ns {                                                                                              \
  namespace avx512 {                                                                                          \
  void gemm_q4_K_q8_K(int64_t, const void*, size_t, int64_t, const void*, size_t, int64_t, float*, size_t);   \
  void gemm_q5_K_q8_K(int64_t, const void*, size_t, int64_t, const void*, size_t, int64_t, float*, size_t);   \
  void gemm_q6_K_q8_K(int64_t, const void*, size_t, int64_t, const void*, size_t, int64_t, float*, size_t);   \
  }                                                                                                           \
  namespace avx2 {                                                                                            \
  void vec_dot_rows_q4_K_q8_K(int64_t, const void*, const void*, size_t, int, float*);                        \
  void vec_dot_rows_q5_K_q8_K(int64_t, const void*, const void*, size_t, int, float*);                        \
  void vec_dot_rows_q6_K_q8_K(int64_t, const void*, const void*, size_t, int, float*);                        \
  }                                                                                                           \
  }
TOVA_AB_DECLARE(tova_old)
TOVA_AB_DECLARE(tova_new)

namespace {

using namespace tova;

// The AVX2 tier's matrix product for one activation row: its one-row kernel weight row by weight
// row (what kernels_cpu.cpp's gemm_by_rows does).
template <RowsFn Rows>
void by_rows(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t, int64_t, float* out, size_t) {
  for (int64_t r = 0; r < m; ++r) Rows(n, static_cast<const uint8_t*>(x) + r * xs, y, 0, 1, out + r);
}

struct Pair {
  GemmFn old_fn, new_fn;
};

Pair kernels(bool avx512, GgmlType t) {
  if (avx512) {
    if (t == GgmlType::Q4_K) return {tova_old::avx512::gemm_q4_K_q8_K, tova_new::avx512::gemm_q4_K_q8_K};
    if (t == GgmlType::Q5_K) return {tova_old::avx512::gemm_q5_K_q8_K, tova_new::avx512::gemm_q5_K_q8_K};
    return {tova_old::avx512::gemm_q6_K_q8_K, tova_new::avx512::gemm_q6_K_q8_K};
  }
  if (t == GgmlType::Q4_K) return {by_rows<tova_old::avx2::vec_dot_rows_q4_K_q8_K>, by_rows<tova_new::avx2::vec_dot_rows_q4_K_q8_K>};
  if (t == GgmlType::Q5_K) return {by_rows<tova_old::avx2::vec_dot_rows_q5_K_q8_K>, by_rows<tova_new::avx2::vec_dot_rows_q5_K_q8_K>};
  return {by_rows<tova_old::avx2::vec_dot_rows_q6_K_q8_K>, by_rows<tova_new::avx2::vec_dot_rows_q6_K_q8_K>};
}

}  // namespace

int main(int argc, char** argv) {
  const bool avx512 = !(argc > 1 && std::strcmp(argv[1], "avx2") == 0);
  GgmlType type = GgmlType::Q4_K;
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K})
    if (argc > 2 && std::strcmp(argv[2], type_traits(t).name) == 0) type = t;
  const int64_t n = argc > 3 ? std::atoll(argv[3]) : 1536;
  const size_t mib = argc > 4 ? static_cast<size_t>(std::atoll(argv[4])) : 192;
  const int passes = argc > 5 ? std::atoi(argv[5]) : 6;
  if (!tier_supported(avx512 ? CpuTier::Avx512 : CpuTier::Avx2)) {
    std::fprintf(stderr, "tier %s: not supported by this CPU or build\n", avx512 ? "avx512" : "avx2");
    return 1;
  }
  if (n <= 0 || n % kQK_K != 0 || mib == 0 || passes <= 0) {
    std::fprintf(stderr, "usage: kernel_ab [avx512|avx2] [Q4_K|Q5_K|Q6_K] [n: a multiple of 256] [MiB] [passes]\n");
    return 1;
  }
  const TypeTraits& tt = type_traits(type);
  const size_t xs = row_bytes(type, n), ys = row_bytes(tt.vec_dot_type, n);
  const int64_t m = static_cast<int64_t>((mib << 20) / xs);
  std::mt19937 rng(1);
  std::vector<uint8_t> x = kernel_bench::random_bytes(xs * static_cast<size_t>(m), rng);
  // Finite f16 scales (d, and dmin where there is one), so that the two outputs can be compared.
  const size_t d_at = type == GgmlType::Q6_K ? offsetof(BlockQ6_K, d) : 0;
  for (size_t b = 0; b < x.size() / tt.type_size; ++b) {
    const uint16_t h = static_cast<uint16_t>(0x2000 | (rng() & 0x3FF));
    std::memcpy(&x[b * tt.type_size + d_at], &h, 2);
    if (type != GgmlType::Q6_K) std::memcpy(&x[b * tt.type_size + 2], &h, 2);
  }
  std::vector<float> yf(static_cast<size_t>(n));
  for (auto& v : yf) v = static_cast<float>(rng() % 2000) / 1000.0f - 1.0f;
  std::vector<uint8_t> y(ys);
  tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(tt.vec_dot_type)).quantize(yf.data(), y.data(), n);
  const Pair k = kernels(avx512, type);
  std::vector<float> out_old(static_cast<size_t>(m)), out_new(static_cast<size_t>(m));
  double best_old = 1e9, best_new = 1e9, best_read = 1e9;
  volatile uint64_t sink = 0;  // keeps the plain read
  for (int p = 0; p < passes; ++p) {
    auto t0 = std::chrono::steady_clock::now();
    k.old_fn(n, x.data(), xs, m, y.data(), ys, 1, out_old.data(), static_cast<size_t>(m));
    best_old = std::min(best_old, kernel_bench::seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    k.new_fn(n, x.data(), xs, m, y.data(), ys, 1, out_new.data(), static_cast<size_t>(m));
    best_new = std::min(best_new, kernel_bench::seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    sink = sink ^ kernel_bench::plain_read(x.data(), x.size());
    best_read = std::min(best_read, kernel_bench::seconds_since(t0));
  }
  // How far apart the two are, relative to the size of the products' terms.
  double worst = 0;
  for (int64_t r = 0; r < m; ++r) {
    const double scale = 1.0 + std::fabs(out_old[r]);
    worst = std::max(worst, std::fabs(static_cast<double>(out_new[r]) - out_old[r]) / scale);
  }
  const double gb = static_cast<double>(x.size()) / 1e9;
  std::printf("%s %s n=%lld: old %.2f GB/s, new %.2f GB/s, new/old %.3f, plain read %.2f GB/s, max |new - old| / (1 + |old|) %.1e\n",
              avx512 ? "avx512" : "avx2", tt.name, static_cast<long long>(n), gb / best_old, gb / best_new,
              best_old / best_new, gb / best_read, worst);
  return 0;
}
