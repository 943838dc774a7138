// NEON kernels (AArch64) of the 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the
// plain float helpers of attention. Compiled twice (quant_neon_util.h): the base ISA and the
// dot-product extension; the two differ only in how dot_s8 sums bytes.
//
// The quantized dot products equal the portable ones (quant_legacy.cpp) bit for bit: the integer
// sum of a block is exact whatever its order, and the float operations are the portable
// kernel's, in its order, never fused (this file is compiled with -ffp-contract=off). So the
// NEON tiers compute the same logits as the scalar tier, and a row's product against several
// activation rows (the prompt's matrix products) is vec_dot's for each.
//
// So are the float helpers: their dot products follow the scalar tier's fixed order of 16 running
// sums (quant_kernels.h) and nothing is fused, as in the scalar tier; the gathered attention
// helpers are GatherByRows of these (kernels_cpu.cpp), as the scalar tier's are. With the rest of the core compiled
// without contraction on AArch64 (CMakeLists.txt), an AArch64 build computes the scalar tier's
// logits, whichever of its tiers runs.
#include "quant_neon_util.h"

#include "quant_kernels.h"

namespace tova {
namespace TOVA_NEON_NS {

namespace {

// --- the 32-element formats: each block's quants as two int8 vectors (elements 0..15, 16..31) ---

struct Q4_0 {
  using X = BlockQ4_0;
  using Y = BlockQ8_0;
  static constexpr bool kMin = false;
  static void quants(const X& b, int8x16_t* lo, int8x16_t* hi) {
    unpack_nibbles(b.qs, lo, hi);
    *lo = vsubq_s8(*lo, vdupq_n_s8(8));
    *hi = vsubq_s8(*hi, vdupq_n_s8(8));
  }
};

struct Q5_0 {
  using X = BlockQ5_0;
  using Y = BlockQ8_0;
  static constexpr bool kMin = false;
  static void quants(const X& b, int8x16_t* lo, int8x16_t* hi) {
    unpack_nibbles(b.qs, lo, hi);
    *lo = vsubq_s8(vorrq_s8(*lo, vreinterpretq_s8_u8(bits_to_0x10(b.qh))), vdupq_n_s8(16));
    *hi = vsubq_s8(vorrq_s8(*hi, vreinterpretq_s8_u8(bits_to_0x10(b.qh + 2))), vdupq_n_s8(16));
  }
};

struct Q8_0 {
  using X = BlockQ8_0;
  using Y = BlockQ8_0;
  static constexpr bool kMin = false;
  static void quants(const X& b, int8x16_t* lo, int8x16_t* hi) {
    *lo = vld1q_s8(b.qs);
    *hi = vld1q_s8(b.qs + 16);
  }
};

struct Q4_1 {
  using X = BlockQ4_1;
  using Y = BlockQ8_1;
  static constexpr bool kMin = true;
  static void quants(const X& b, int8x16_t* lo, int8x16_t* hi) { unpack_nibbles(b.qs, lo, hi); }
};

struct Q5_1 {
  using X = BlockQ5_1;
  using Y = BlockQ8_1;
  static constexpr bool kMin = true;
  static void quants(const X& b, int8x16_t* lo, int8x16_t* hi) {
    unpack_nibbles(b.qs, lo, hi);
    *lo = vorrq_s8(*lo, vreinterpretq_s8_u8(bits_to_0x10(b.qh)));
    *hi = vorrq_s8(*hi, vreinterpretq_s8_u8(bits_to_0x10(b.qh + 2)));
  }
};

// One weight row against R activation rows `stride` bytes apart: each block's quants decoded
// once; every row's sum built as the portable vec_dot builds it.
template <class F, int R>
void rows_n(int64_t n, const void* vx, const void* vy, size_t stride, float* out) {
  const auto* x = static_cast<const typename F::X*>(vx);
  const typename F::Y* y[R];
  for (int k = 0; k < R; ++k)
    y[k] = reinterpret_cast<const typename F::Y*>(static_cast<const uint8_t*>(vy) + k * stride);
  float sum[R] = {};
  for (int64_t i = 0; i < n / kQK; ++i) {
    int8x16_t lo, hi;
    F::quants(x[i], &lo, &hi);
    const float dx = half_to_float(x[i].d);
    for (int k = 0; k < R; ++k) {
      const float prod = static_cast<float>(dot32(lo, hi, y[k][i].qs)) * (dx * half_to_float(y[k][i].d));
      if constexpr (F::kMin)
        sum[k] += prod + half_to_float(x[i].m) * half_to_float(y[k][i].s);
      else
        sum[k] += prod;
    }
  }
  for (int k = 0; k < R; ++k) out[k] = sum[k];
}

template <class F>
void rows(int64_t n, const void* x, const void* y, size_t stride, int nr, float* out) {
  by_row_count(nr, [&](auto r) { rows_n<F, decltype(r)::value>(n, x, y, stride, out); });
}

template <class F>
float one_row(int64_t n, const void* x, const void* y) {
  float out;
  rows_n<F, 1>(n, x, y, 0, &out);
  return out;
}

// --- float helpers -------------------------------------------------------------------------------

// Eight values of x as float32 (two vectors), for each element type of the float dot products.
// Rows may sit at any byte address (a tensor in a file, a numpy view): loaded as bytes.
inline void load8(const float* x, float32x4_t* a, float32x4_t* b) {
  const auto* p = reinterpret_cast<const uint8_t*>(x);
  *a = vreinterpretq_f32_u8(vld1q_u8(p));
  *b = vreinterpretq_f32_u8(vld1q_u8(p + 16));
}
inline void load8(const uint16_t* x, float32x4_t* a, float32x4_t* b) {  // f16
  const float16x8_t h = vreinterpretq_f16_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(x)));
  *a = vcvt_f32_f16(vget_low_f16(h));
  *b = vcvt_high_f32_f16(h);
}
struct Bf16 {
  const uint16_t* p;
};
inline void load8(Bf16 x, float32x4_t* a, float32x4_t* b) {
  const uint16x8_t h = vreinterpretq_u16_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(x.p)));
  *a = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
  *b = vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
}

