// Portable kernels of the plain number types: F32, F16, BF16, F64 and the integer types.
// F32, F16 and BF16 dot products follow the fixed order of quant_kernels.h (16 running sums; the
// NEON tier computes the same bits); the other types' dot products accumulate in double. Nothing
// here is contracted into fused multiply-adds. This is the reference the SIMD kernels are tested
// against, and the fallback on CPUs without them.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && defined(__FP_FAST_FMAF)
#pragma GCC optimize("fp-contract=off")
#endif
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant_kernels.h"

namespace tova {
namespace scalar {

namespace {

// Unaligned-safe element loads: integer tensors in a file only promise their own alignment
// at the tensor start, and Python callers may hand us any byte offset.
template <class T>
T load(const void* base, int64_t i) {
  T v;
  std::memcpy(&v, static_cast<const char*>(base) + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
  return v;
}

template <class T>
void dequantize_plain(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(load<T>(src, i));
}

template <class T>
float dot_plain(int64_t n, const void* x, const float* y) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(load<T>(x, i)) * y[i];
  return static_cast<float>(sum);
}

}  // namespace

void dequantize_f32(const void* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void dequantize_f16(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load<uint16_t>(src, i));
}

void dequantize_bf16(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load<uint16_t>(src, i));
}

void dequantize_f64(const void* src, float* dst, int64_t n) { dequantize_plain<double>(src, dst, n); }
void dequantize_i8(const void* src, float* dst, int64_t n) { dequantize_plain<int8_t>(src, dst, n); }
void dequantize_i16(const void* src, float* dst, int64_t n) { dequantize_plain<int16_t>(src, dst, n); }
void dequantize_i32(const void* src, float* dst, int64_t n) { dequantize_plain<int32_t>(src, dst, n); }
void dequantize_i64(const void* src, float* dst, int64_t n) { dequantize_plain<int64_t>(src, dst, n); }

void quantize_f32(const float* src, void* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void quantize_f16(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = fp32_to_fp16(src[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

void quantize_bf16(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = fp32_to_bf16(src[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

namespace {

// sum x(i) * y[i] in the order of reduce_dot_lanes.
template <class Load>
float dot_lanes(int64_t n, Load x, const float* y) {
  float a[kDotLanes] = {};
  for (int64_t i = 0; i < n; ++i) a[i % kDotLanes] += x(i) * y[i];
  return reduce_dot_lanes(a);
}

}  // namespace

float vec_dot_f32_f32(int64_t n, const void* x, const float* y) {
  return dot_lanes(n, [x](int64_t i) { return load<float>(x, i); }, y);
}

float vec_dot_f16_f32(int64_t n, const void* x, const float* y) {
  return dot_lanes(n, [x](int64_t i) { return fp16_to_fp32(load<uint16_t>(x, i)); }, y);
}

float vec_dot_bf16_f32(int64_t n, const void* x, const float* y) {
  return dot_lanes(n, [x](int64_t i) { return bf16_to_fp32(load<uint16_t>(x, i)); }, y);
}

float vec_dot_f64_f32(int64_t n, const void* x, const float* y) { return dot_plain<double>(n, x, y); }
float vec_dot_i8_f32(int64_t n, const void* x, const float* y) { return dot_plain<int8_t>(n, x, y); }
float vec_dot_i16_f32(int64_t n, const void* x, const float* y) { return dot_plain<int16_t>(n, x, y); }
float vec_dot_i32_f32(int64_t n, const void* x, const float* y) { return dot_plain<int32_t>(n, x, y); }
float vec_dot_i64_f32(int64_t n, const void* x, const float* y) { return dot_plain<int64_t>(n, x, y); }

void silu_mul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void softmax_f32(float* s, int n) {
  float mx = -INFINITY;
  for (int j = 0; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0.0f;
  for (int j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int j = 0; j < n; ++j) s[j] *= inv;
}

void gelu_tanh_mul(float* gate, const float* up, int64_t n) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = 0.5f * g * (1.0f + std::tanh(k * (g + 0.044715f * g * g * g))) * up[i];
  }
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * fp16_to_fp32(x[i]);
}

float vec_dot_dequant_f32(DequantizeFn dequantize, int64_t block_size, size_t type_size,
                          int64_t n, const void* x, const float* y) {
  // Largest block of any type with kernels is 256 elements.
  float tmp[kQK_K];
  const auto* bytes = static_cast<const uint8_t*>(x);
  double sum = 0.0;
  for (int64_t i = 0; i < n; i += block_size) {
    dequantize(bytes, tmp, block_size);
    float block_sum = 0.0f;
    for (int64_t j = 0; j < block_size; ++j) block_sum += tmp[j] * y[i + j];
    sum += block_sum;
    bytes += type_size;
  }
  return static_cast<float>(sum);
}

}  // namespace scalar
}  // namespace tova
