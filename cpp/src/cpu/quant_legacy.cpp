// Portable kernels of the 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, and
// tova's KV value format Q3_0 (quant_blocks.h; encoded and decoded only).
//
// Dequantization must equal gguf-py's bit for bit, so each value is computed with the same
// float32 operations in the same order ((d * q) + m, never a fused multiply-add).
// Quantization follows gguf-py too (Q8_0 there is bit-exact with ggml's reference).
//
// Activations are Q8_0 for the symmetric formats (Q4_0, Q5_0, Q8_0) and Q8_1 for the formats
// with a minimum (Q4_1, Q5_1), as ggml does: x . y = d_x d_y (q_x . q_y) + m_x s_y, where the
// Q8_1 block carries s_y = d_y * sum(q_y) (rounded to fp16) so that no row recomputes the sum.
// The rounding of s costs at most 2^-11 of |m_x s_y| per block, far below the weights' own
// 4-bit rounding.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__) && defined(__FP_FAST_FMAF)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cmath>
#include <cstring>

#include "quant_kernels.h"

namespace tova {
namespace scalar {

namespace {

constexpr int kHalf = kQK / 2;

// Index (first, as numpy's argmax) of the element with the largest magnitude.
int argmax_abs(const float* x, int n) {
  int best = 0;
  float amax = std::fabs(x[0]);
  for (int j = 1; j < n; ++j) {
    const float a = std::fabs(x[j]);
    if (a > amax) {
      amax = a;
      best = j;
    }
  }
  return best;
}

void min_max(const float* x, int n, float* mn, float* mx) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < n; ++j) {
    lo = x[j] < lo ? x[j] : lo;
    hi = x[j] > hi ? x[j] : hi;
  }
  *mn = lo;
  *mx = hi;
}

int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The symmetric formats (Q3_0, Q4_0, Q5_0): the largest-magnitude value of the block maps to
// -half exactly, so its sign sets the sign of d. Stores d as fp16, returns 1 / d (0 for zeros).
float symmetric_scale(const float* x, float half, uint16_t* d_out) {
  const float d = x[argmax_abs(x, kQK)] / -half;
  *d_out = fp32_to_fp16(d);
  return d != 0.0f ? 1.0f / d : 0.0f;
}

// Element j of a 32-element block whose low nibbles are packed as in Q4_0.
int nibble(const uint8_t* qs, int j) { return j < kHalf ? (qs[j] & 0xF) : (qs[j - kHalf] >> 4); }

int high_bit(const uint8_t* qh, int j) { return (qh[j / 8] >> (j % 8)) & 1; }

int q8_sum(const int8_t* qs) {
  int s = 0;
  for (int j = 0; j < kQK; ++j) s += qs[j];
  return s;
}

}  // namespace

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ4_0*>(src);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < kQK; ++j) dst[j] = d * static_cast<float>(nibble(b[i].qs, j) - 8);
  }
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ4_1*>(src);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    const float m = fp16_to_fp32(b[i].m);
    for (int j = 0; j < kQK; ++j) {
      const float scaled = d * static_cast<float>(nibble(b[i].qs, j));
      dst[j] = scaled + m;
    }
  }
}

void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ5_0*>(src);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < kQK; ++j) {
      const int q = nibble(b[i].qs, j) | (high_bit(b[i].qh, j) << 4);
      dst[j] = d * static_cast<float>(q - 16);
    }
  }
}

void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ5_1*>(src);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    const float m = fp16_to_fp32(b[i].m);
    for (int j = 0; j < kQK; ++j) {
      const int q = nibble(b[i].qs, j) | (high_bit(b[i].qh, j) << 4);
      const float scaled = d * static_cast<float>(q);
      dst[j] = scaled + m;
    }
  }
}

void dequantize_q8_0(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ8_0*>(src);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

void dequantize_q8_1(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ8_1*>(src);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < kQK; ++j) dst[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

void quantize_q4_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ4_0*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) {
    const float id = symmetric_scale(src, 8.0f, &b[i].d);
    for (int j = 0; j < kHalf; ++j) {
      const int q0 = clamp_int(static_cast<int>(src[j] * id + 8.5f), 0, 15);
      const int q1 = clamp_int(static_cast<int>(src[j + kHalf] * id + 8.5f), 0, 15);
      b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void dequantize_q3_0(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ3_0*>(src);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    for (int g = 0; g < 4; ++g) {  // values 8g .. 8g + 7, one byte each
      const uint64_t q8 = q3_0_codes(b[i], g);
      uint8_t q[8];
      std::memcpy(q, &q8, sizeof(q));
      for (int k = 0; k < 8; ++k) dst[8 * g + k] = d * static_cast<float>(static_cast<int>(q[k]) - 4);
    }
  }
}

// As Q4_0 with 8 levels.
void quantize_q3_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ3_0*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) {
    const float id = symmetric_scale(src, 4.0f, &b[i].d);
    std::memset(b[i].qs, 0, sizeof(b[i].qs));
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int j = 0; j < kQK; ++j) {
      const int q = clamp_int(static_cast<int>(src[j] * id + 4.5f), 0, 7);
      b[i].qs[j % 8] = static_cast<uint8_t>(b[i].qs[j % 8] | ((q & 3) << (2 * (j / 8))));
      b[i].qh[j / 8] = static_cast<uint8_t>(b[i].qh[j / 8] | ((q >> 2) << (j % 8)));
    }
  }
}

