// Small NEON building blocks shared by quant_neon.cpp and quant_neon_k.cpp (AArch64 only).
// Those files are compiled twice: for the base ISA (namespace neon) and with the dot-product
// extension, -march=armv8.2-a+dotprod (namespace neon_dot, TOVA_NEON_DOTPROD set). Everything
// here is `static` (see quant_kernels.h): a shared inline function could be merged by the linker
// into the dot-product copy, which the base tier would then call on a CPU without it.
#pragma once

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#if defined(TOVA_NEON_DOTPROD)
#define TOVA_NEON_NS neon_dot
#else
#define TOVA_NEON_NS neon
#endif

namespace tova {
namespace TOVA_NEON_NS {

static inline float half_to_float(uint16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// acc + the sums of products of a and b, four adjacent bytes per int32 lane (exact: the
// products of two int8 fit int16, and a lane gains at most 4 * 128 * 128).
static inline int32x4_t dot_s8(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(TOVA_NEON_DOTPROD)
  return vdotq_s32(acc, a, b);
#else
  const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
  const int16x8_t hi = vmull_high_s8(a, b);
  return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}

// The sum of 32 products of int8 quants: x as two vectors (elements 0..15, 16..31), y in memory.
static inline int dot32(int8x16_t x0, int8x16_t x1, const int8_t* y) {
  const int32x4_t s = dot_s8(dot_s8(vdupq_n_s32(0), x0, vld1q_s8(y)), x1, vld1q_s8(y + 16));
  return vaddvq_s32(s);
}

// 16 bytes -> two vectors of nibbles: the low nibbles (elements 0..15), the high ones (16..31).
static inline void unpack_nibbles(const uint8_t* qs, int8x16_t* lo, int8x16_t* hi) {
  const uint8x16_t b = vld1q_u8(qs);
  *lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
  *hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
}

// 0x10 in byte k of the result where bit k of the 16 bits at `bits` is set (k = 0..15).
static inline uint8x16_t bits_to_0x10(const uint8_t* bits) {
  const uint8x16_t rep = vcombine_u8(vdup_n_u8(bits[0]), vdup_n_u8(bits[1]));
  static const uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  return vandq_u8(vtstq_u8(rep, vld1q_u8(kBit)), vdupq_n_u8(0x10));
}

}  // namespace TOVA_NEON_NS
}  // namespace tova
