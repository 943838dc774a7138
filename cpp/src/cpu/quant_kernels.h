// Internal to the CPU kernels: the kernel functions shared between kernels_cpu.cpp (the CPU
// kernel table), the portable scalar files and the SIMD files, and small helpers they share.
// The block structs they read are in quant_blocks.h (layout, shared with other backends).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels_cpu.h"
#include "quant_blocks.h"

namespace tova {

// Helpers defined in this header are `static` on purpose: the SIMD files are compiled with
// other ISA flags, and an inline function with external linkage could be merged by the linker
// into an AVX2 copy that the portable path would then call on a CPU without AVX2.

// The codes (0..7) of values 8g .. 8g + 7 of a Q3_0 block, one per byte (value 8g + k in byte k):
// the low two bits from one shift of qs, the high bit of byte k from bit k of qh[g], moved to
// byte k by copying qh[g] into every byte, keeping bit k of byte k and carrying it to bit 0.
static inline uint64_t q3_0_codes(const BlockQ3_0& b, int g) {
  uint64_t low;
  std::memcpy(&low, b.qs, sizeof(low));
  const uint64_t h = ((((b.qh[g] * 0x0101010101010101ULL) & 0x8040201008040201ULL) + 0x7F7F7F7F7F7F7F7FULL) >> 7) &
                     0x0101010101010101ULL;
  return ((low >> (2 * g)) & 0x0303030303030303ULL) | (h << 2);
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block.
static inline void kquant_scale_min(const uint8_t* s, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// The 8 scales and 8 mins of a Q4_K / Q5_K block (6 bits each, as kquant_scale_min), unpacked
// four at a time from 32-bit words: out[0..7] the scales, out[8..15] the mins. (The x86 tiers
// do the same in a vector register: x86::kquant_scales_mins, quant_x86.h.)
static inline void kquant_scales_mins(const uint8_t* packed, uint8_t* out) {
  uint32_t u[3], w[4];
  std::memcpy(u, packed, 12);
  w[0] = u[0] & 0x3F3F3F3F;
  w[1] = (u[2] & 0x0F0F0F0F) | ((u[0] >> 2) & 0x30303030);
  w[2] = u[1] & 0x3F3F3F3F;
  w[3] = ((u[2] >> 4) & 0x0F0F0F0F) | ((u[1] >> 2) & 0x30303030);
  std::memcpy(out, w, 16);
}

// The 16 signed scales of a Q3_K block (already minus 32).
static inline void q3k_scales(const uint8_t* s, int8_t* out) {
  for (int i = 0; i < 16; ++i) {
    const int lo = (i < 8) ? (s[i] & 0xF) : (s[i - 8] >> 4);
    const int hi = (s[8 + (i % 4)] >> (2 * (i / 4))) & 3;
    out[i] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
}

// The order of the float dot products (F32, F16 and BF16 rows against float32, attention's
// scores), shared bit for bit by the scalar and NEON tiers: 16 running float sums, the product of
// value i rounded to float and added to sum i % 16 (never fused: the same on CPUs without FMA),
// then the 16 summed by reduce_dot_lanes. Any vector width that divides 16 follows it exactly
// (NEON: four vectors of four lanes).
constexpr int kDotLanes = 16;
static inline float reduce_dot_lanes(const float* a) {
  float r[4];
  for (int j = 0; j < 4; ++j) r[j] = (a[j] + a[4 + j]) + (a[8 + j] + a[12 + j]);
  return (r[0] + r[1]) + (r[2] + r[3]);
}

// Dot products of one row x with n_rows (1..kMaxDotRows) activation rows `stride` bytes apart,
// bit for bit vec_dot's (the AVX2 prompt kernels; kernels_cpu.cpp makes a GemmFn of them).
using VecDotRowsFn = void (*)(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out);
constexpr int kMaxDotRows = 4;

// Calls f(std::integral_constant<int, R>) for a row count nr of 1..kMaxDotRows (more: the most),
// so that a multi-row kernel of any tier keeps its R accumulators in registers.
template <class F>
static inline void by_row_count(int nr, F&& f) {
  static_assert(kMaxDotRows == 4, "by_row_count dispatches 1..4 rows");
  switch (nr) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

using ActMulFn = void (*)(float* gate, const float* up, int64_t n);
using SoftmaxFn = void (*)(float* s, int n);

// Signatures of the gathered attention helpers (kernels_cpu.h), for their dispatch.
using GatherDotF32Fn = void (*)(const float*, size_t, const int32_t*, int, const float*, int, float, float*);
using GatherDotF16Fn = void (*)(const uint16_t*, size_t, const int32_t*, int, const float*, int, float, float*);
using GatherAxpyF32Fn = void (*)(const float*, size_t, const int32_t*, int, const float*, int, float*);
using GatherAxpyF16Fn = void (*)(const uint16_t*, size_t, const int32_t*, int, const float*, int, float*);
// The same for nh query heads that share the rows (GQA): q, scores, p and out of head h at
// h * (its stride); every result equals the one-head helper's bit for bit.
using GatherDotHeadsF32Fn = void (*)(const float*, size_t, const int32_t*, int, const float*, size_t, int, int,
                                     float, float*, size_t);
using GatherDotHeadsF16Fn = void (*)(const uint16_t*, size_t, const int32_t*, int, const float*, size_t, int, int,
                                     float, float*, size_t);
using GatherAxpyHeadsF32Fn = void (*)(const float*, size_t, const int32_t*, int, const float*, size_t, int, int,
                                      float*, size_t);
using GatherAxpyHeadsF16Fn = void (*)(const uint16_t*, size_t, const int32_t*, int, const float*, size_t, int, int,
                                      float*, size_t);

using AxpyF32Fn = void (*)(float a, const float* x, float* y, int64_t n);
using AxpyF16Fn = void (*)(float a, const uint16_t* x, float* y, int64_t n);

// The gathered attention helpers made of a tier's one-row float kernels: row by row, head by head
// (the scalar and NEON tiers; the AVX tiers read each row once for several heads).
template <VecDotF32Fn DotF32, VecDotF32Fn DotF16, AxpyF32Fn AxpyF32, AxpyF16Fn AxpyF16>
struct GatherByRows {
  static void dot_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q, int d, float scale,
                      float* scores) {
    for (int j = 0; j < n; ++j) scores[j] = DotF32(d, base + idx[j] * stride, q) * scale;
  }
  static void dot_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q, int d,
                      float scale, float* scores) {
    for (int j = 0; j < n; ++j) scores[j] = DotF16(d, base + idx[j] * stride, q) * scale;
  }
  static void axpy_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p, int d,
                       float* out) {
    for (int j = 0; j < n; ++j) AxpyF32(p[j], base + idx[j] * stride, out, d);
  }
  static void axpy_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p, int d,
                       float* out) {
    for (int j = 0; j < n; ++j) AxpyF16(p[j], base + idx[j] * stride, out, d);
  }
  template <class T>
  static void dot_heads(const T* base, size_t stride, const int32_t* idx, int n, const float* q, size_t q_stride,
                        int nh, int d, float scale, float* scores, size_t s_stride) {
    for (int h = 0; h < nh; ++h) {
      if constexpr (std::is_same_v<T, float>)
        dot_f32(base, stride, idx, n, q + h * q_stride, d, scale, scores + h * s_stride);
      else
        dot_f16(base, stride, idx, n, q + h * q_stride, d, scale, scores + h * s_stride);
    }
  }
  template <class T>
  static void axpy_heads(const T* base, size_t stride, const int32_t* idx, int n, const float* p, size_t p_stride,
                         int nh, int d, float* out, size_t o_stride) {
    for (int h = 0; h < nh; ++h) {
      if constexpr (std::is_same_v<T, float>)
        axpy_f32(base, stride, idx, n, p + h * p_stride, d, out + h * o_stride);
      else
        axpy_f16(base, stride, idx, n, p + h * p_stride, d, out + h * o_stride);
    }
  }
};

// --- portable kernels (quant_float.cpp, quant_legacy.cpp, quant_kquants.cpp) -----------------
namespace scalar {

void dequantize_f32(const void* src, float* dst, int64_t n);
void dequantize_f16(const void* src, float* dst, int64_t n);
void dequantize_bf16(const void* src, float* dst, int64_t n);
void dequantize_f64(const void* src, float* dst, int64_t n);
void dequantize_i8(const void* src, float* dst, int64_t n);
void dequantize_i16(const void* src, float* dst, int64_t n);
void dequantize_i32(const void* src, float* dst, int64_t n);
void dequantize_i64(const void* src, float* dst, int64_t n);
void quantize_f32(const float* src, void* dst, int64_t n);
void quantize_f16(const float* src, void* dst, int64_t n);
void quantize_bf16(const float* src, void* dst, int64_t n);
float vec_dot_f32_f32(int64_t n, const void* x, const float* y);
float vec_dot_f16_f32(int64_t n, const void* x, const float* y);
float vec_dot_bf16_f32(int64_t n, const void* x, const float* y);
float vec_dot_f64_f32(int64_t n, const void* x, const float* y);
float vec_dot_i8_f32(int64_t n, const void* x, const float* y);
float vec_dot_i16_f32(int64_t n, const void* x, const float* y);
float vec_dot_i32_f32(int64_t n, const void* x, const float* y);
float vec_dot_i64_f32(int64_t n, const void* x, const float* y);
void axpy_f32(float a, const float* x, float* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);
void silu_mul(float* gate, const float* up, int64_t n);
void gelu_tanh_mul(float* gate, const float* up, int64_t n);
void softmax_f32(float* s, int n);

void dequantize_q3_0(const void* src, float* dst, int64_t n);  // tova's KV value format
void dequantize_q4_0(const void* src, float* dst, int64_t n);
void dequantize_q4_1(const void* src, float* dst, int64_t n);
void dequantize_q5_0(const void* src, float* dst, int64_t n);
void dequantize_q5_1(const void* src, float* dst, int64_t n);
void dequantize_q8_0(const void* src, float* dst, int64_t n);
void dequantize_q8_1(const void* src, float* dst, int64_t n);
void quantize_q3_0(const float* src, void* dst, int64_t n);
void quantize_q4_0(const float* src, void* dst, int64_t n);
void quantize_q4_1(const float* src, void* dst, int64_t n);
void quantize_q5_0(const float* src, void* dst, int64_t n);
void quantize_q5_1(const float* src, void* dst, int64_t n);
void quantize_q8_0(const float* src, void* dst, int64_t n);
void quantize_q8_1(const float* src, void* dst, int64_t n);
float vec_dot_q4_0_q8_0(int64_t n, const void* x, const void* y);
float vec_dot_q4_1_q8_1(int64_t n, const void* x, const void* y);
float vec_dot_q5_0_q8_0(int64_t n, const void* x, const void* y);
float vec_dot_q5_1_q8_1(int64_t n, const void* x, const void* y);
float vec_dot_q8_0_q8_0(int64_t n, const void* x, const void* y);
float vec_dot_q8_1_q8_0(int64_t n, const void* x, const void* y);

void dequantize_q2_K(const void* src, float* dst, int64_t n);
void dequantize_q3_K(const void* src, float* dst, int64_t n);
void dequantize_q4_K(const void* src, float* dst, int64_t n);
void dequantize_q5_K(const void* src, float* dst, int64_t n);
void dequantize_q6_K(const void* src, float* dst, int64_t n);
void dequantize_q8_K(const void* src, float* dst, int64_t n);
void quantize_q8_K(const float* src, void* dst, int64_t n);
float vec_dot_q2_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q3_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q4_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q5_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q6_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q8_K_q8_K(int64_t n, const void* x, const void* y);

// x (any type with a dequantizer) . float y, one block at a time through a stack buffer.
float vec_dot_dequant_f32(DequantizeFn dequantize, int64_t block_size, size_t type_size,
                          int64_t n, const void* x, const float* y);

}  // namespace scalar

// --- AVX2 + FMA + F16C kernels (quant_avx2.cpp, quant_avx2_k.cpp; x86-64 only) --------------
#if defined(TOVA_X86)
namespace avx2 {

float vec_dot_f32_f32(int64_t n, const void* x, const float* y);
float vec_dot_f16_f32(int64_t n, const void* x, const float* y);
float vec_dot_bf16_f32(int64_t n, const void* x, const float* y);
void axpy_f32(float a, const float* x, float* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);
void silu_mul(float* gate, const float* up, int64_t n);
void gelu_tanh_mul(float* gate, const float* up, int64_t n);
void softmax_f32(float* s, int n);
void gather_dot_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q, int d, float scale, float* scores);
void gather_dot_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q, int d, float scale, float* scores);
void gather_axpy_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p, int d, float* out);
void gather_axpy_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p, int d, float* out);
void gather_dot_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q, size_t q_stride,
                          int nh, int d, float scale, float* scores, size_t s_stride);