void quantize_q4_1(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ4_1*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) {
    float mn, mx;
    min_max(src, kQK, &mn, &mx);
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = fp32_to_fp16(d);
    b[i].m = fp32_to_fp16(mn);
    for (int j = 0; j < kHalf; ++j) {
      const int q0 = clamp_int(static_cast<int>((src[j] - mn) * id + 0.5f), 0, 15);
      const int q1 = clamp_int(static_cast<int>((src[j + kHalf] - mn) * id + 0.5f), 0, 15);
      b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

namespace {

// Packs 32 five-bit quants: low nibbles as Q4_0, bit 4 of quant j into bit j of qh.
void pack5(const int* q, uint8_t* qh, uint8_t* qs) {
  uint32_t h = 0;
  for (int j = 0; j < kQK; ++j) h |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  for (int k = 0; k < 4; ++k) qh[k] = static_cast<uint8_t>(h >> (8 * k));
  for (int j = 0; j < kHalf; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + kHalf] & 0xF) << 4));
}

}  // namespace

void quantize_q5_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ5_0*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) {
    const float id = symmetric_scale(src, 16.0f, &b[i].d);
    int q[kQK];
    for (int j = 0; j < kQK; ++j) q[j] = clamp_int(static_cast<int>(src[j] * id + 16.5f), 0, 31);
    pack5(q, b[i].qh, b[i].qs);
  }
}

void quantize_q5_1(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ5_1*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) {
    float mn, mx;
    min_max(src, kQK, &mn, &mx);
    const float d = (mx - mn) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[kQK];
    for (int j = 0; j < kQK; ++j) q[j] = clamp_int(static_cast<int>((src[j] - mn) * id + 0.5f), 0, 31);
    b[i].d = fp32_to_fp16(d);
    b[i].m = fp32_to_fp16(mn);
    pack5(q, b[i].qh, b[i].qs);
  }
}

namespace {

// Q8_0 and Q8_1 share the quants: d = amax / 127, round half away from zero (as roundf).
float quantize_block_q8(const float* x, int8_t* qs) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j) qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
  return d;
}

}  // namespace

void quantize_q8_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_0*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) b[i].d = fp32_to_fp16(quantize_block_q8(src, b[i].qs));
}

void quantize_q8_1(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_1*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) {
    const float d = quantize_block_q8(src, b[i].qs);
    b[i].d = fp32_to_fp16(d);
    b[i].s = fp32_to_fp16(d * static_cast<float>(q8_sum(b[i].qs)));
  }
}

float vec_dot_q4_0_q8_0(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ4_0*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) sumi += (nibble(x[i].qs, j) - 8) * y[i].qs[j];
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d));
  }
  return sum;
}

float vec_dot_q4_1_q8_1(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ4_1*>(vx);
  const auto* y = static_cast<const BlockQ8_1*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) sumi += nibble(x[i].qs, j) * y[i].qs[j];
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d)) +
           fp16_to_fp32(x[i].m) * fp16_to_fp32(y[i].s);
  }
  return sum;
}

float vec_dot_q5_0_q8_0(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ5_0*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = nibble(x[i].qs, j) | (high_bit(x[i].qh, j) << 4);
      sumi += (q - 16) * y[i].qs[j];
    }
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d));
  }
  return sum;
}

float vec_dot_q5_1_q8_1(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ5_1*>(vx);
  const auto* y = static_cast<const BlockQ8_1*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = nibble(x[i].qs, j) | (high_bit(x[i].qh, j) << 4);
      sumi += q * y[i].qs[j];
    }
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d)) +
           fp16_to_fp32(x[i].m) * fp16_to_fp32(y[i].s);
  }
  return sum;
}

float vec_dot_q8_0_q8_0(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ8_0*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) sumi += x[i].qs[j] * y[i].qs[j];
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d));
  }
  return sum;
}

float vec_dot_q8_1_q8_0(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ8_1*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK; ++i) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) sumi += x[i].qs[j] * y[i].qs[j];
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d));
  }
  return sum;
}

}  // namespace scalar
}  // namespace tova
