// NEON kernels (AArch64) of the k-quant dot products Q4_K, Q5_K and Q6_K against Q8_K activations,
// one weight row against 1..kMaxDotRows activation rows. Compiled twice, as quant_neon.cpp.
//
// Bit for bit the portable kernels' (quant_kquants.cpp): each super-block's integer sums are
// exact in any order (the widest, Q6_K's, stays below 2^28), and the float operations that
// follow are the portable ones in their order, never fused (-ffp-contract=off).
#include "quant_neon_util.h"

#include <type_traits>

#include "quant_kernels.h"

namespace tova {
namespace TOVA_NEON_NS {

namespace {

// sum over j of m[j] * (bsums[2j] + bsums[2j + 1]): a Q4_K / Q5_K block's minimum term, in 32 bits
// as the scalar kernel sums it (whatever the bsums hold).
inline int mins_dot_bsums(const uint8_t* mins, const int16_t* bsums) {
  const int32x4_t p0 = vpaddlq_s16(vld1q_s16(bsums)), p1 = vpaddlq_s16(vld1q_s16(bsums + 8));
  const uint16x8_t m = vmovl_u8(vld1_u8(mins));
  const int32x4_t m0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m)));
  const int32x4_t m1 = vreinterpretq_s32_u32(vmovl_high_u16(m));
  return vaddvq_s32(vmlaq_s32(vmulq_s32(p0, m0), p1, m1));
}

// Q4_K and Q5_K: sub-block j (32 quants) is nibble j % 2 of qs[32 (j / 2) ..], plus bit j of each
// qh byte as the fifth bit for Q5_K.
template <class Block, int R>
void rows_q45_K(int64_t n, const void* vx, const void* vy, size_t stride, float* out) {
  constexpr bool kFive = std::is_same_v<Block, BlockQ5_K>;
  const auto* x = static_cast<const Block*>(vx);
  const BlockQ8_K* y[R];
  for (int k = 0; k < R; ++k) y[k] = reinterpret_cast<const BlockQ8_K*>(static_cast<const uint8_t*>(vy) + k * stride);
  float sum[R] = {};
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    uint8_t sm[16];  // scales, then mins
    kquant_scales_mins(x[i].scales, sm);
    int32x4_t acc[R];
    for (int k = 0; k < R; ++k) acc[k] = vdupq_n_s32(0);
    for (int c = 0; c < 4; ++c) {
      int8x16_t q[4];  // sub-block 2c (elements 0..15, 16..31), then sub-block 2c + 1
      unpack_nibbles(x[i].qs + 32 * c, &q[0], &q[2]);
      unpack_nibbles(x[i].qs + 32 * c + 16, &q[1], &q[3]);
      if constexpr (kFive) {
        const uint8x16_t h0 = vld1q_u8(x[i].qh), h1 = vld1q_u8(x[i].qh + 16);
        const uint8x16_t b0 = vdupq_n_u8(static_cast<uint8_t>(1u << (2 * c)));
        const uint8x16_t b1 = vdupq_n_u8(static_cast<uint8_t>(2u << (2 * c)));
        const uint8x16_t v16 = vdupq_n_u8(0x10);
        q[0] = vorrq_s8(q[0], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h0, b0), v16)));
        q[1] = vorrq_s8(q[1], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h1, b0), v16)));
        q[2] = vorrq_s8(q[2], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h0, b1), v16)));
        q[3] = vorrq_s8(q[3], vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h1, b1), v16)));
      }
      for (int k = 0; k < R; ++k) {
        const int8_t* yq = y[k][i].qs + 64 * c;
        const int32x4_t s0 = dot_s8(dot_s8(vdupq_n_s32(0), q[0], vld1q_s8(yq)), q[1], vld1q_s8(yq + 16));
        const int32x4_t s1 = dot_s8(dot_s8(vdupq_n_s32(0), q[2], vld1q_s8(yq + 32)), q[3], vld1q_s8(yq + 48));
        acc[k] = vmlaq_n_s32(vmlaq_n_s32(acc[k], s0, sm[2 * c]), s1, sm[2 * c + 1]);
      }
    }
    const float d = half_to_float(x[i].d), dmin = half_to_float(x[i].dmin);
    for (int k = 0; k < R; ++k) {
      const int sumi = vaddvq_s32(acc[k]);
      const int summ = mins_dot_bsums(sm + 8, y[k][i].bsums);
      sum[k] += y[k][i].d * (d * static_cast<float>(sumi) - dmin * static_cast<float>(summ));
    }
  }
  for (int k = 0; k < R; ++k) out[k] = sum[k];
}