template <class T>
inline T load_one(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline float one(const float* x, int64_t i) { return load_one<float>(x + i); }
inline float one(const uint16_t* x, int64_t i) { return half_to_float(load_one<uint16_t>(x + i)); }
inline float one(Bf16 x, int64_t i) {
  const uint32_t u = static_cast<uint32_t>(load_one<uint16_t>(x.p + i)) << 16;
  return load_one<float>(&u);
}
inline const float* advance(const float* x, int64_t i) { return x + i; }
inline const uint16_t* advance(const uint16_t* x, int64_t i) { return x + i; }
inline Bf16 advance(Bf16 x, int64_t i) { return {x.p + i}; }

// sum x[i] * y[i], any n, in the scalar tier's order (quant_kernels.h): lane j of vector k is
// running sum 4k + j; the last n % 16 values join their sums one at a time.
template <class X>
float dot(X x, const float* y, int64_t n) {
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes) {
    float32x4_t a, b, c, d;
    load8(advance(x, i), &a, &b);
    load8(advance(x, i + 8), &c, &d);
    s0 = vaddq_f32(s0, vmulq_f32(a, vld1q_f32(y + i)));
    s1 = vaddq_f32(s1, vmulq_f32(b, vld1q_f32(y + i + 4)));
    s2 = vaddq_f32(s2, vmulq_f32(c, vld1q_f32(y + i + 8)));
    s3 = vaddq_f32(s3, vmulq_f32(d, vld1q_f32(y + i + 12)));
  }
  float lanes[kDotLanes];
  vst1q_f32(lanes, s0);
  vst1q_f32(lanes + 4, s1);
  vst1q_f32(lanes + 8, s2);
  vst1q_f32(lanes + 12, s3);
  for (; i < n; ++i) lanes[i % kDotLanes] += one(x, i) * y[i];
  return reduce_dot_lanes(lanes);
}

// y[i] += a * x[i], any n, the product rounded first as in the scalar tier.
template <class X>
void axpy(float a, X x, float* y, int64_t n) {
  const float32x4_t va = vdupq_n_f32(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float32x4_t p, q;
    load8(advance(x, i), &p, &q);
    vst1q_f32(y + i, vaddq_f32(vld1q_f32(y + i), vmulq_f32(va, p)));
    vst1q_f32(y + i + 4, vaddq_f32(vld1q_f32(y + i + 4), vmulq_f32(va, q)));
  }
  for (; i < n; ++i) y[i] += a * one(x, i);
}

}  // namespace

float vec_dot_q4_0_q8_0(int64_t n, const void* x, const void* y) { return one_row<Q4_0>(n, x, y); }
float vec_dot_q4_1_q8_1(int64_t n, const void* x, const void* y) { return one_row<Q4_1>(n, x, y); }
float vec_dot_q5_0_q8_0(int64_t n, const void* x, const void* y) { return one_row<Q5_0>(n, x, y); }
float vec_dot_q5_1_q8_1(int64_t n, const void* x, const void* y) { return one_row<Q5_1>(n, x, y); }
float vec_dot_q8_0_q8_0(int64_t n, const void* x, const void* y) { return one_row<Q8_0>(n, x, y); }
void vec_dot_rows_q4_0_q8_0(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<Q4_0>(n, x, y, s, r, o); }
void vec_dot_rows_q4_1_q8_1(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<Q4_1>(n, x, y, s, r, o); }
void vec_dot_rows_q5_0_q8_0(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<Q5_0>(n, x, y, s, r, o); }
void vec_dot_rows_q5_1_q8_1(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<Q5_1>(n, x, y, s, r, o); }
void vec_dot_rows_q8_0_q8_0(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<Q8_0>(n, x, y, s, r, o); }

float vec_dot_f32_f32(int64_t n, const void* x, const float* y) { return dot(static_cast<const float*>(x), y, n); }
float vec_dot_f16_f32(int64_t n, const void* x, const float* y) { return dot(static_cast<const uint16_t*>(x), y, n); }
float vec_dot_bf16_f32(int64_t n, const void* x, const float* y) { return dot(Bf16{static_cast<const uint16_t*>(x)}, y, n); }
void axpy_f32(float a, const float* x, float* y, int64_t n) { axpy(a, x, y, n); }
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) { axpy(a, x, y, n); }

}  // namespace TOVA_NEON_NS
}  // namespace tova
