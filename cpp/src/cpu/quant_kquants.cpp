// Portable kernels of the k-quants (256-element super-blocks): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
// and their activation format Q8_K.
//
// Dequantization equals gguf-py's bit for bit: the per-group scale d * sc is rounded to float32
// first, then (scale * q) - min, never fused. Dot products take Q8_K activations, whose bsums
// (sums of 16 quants) turn each format's offset or minimum into one small dot product.
//
// Element order inside a super-block (from gguf-py's reshapes), with l in 0..31:
//   Q2_K  element 128h + 32s + l  = bits 2s..2s+1 of qs[32h + l]
//   Q3_K  low bits as Q2_K; high bit of element 32b + l = bit b of hmask[l]
//   Q4_K  element 64c + 32s + l   = nibble s of qs[32c + l]
//   Q5_K  low bits as Q4_K; high bit of element 32b + l = bit b of qh[l]
//   Q6_K  element 128h + 64s + k  = nibble s of ql[64h + k] (k in 0..63),
//         high bits of element 128h + 32t + l = bits 2t..2t+1 of qh[32h + l]
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

int q2_at(const uint8_t* qs, int idx) {
  return (qs[32 * (idx / 128) + idx % 32] >> (2 * ((idx % 128) / 32))) & 3;
}

int q3_at(const BlockQ3_K& b, int idx) {
  const int hb = (b.hmask[idx % 32] >> (idx / 32)) & 1;
  return q2_at(b.qs, idx) - (hb ? 0 : 4);
}

int q4_at(const uint8_t* qs, int idx) { return (qs[32 * (idx / 64) + idx % 32] >> (4 * ((idx % 64) / 32))) & 0xF; }

int q5_at(const BlockQ5_K& b, int idx) {
  return q4_at(b.qs, idx) | (((b.qh[idx % 32] >> (idx / 32)) & 1) << 4);
}

int q6_at(const BlockQ6_K& b, int idx) {
  const int h = idx / 128, r = idx % 128;
  const int lo = (b.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
  const int hi = (b.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
  return (lo | (hi << 4)) - 32;
}

}  // namespace

void dequantize_q2_K(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ2_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const float d = fp16_to_fp32(b[i].d);
    const float dmin = fp16_to_fp32(b[i].dmin);
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(b[i].scales[g] & 0xF);
      const float ml = dmin * static_cast<float>(b[i].scales[g] >> 4);
      for (int k = 0; k < 16; ++k) {
        const int idx = 16 * g + k;
        const float scaled = dl * static_cast<float>(q2_at(b[i].qs, idx));
        dst[idx] = scaled - ml;
      }
    }
  }
}

void dequantize_q3_K(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ3_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const float d = fp16_to_fp32(b[i].d);
    int8_t sc[16];
    q3k_scales(b[i].scales, sc);
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(sc[g]);
      for (int k = 0; k < 16; ++k) dst[16 * g + k] = dl * static_cast<float>(q3_at(b[i], 16 * g + k));
    }
  }
}

void dequantize_q4_K(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ4_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const float d = fp16_to_fp32(b[i].d);
    const float dmin = fp16_to_fp32(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      kquant_scale_min(b[i].scales, j, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      for (int k = 0; k < 32; ++k) {
        const float scaled = dl * static_cast<float>(q4_at(b[i].qs, 32 * j + k));
        dst[32 * j + k] = scaled - ml;
      }
    }
  }
}

void dequantize_q5_K(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ5_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const float d = fp16_to_fp32(b[i].d);
    const float dmin = fp16_to_fp32(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      kquant_scale_min(b[i].scales, j, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      for (int k = 0; k < 32; ++k) {
        const float scaled = dl * static_cast<float>(q5_at(b[i], 32 * j + k));
        dst[32 * j + k] = scaled - ml;
      }
    }
  }
}

void dequantize_q6_K(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ6_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const float d = fp16_to_fp32(b[i].d);
    for (int g = 0; g < 16; ++g) {
      const float dl = d * static_cast<float>(b[i].scales[g]);
      for (int k = 0; k < 16; ++k) dst[16 * g + k] = dl * static_cast<float>(q6_at(b[i], 16 * g + k));
    }
  }
}