void gather_dot_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                          size_t q_stride, int nh, int d, float scale, float* scores, size_t s_stride);
void gather_axpy_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p, size_t p_stride,
                           int nh, int d, float* out, size_t o_stride);
void gather_axpy_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                           size_t p_stride, int nh, int d, float* out, size_t o_stride);
void quantize_f16(const float* src, void* dst, int64_t n);

void quantize_q8_0(const float* src, void* dst, int64_t n);
void quantize_q8_1(const float* src, void* dst, int64_t n);
float vec_dot_q4_0_q8_0(int64_t n, const void* x, const void* y);
float vec_dot_q4_1_q8_1(int64_t n, const void* x, const void* y);
float vec_dot_q5_0_q8_0(int64_t n, const void* x, const void* y);
float vec_dot_q5_1_q8_1(int64_t n, const void* x, const void* y);
float vec_dot_q8_0_q8_0(int64_t n, const void* x, const void* y);
// Their matrix products (GemmFn); each vec_dot above is the 1 x 1 product, equal bit for bit.
void gemm_q4_0_q8_0(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, float* out, size_t os);
void gemm_q4_1_q8_1(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, float* out, size_t os);
void gemm_q5_0_q8_0(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, float* out, size_t os);
void gemm_q5_1_q8_1(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, float* out, size_t os);
void gemm_q8_0_q8_0(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, float* out, size_t os);
float vec_dot_q4_0_f32(int64_t n, const void* x, const float* y);
float vec_dot_q8_0_f32(int64_t n, const void* x, const float* y);
// The dequantizers equal the portable ones bit for bit.
void dequantize_q4_0(const void* src, float* dst, int64_t n);
void dequantize_q4_1(const void* src, float* dst, int64_t n);
void dequantize_q5_0(const void* src, float* dst, int64_t n);
void dequantize_q5_1(const void* src, float* dst, int64_t n);
void dequantize_q8_0(const void* src, float* dst, int64_t n);
void dequantize_q3_0(const void* src, float* dst, int64_t n);
void dequantize_q4_K(const void* src, float* dst, int64_t n);
void dequantize_q5_K(const void* src, float* dst, int64_t n);
void dequantize_q6_K(const void* src, float* dst, int64_t n);

