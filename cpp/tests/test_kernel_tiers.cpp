// The CPU kernel tiers against the portable kernels, in C++ so that it also runs where the Python
// suite cannot (an AArch64 build under qemu-user in .ci/run):
// - every SIMD tier this CPU runs: vec_dot of every quantized weight format within float
//   reassociation of the scalar tier's (the NEON tiers: bit for bit, as they promise, for the
//   finite data here; a NaN's payload may differ), and its gemm equal to its vec_dot for every
//   pair of rows, for 1, 2, 3, 7 and 9 activation rows; rows of 1, 3, 9 and 520 blocks (the
//   AVX2 32-quant products keep an activation group's scales on the stack up to 512 blocks);
// - the float dot products of every tier within rounding of a double-precision sum (the NEON
//   tiers: bit for bit the scalar tier's);
// - the active tier's gathered attention helpers against a double-precision sum (the NEON tiers:
//   bit for bit the scalar tier's), the helpers for several query heads bit for bit the one-head
//   ones (run the binary under TOVA_CPU_KERNELS=... to check each tier's).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check.h"
#include "cpu/kernels_cpu.h"
#include "cpu/quant_kernels.h"
#include "quant.h"
#include "quant_blocks.h"

using namespace tova;

namespace {

struct Rng {
  uint32_t s = 2024;
  uint32_t next() {
    s = s * 1664525u + 1013904223u;
    return s >> 8;
  }
  float uniform() { return static_cast<float>(next() % 20001) / 10000.0f - 1.0f; }  // [-1, 1]
  uint16_t small_half() { return fp32_to_fp16(uniform() / 16.0f); }
};

struct Format {
  GgmlType type;
  std::vector<size_t> half_fields;  // offsets of the float16 scales in a block (random bytes elsewhere)
};

bool tier_is_exact(CpuTier t) { return t == CpuTier::Neon || t == CpuTier::NeonDot; }

// m random weight rows of n values.
std::vector<uint8_t> random_rows(Rng& rng, const Format& f, int64_t n, int m) {
  const TypeTraits& t = type_traits(f.type);
  std::vector<uint8_t> raw(row_bytes(f.type, n) * static_cast<size_t>(m));
  for (auto& b : raw) b = static_cast<uint8_t>(rng.next());
  for (size_t blk = 0; blk < raw.size() / t.type_size; ++blk)
    for (size_t off : f.half_fields) {
      const uint16_t h = rng.small_half();
      std::memcpy(raw.data() + blk * t.type_size + off, &h, 2);
    }
  return raw;
}

// sum |x_i y_i| over the decoded values: the scale of what reassociating the sum may change.
double abs_dot(GgmlType wt, const uint8_t* x, GgmlType at, const uint8_t* y, int64_t n) {
  std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
  tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(wt)).dequantize(x, a.data(), n);
  tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(at)).dequantize(y, b.data(), n);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::fabs(static_cast<double>(a[i]) * b[i]);
  return s;
}