void dequantize_q8_K(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ8_K*>(src);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    for (int k = 0; k < kQK_K; ++k) dst[k] = b[i].d * static_cast<float>(b[i].qs[k]);
  }
}

// ggml's Q8_K: the largest-magnitude value (first, if tied) maps to -127, the others round to
// nearest (ties to even) and are clamped to 127; d = 1 / scale.
void quantize_q8_K(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_K*>(dst);
  for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
    float amax = 0.0f, max = 0.0f;
    for (int k = 0; k < kQK_K; ++k) {
      const float a = std::fabs(src[k]);
      if (a > amax) {
        amax = a;
        max = src[k];
      }
    }
    if (amax == 0.0f) {
      std::memset(&b[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    const float iscale = -127.0f / max;
    for (int k = 0; k < kQK_K; ++k) {
      const int v = static_cast<int>(std::nearbyint(iscale * src[k]));
      b[i].qs[k] = static_cast<int8_t>(v < 127 ? v : 127);
    }
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int k = 0; k < 16; ++k) s += b[i].qs[16 * g + k];
      b[i].bsums[g] = static_cast<int16_t>(s);
    }
    b[i].d = 1.0f / iscale;
  }
}

float vec_dot_q2_K_q8_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ2_K*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int sumi = 0, summ = 0;
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int k = 0; k < 16; ++k) s += q2_at(x[i].qs, 16 * g + k) * y[i].qs[16 * g + k];
      sumi += (x[i].scales[g] & 0xF) * s;
      summ += (x[i].scales[g] >> 4) * y[i].bsums[g];
    }
    sum += y[i].d * (fp16_to_fp32(x[i].d) * static_cast<float>(sumi) -
                     fp16_to_fp32(x[i].dmin) * static_cast<float>(summ));
  }
  return sum;
}

float vec_dot_q3_K_q8_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ3_K*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int8_t sc[16];
    q3k_scales(x[i].scales, sc);
    int sumi = 0;
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int k = 0; k < 16; ++k) s += q3_at(x[i], 16 * g + k) * y[i].qs[16 * g + k];
      sumi += sc[g] * s;
    }
    sum += y[i].d * fp16_to_fp32(x[i].d) * static_cast<float>(sumi);
  }
  return sum;
}

namespace {

// Q4_K and Q5_K differ only in how a quant is read.
template <class Block, int (*QuantAt)(const Block&, int)>
float dot_q45_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const Block*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      kquant_scale_min(x[i].scales, j, &sc, &m);
      int s = 0;
      for (int k = 0; k < 32; ++k) s += QuantAt(x[i], 32 * j + k) * y[i].qs[32 * j + k];
      sumi += sc * s;
      summ += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
    }
    sum += y[i].d * (fp16_to_fp32(x[i].d) * static_cast<float>(sumi) -
                     fp16_to_fp32(x[i].dmin) * static_cast<float>(summ));
  }
  return sum;
}

int q4k_at(const BlockQ4_K& b, int idx) { return q4_at(b.qs, idx); }

}  // namespace

float vec_dot_q4_K_q8_K(int64_t n, const void* vx, const void* vy) {
  return dot_q45_K<BlockQ4_K, q4k_at>(n, vx, vy);
}

float vec_dot_q5_K_q8_K(int64_t n, const void* vx, const void* vy) {
  return dot_q45_K<BlockQ5_K, q5_at>(n, vx, vy);
}

float vec_dot_q6_K_q8_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ6_K*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int sumi = 0;
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int k = 0; k < 16; ++k) s += q6_at(x[i], 16 * g + k) * y[i].qs[16 * g + k];
      sumi += x[i].scales[g] * s;
    }
    sum += y[i].d * fp16_to_fp32(x[i].d) * static_cast<float>(sumi);
  }
  return sum;
}

float vec_dot_q8_K_q8_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ8_K*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  float sum = 0.0f;
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    int sumi = 0;
    for (int k = 0; k < kQK_K; ++k) sumi += x[i].qs[k] * y[i].qs[k];
    sum += x[i].d * y[i].d * static_cast<float>(sumi);
  }
  return sum;
}

}  // namespace scalar
}  // namespace tova