void quantize_q8_K(const float* src, void* dst, int64_t n);
float vec_dot_q2_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q3_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q4_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q5_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q6_K_q8_K(int64_t n, const void* x, const void* y);
float vec_dot_q8_K_q8_K(int64_t n, const void* x, const void* y);

// The same dot products against 1..kMaxDotRows activation rows (VecDotRowsFn).
void vec_dot_rows_q4_K_q8_K(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out);
void vec_dot_rows_q5_K_q8_K(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out);
void vec_dot_rows_q6_K_q8_K(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out);

}  // namespace avx2

// --- AVX-512 F/BW/VL/DQ + VNNI kernels (quant_avx512.cpp, quant_avx512_k.cpp) -----------------
// Each format's vec_dot is the 1 x 1 tile of its gemm (GemmFn), so the two agree bit for bit.
namespace avx512 {

#define TOVA_AVX512_DECL(name)                                                                  \
  float vec_dot_##name(int64_t n, const void* x, const void* y);                              \
  void gemm_##name(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys,  \
                   int64_t nr, float* out, size_t os);
TOVA_AVX512_DECL(q4_0_q8_0)
TOVA_AVX512_DECL(q5_0_q8_0)
TOVA_AVX512_DECL(q8_0_q8_0)
TOVA_AVX512_DECL(q4_1_q8_1)
TOVA_AVX512_DECL(q5_1_q8_1)
TOVA_AVX512_DECL(q4_K_q8_K)
TOVA_AVX512_DECL(q5_K_q8_K)
TOVA_AVX512_DECL(q6_K_q8_K)
#undef TOVA_AVX512_DECL

}  // namespace avx512
#endif