void check_quantized_dots() {
  const std::vector<Format> formats = {
      {GgmlType::Q4_0, {offsetof(BlockQ4_0, d)}},
      {GgmlType::Q4_1, {offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m)}},
      {GgmlType::Q5_0, {offsetof(BlockQ5_0, d)}},
      {GgmlType::Q5_1, {offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)}},
      {GgmlType::Q8_0, {offsetof(BlockQ8_0, d)}},
      {GgmlType::Q2_K, {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)}},
      {GgmlType::Q3_K, {offsetof(BlockQ3_K, d)}},
      {GgmlType::Q4_K, {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)}},
      {GgmlType::Q5_K, {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)}},
      {GgmlType::Q6_K, {offsetof(BlockQ6_K, d)}},
  };
  Rng rng;
  for (const Format& f : formats) {
    const TypeTraits& t = type_traits(f.type);
    const GgmlType act = t.vec_dot_type;
    const CpuKernels& portable = tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(f.type));
    for (int64_t blocks : {1, 3, 9, 520}) {
      const int64_t n = t.block_size * blocks;
      // Weight rows (11: decode's tiles of three far-apart rows, rows 0, 3, 6 to 2, 5, 8, then
      // rows 9 and 10 alone; quant_avx512_util.h); activation rows.
      const int m = 11, nr = 9;
      const size_t xs = row_bytes(f.type, n), ys = row_bytes(act, n);
      const std::vector<uint8_t> x = random_rows(rng, f, n, m);
      std::vector<float> yf(static_cast<size_t>(n * nr));
      for (float& v : yf) v = rng.uniform();
      std::vector<uint8_t> y(ys * nr);
      for (int k = 0; k < nr; ++k)
        tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(act)).quantize(yf.data() + k * n, y.data() + k * ys, n);
      for (CpuTier tier : kCpuTiers) {
        if (!tier_supported(tier)) continue;
        const CpuKernels& kt = tier_kernels(tier, static_cast<uint32_t>(f.type));
        bool close = true, gemm_same = true;
        std::vector<float> dots(static_cast<size_t>(m * nr));
        for (int k = 0; k < nr; ++k)
          for (int r = 0; r < m; ++r) {
            const uint8_t* xr = x.data() + r * xs;
            const uint8_t* yk = y.data() + k * ys;
            const float want = portable.vec_dot(n, xr, yk), got = kt.vec_dot(n, xr, yk);
            if (tier_is_exact(tier) || tier == CpuTier::Scalar)
              close &= std::memcmp(&want, &got, sizeof got) == 0;
            else
              close &= std::fabs(static_cast<double>(got) - want) <= 1e-5 * abs_dot(f.type, xr, act, yk, n) + 1e-30;
            dots[static_cast<size_t>(k * m + r)] = got;
          }
        for (int rows : {1, 2, 3, 7, nr}) {  // every remainder of a group of four activation rows
          std::vector<float> out(static_cast<size_t>(m * rows));
          kt.gemm(n, x.data(), xs, m, y.data(), ys, rows, out.data(), static_cast<size_t>(m));
          gemm_same &= std::memcmp(out.data(), dots.data(), out.size() * sizeof(float)) == 0;
        }
        if (!close) std::printf("  %s vec_dot of %s (%lld values) differs from the scalar tier's\n", tier_name(tier),
                                t.name, static_cast<long long>(n));
        if (!gemm_same) std::printf("  %s gemm of %s differs from its vec_dot\n", tier_name(tier), t.name);
        CHECK(close);
        CHECK(gemm_same);
      }
    }
  }
}

void check_float_dots() {
  Rng rng;
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    for (int64_t n : {1, 7, 8, 15, 16, 37, 300}) {
      std::vector<float> xf(static_cast<size_t>(n)), y(static_cast<size_t>(n));
      for (float& v : xf) v = rng.uniform();
      for (float& v : y) v = rng.uniform();
      std::vector<uint8_t> x(row_bytes(type, n) + 1);  // +1: read at an odd address too
      tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(type)).quantize(xf.data(), x.data() + 1, n);
      std::vector<float> xd(static_cast<size_t>(n));
      tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(type)).dequantize(x.data() + 1, xd.data(), n);
      double want = 0.0, scale = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        want += static_cast<double>(xd[i]) * y[i];
        scale += std::fabs(static_cast<double>(xd[i]) * y[i]);
      }
      for (CpuTier tier : kCpuTiers) {
        if (!tier_supported(tier)) continue;
        const float got = tier_kernels(tier, static_cast<uint32_t>(type)).vec_dot_f32(n, x.data() + 1, y.data());
        const float portable =
            tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(type)).vec_dot_f32(n, x.data() + 1, y.data());
        const bool ok = std::fabs(got - want) <= 1e-5 * scale + 1e-30 &&
                        (!tier_is_exact(tier) || std::memcmp(&got, &portable, sizeof got) == 0);
        if (!ok) std::printf("  %s float dot of %s, n = %lld: %g, want %g\n", tier_name(tier), type_traits(type).name,
                             static_cast<long long>(n), got, want);
        CHECK(ok);
      }
    }
  }
}