// Q6_K: element 128h + 32t + l has the low nibble t / 2 of ql[64h + 32 (t % 2) + l] and the high
// bits 2t..2t+1 of qh[32h + l], minus 32; each 16 elements share a signed scale.
template <int R>
void rows_q6_K(int64_t n, const void* vx, const void* vy, size_t stride, float* out) {
  const auto* x = static_cast<const BlockQ6_K*>(vx);
  const BlockQ8_K* y[R];
  for (int k = 0; k < R; ++k) y[k] = reinterpret_cast<const BlockQ8_K*>(static_cast<const uint8_t*>(vy) + k * stride);
  float sum[R] = {};
  const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x03);
  const int8x16_t v32 = vdupq_n_s8(32);
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int32x4_t acc[R];
    for (int k = 0; k < R; ++k) acc[k] = vdupq_n_s32(0);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = x[i].ql + 64 * h;
      const uint8_t* qh = x[i].qh + 32 * h;
      for (int t = 0; t < 4; ++t) {
        int8x16_t q[2];
        for (int u = 0; u < 2; ++u) {
          const uint8x16_t l = vld1q_u8(ql + 32 * (t % 2) + 16 * u);
          const uint8x16_t lo = t < 2 ? vandq_u8(l, m4) : vshrq_n_u8(l, 4);
          const uint8x16_t hb = vandq_u8(vshlq_u8(vld1q_u8(qh + 16 * u), vdupq_n_s8(static_cast<int8_t>(-2 * t))), m3);
          q[u] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hb, 4))), v32);
        }
        const int g = 8 * h + 2 * t;
        for (int k = 0; k < R; ++k) {
          const int8_t* yq = y[k][i].qs + 128 * h + 32 * t;
          const int32x4_t s0 = dot_s8(vdupq_n_s32(0), q[0], vld1q_s8(yq));
          const int32x4_t s1 = dot_s8(vdupq_n_s32(0), q[1], vld1q_s8(yq + 16));
          acc[k] = vmlaq_n_s32(vmlaq_n_s32(acc[k], s0, x[i].scales[g]), s1, x[i].scales[g + 1]);
        }
      }
    }
    const float d = half_to_float(x[i].d);
    for (int k = 0; k < R; ++k) sum[k] += y[k][i].d * d * static_cast<float>(vaddvq_s32(acc[k]));
  }
  for (int k = 0; k < R; ++k) out[k] = sum[k];
}

template <class Block>
void rows_q45(int64_t n, const void* x, const void* y, size_t stride, int nr, float* out) {
  by_row_count(nr, [&](auto r) { rows_q45_K<Block, decltype(r)::value>(n, x, y, stride, out); });
}

void rows_q6(int64_t n, const void* x, const void* y, size_t stride, int nr, float* out) {
  by_row_count(nr, [&](auto r) { rows_q6_K<decltype(r)::value>(n, x, y, stride, out); });
}

}  // namespace

float vec_dot_q4_K_q8_K(int64_t n, const void* x, const void* y) {
  float out;
  rows_q45_K<BlockQ4_K, 1>(n, x, y, 0, &out);
  return out;
}
float vec_dot_q5_K_q8_K(int64_t n, const void* x, const void* y) {
  float out;
  rows_q45_K<BlockQ5_K, 1>(n, x, y, 0, &out);
  return out;
}
float vec_dot_q6_K_q8_K(int64_t n, const void* x, const void* y) {
  float out;
  rows_q6_K<1>(n, x, y, 0, &out);
  return out;
}
void vec_dot_rows_q4_K_q8_K(int64_t n, const void* x, const void* y, size_t s, int r, float* o) {
  rows_q45<BlockQ4_K>(n, x, y, s, r, o);
}
void vec_dot_rows_q5_K_q8_K(int64_t n, const void* x, const void* y, size_t s, int r, float* o) {
  rows_q45<BlockQ5_K>(n, x, y, s, r, o);
}
void vec_dot_rows_q6_K_q8_K(int64_t n, const void* x, const void* y, size_t s, int r, float* o) {
  rows_q6(n, x, y, s, r, o);
}

}  // namespace TOVA_NEON_NS
}  // namespace tova