// --- NEON kernels (quant_neon.cpp, quant_neon_k.cpp; AArch64 only) -----------------------------
// Two copies: namespace neon (the base ISA) and neon_dot (with the dot-product extension). Both
// compute the portable kernels' results bit for bit.
#if defined(TOVA_ARM64)
#define TOVA_NEON_DECLS                                                                                         \
  float vec_dot_f32_f32(int64_t n, const void* x, const float* y);                                            \
  float vec_dot_f16_f32(int64_t n, const void* x, const float* y);                                            \
  float vec_dot_bf16_f32(int64_t n, const void* x, const float* y);                                           \
  void axpy_f32(float a, const float* x, float* y, int64_t n);                                                \
  void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);                                             \
  float vec_dot_q4_0_q8_0(int64_t n, const void* x, const void* y);                                           \
  float vec_dot_q4_1_q8_1(int64_t n, const void* x, const void* y);                                           \
  float vec_dot_q5_0_q8_0(int64_t n, const void* x, const void* y);                                           \
  float vec_dot_q5_1_q8_1(int64_t n, const void* x, const void* y);                                           \
  float vec_dot_q8_0_q8_0(int64_t n, const void* x, const void* y);                                           \
  float vec_dot_q4_K_q8_K(int64_t n, const void* x, const void* y);                                           \
  float vec_dot_q5_K_q8_K(int64_t n, const void* x, const void* y);                                           \
  float vec_dot_q6_K_q8_K(int64_t n, const void* x, const void* y);                                           \
  void vec_dot_rows_q4_0_q8_0(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out); \
  void vec_dot_rows_q4_1_q8_1(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out); \
  void vec_dot_rows_q5_0_q8_0(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out); \
  void vec_dot_rows_q5_1_q8_1(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out); \
  void vec_dot_rows_q8_0_q8_0(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out); \
  void vec_dot_rows_q4_K_q8_K(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out); \
  void vec_dot_rows_q5_K_q8_K(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out); \
  void vec_dot_rows_q6_K_q8_K(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out);
namespace neon { TOVA_NEON_DECLS }
namespace neon_dot { TOVA_NEON_DECLS }
#undef TOVA_NEON_DECLS
#endif

}  // namespace tova