// The active tier's gathered helpers: rows idx[j] of a store (f32 and f16), any d.
void check_gathered_helpers() {
  Rng rng;
  for (int d : {1, 7, 64, 67}) {
    const int rows = 12, n = 5, nh = 3;
    const size_t stride = static_cast<size_t>(d) + 3;
    std::vector<float> store(rows * stride);
    for (float& v : store) v = rng.uniform();
    std::vector<uint16_t> store16(store.size());
    for (size_t i = 0; i < store.size(); ++i) store16[i] = fp32_to_fp16(store[i]);
    const int32_t idx[n] = {7, 0, 11, 3, 7};
    std::vector<float> q(static_cast<size_t>(nh * d)), p(static_cast<size_t>(nh * n));
    for (float& v : q) v = rng.uniform();
    for (float& v : p) v = rng.uniform();
    const float scale = 0.125f;
    for (bool half : {false, true}) {
      auto value = [&](int row, int i) {
        const size_t at = static_cast<size_t>(row) * stride + static_cast<size_t>(i);
        return half ? static_cast<double>(fp16_to_fp32(store16[at])) : static_cast<double>(store[at]);
      };
      std::vector<float> scores(static_cast<size_t>(nh * n)), heads(scores.size());
      std::vector<float> out(static_cast<size_t>(nh * d), 0.5f), out_heads(out.size(), 0.5f);
      for (int h = 0; h < nh; ++h) {
        if (half) {
          gather_dot_f16(store16.data(), stride, idx, n, q.data() + h * d, d, scale, scores.data() + h * n);
          gather_axpy_f16(store16.data(), stride, idx, n, p.data() + h * n, d, out.data() + h * d);
        } else {
          gather_dot_f32(store.data(), stride, idx, n, q.data() + h * d, d, scale, scores.data() + h * n);
          gather_axpy_f32(store.data(), stride, idx, n, p.data() + h * n, d, out.data() + h * d);
        }
      }
      if (half) {
        gather_dot_heads_f16(store16.data(), stride, idx, n, q.data(), d, nh, d, scale, heads.data(), n);
        gather_axpy_heads_f16(store16.data(), stride, idx, n, p.data(), n, nh, d, out_heads.data(), d);
      } else {
        gather_dot_heads_f32(store.data(), stride, idx, n, q.data(), d, nh, d, scale, heads.data(), n);
        gather_axpy_heads_f32(store.data(), stride, idx, n, p.data(), n, nh, d, out_heads.data(), d);
      }
      bool close = true;
      for (int h = 0; h < nh; ++h) {
        for (int j = 0; j < n; ++j) {
          double want = 0.0, mag = 0.0;
          for (int i = 0; i < d; ++i) {
            want += value(idx[j], i) * q[static_cast<size_t>(h * d + i)];
            mag += std::fabs(value(idx[j], i) * q[static_cast<size_t>(h * d + i)]);
          }
          close &= std::fabs(scores[static_cast<size_t>(h * n + j)] - want * scale) <= 1e-5 * mag * scale + 1e-30;
        }
        for (int i = 0; i < d; ++i) {
          double want = 0.5, mag = 0.5;
          for (int j = 0; j < n; ++j) {
            want += p[static_cast<size_t>(h * n + j)] * value(idx[j], i);
            mag += std::fabs(p[static_cast<size_t>(h * n + j)] * value(idx[j], i));
          }
          close &= std::fabs(out[static_cast<size_t>(h * d + i)] - want) <= 1e-5 * mag;
        }
      }
      const bool heads_same = std::memcmp(scores.data(), heads.data(), scores.size() * sizeof(float)) == 0 &&
                              std::memcmp(out.data(), out_heads.data(), out.size() * sizeof(float)) == 0;
      if (tier_is_exact(active_tier())) {  // the scalar tier's own helpers, bit for bit
        using S = GatherByRows<scalar::vec_dot_f32_f32, scalar::vec_dot_f16_f32, scalar::axpy_f32, scalar::axpy_f16>;
        std::vector<float> s_scores(scores.size()), s_out(out.size(), 0.5f);
        if (half) {
          S::dot_heads(store16.data(), stride, idx, n, q.data(), d, nh, d, scale, s_scores.data(), n);
          S::axpy_heads(store16.data(), stride, idx, n, p.data(), n, nh, d, s_out.data(), d);
        } else {
          S::dot_heads(store.data(), stride, idx, n, q.data(), d, nh, d, scale, s_scores.data(), n);
          S::axpy_heads(store.data(), stride, idx, n, p.data(), n, nh, d, s_out.data(), d);
        }
        close &= std::memcmp(scores.data(), s_scores.data(), scores.size() * sizeof(float)) == 0 &&
                 std::memcmp(out.data(), s_out.data(), out.size() * sizeof(float)) == 0;
      }
      if (!close || !heads_same)
        std::printf("  %s gathered helpers (%s, d = %d): %s\n", kernel_isa(), half ? "f16" : "f32", d,
                    close ? "the heads' versions differ from the one-head ones" : "off the double sum or the scalar tier's");
      CHECK(close);
      CHECK(heads_same);
    }
  }
}

}  // namespace

void tova_test::test_kernel_tiers() {
  check_quantized_dots();
  check_float_dots();
  check_gathered_helpers();
}
