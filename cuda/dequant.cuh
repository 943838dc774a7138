// Element i of a quantized row, for the CUDA kernels: one function per weight type, callable on
// the host too (TOVA_HD), so that cuda/test_dequant.cu checks them against the CPU kernels on a
// machine without a GPU. Block layouts come from cpp/src/quant_blocks.h (the one description of
// the formats); the element order inside a block is the one cpu/quant_kquants.cpp documents.
//
// Like the CPU kernels, a scaled value and its offset are two roundings (scale * q, then + min),
// never one fused multiply-add: the CUDA sources build with -fmad=false.
#pragma once

#include <cstdint>
#include <cstring>

#include "quant.h"
#include "quant_blocks.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define TOVA_HD __host__ __device__ __forceinline__
#else
#define TOVA_HD inline
#endif

namespace tova {
namespace cuda {

TOVA_HD float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));  // the hardware conversion: exact, as the CPU's
#else
  return fp16_to_fp32(h);  // host: the CPU's conversion (quant.cpp)
#endif
}

TOVA_HD float bf16_to_float(uint16_t h) {  // exact: the top half of a float32
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// Low nibbles hold elements 0..15 of a 32-block, high nibbles 16..31 (Q4_0, Q4_1, Q5_x).
TOVA_HD int nibble32(const uint8_t* qs, int j) { return j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4); }
TOVA_HD int bit32(const uint8_t* qh, int j) { return (qh[j / 8] >> (j % 8)) & 1; }

TOVA_HD void scale_min_k4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

TOVA_HD int q2_at(const uint8_t* qs, int i) { return (qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3; }
TOVA_HD int q4k_at(const uint8_t* qs, int i) { return (qs[32 * (i / 64) + i % 32] >> (4 * ((i % 64) / 32))) & 0xF; }

// The weight types of the CUDA matrix kernels; each has elem(row, i).
struct DqF32 {
  static constexpr int kBlock = 1;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    float f;
    memcpy(&f, row + 4 * i, 4);
    return f;
  }
};
struct DqF16 {
  static constexpr int kBlock = 1;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    uint16_t h;
    memcpy(&h, row + 2 * i, 2);
    return half_to_float(h);
  }
};
struct DqBF16 {
  static constexpr int kBlock = 1;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    uint16_t h;
    memcpy(&h, row + 2 * i, 2);
    return bf16_to_float(h);
  }
};
struct DqQ4_0 {
  static constexpr int kBlock = kQK;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ4_0*>(row) + i / kQK;
    return half_to_float(b->d) * static_cast<float>(nibble32(b->qs, static_cast<int>(i % kQK)) - 8);
  }
};
struct DqQ4_1 {
  static constexpr int kBlock = kQK;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ4_1*>(row) + i / kQK;
    const float scaled = half_to_float(b->d) * static_cast<float>(nibble32(b->qs, static_cast<int>(i % kQK)));
    return scaled + half_to_float(b->m);
  }
};
struct DqQ5_0 {
  static constexpr int kBlock = kQK;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ5_0*>(row) + i / kQK;
    const int j = static_cast<int>(i % kQK);
    const int q = nibble32(b->qs, j) | (bit32(b->qh, j) << 4);
    return half_to_float(b->d) * static_cast<float>(q - 16);
  }
};
struct DqQ5_1 {
  static constexpr int kBlock = kQK;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ5_1*>(row) + i / kQK;
    const int j = static_cast<int>(i % kQK);
    const int q = nibble32(b->qs, j) | (bit32(b->qh, j) << 4);
    const float scaled = half_to_float(b->d) * static_cast<float>(q);
    return scaled + half_to_float(b->m);
  }
};
struct DqQ8_0 {
  static constexpr int kBlock = kQK;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(row) + i / kQK;
    return static_cast<float>(b->qs[i % kQK]) * half_to_float(b->d);
  }
};
// tova's own 3-bit value format (KV only): element j has its low two bits at bit 2 * (j / 8) of
// qs[j % 8] and its third bit at bit j % 8 of qh[j / 8]; value d * (q - 4).
struct DqQ3_0 {
  static constexpr int kBlock = kQK;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ3_0*>(row) + i / kQK;
    const int j = static_cast<int>(i % kQK);
    const int q = ((b->qs[j % 8] >> (2 * (j / 8))) & 3) | (((b->qh[j / 8] >> (j % 8)) & 1) << 2);
    return half_to_float(b->d) * static_cast<float>(q - 4);
  }
};
struct DqQ2_K {
  static constexpr int kBlock = kQK_K;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ2_K*>(row) + i / kQK_K;
    const int k = static_cast<int>(i % kQK_K), g = k / 16;
    const float dl = half_to_float(b->d) * static_cast<float>(b->scales[g] & 0xF);
    const float ml = half_to_float(b->dmin) * static_cast<float>(b->scales[g] >> 4);
    const float scaled = dl * static_cast<float>(q2_at(b->qs, k));
    return scaled - ml;
  }
};
struct DqQ3_K {
  static constexpr int kBlock = kQK_K;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ3_K*>(row) + i / kQK_K;
    const int k = static_cast<int>(i % kQK_K), g = k / 16;
    const int lo = g < 8 ? (b->scales[g] & 0xF) : (b->scales[g - 8] >> 4);
    const int hi = (b->scales[8 + g % 4] >> (2 * (g / 4))) & 3;
    const int sc = (lo | (hi << 4)) - 32;
    const int hb = (b->hmask[k % 32] >> (k / 32)) & 1;
    const int q = q2_at(b->qs, k) - (hb ? 0 : 4);
    const float dl = half_to_float(b->d) * static_cast<float>(sc);
    return dl * static_cast<float>(q);
  }
};
struct DqQ4_K {
  static constexpr int kBlock = kQK_K;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ4_K*>(row) + i / kQK_K;
    const int k = static_cast<int>(i % kQK_K);
    int sc, m;
    scale_min_k4(b->scales, k / 32, &sc, &m);
    const float dl = half_to_float(b->d) * static_cast<float>(sc);
    const float ml = half_to_float(b->dmin) * static_cast<float>(m);
    const float scaled = dl * static_cast<float>(q4k_at(b->qs, k));
    return scaled - ml;
  }
};
struct DqQ5_K {
  static constexpr int kBlock = kQK_K;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ5_K*>(row) + i / kQK_K;
    const int k = static_cast<int>(i % kQK_K);
    int sc, m;
    scale_min_k4(b->scales, k / 32, &sc, &m);
    const float dl = half_to_float(b->d) * static_cast<float>(sc);
    const float ml = half_to_float(b->dmin) * static_cast<float>(m);
    const int q = q4k_at(b->qs, k) | (((b->qh[k % 32] >> (k / 32)) & 1) << 4);
    const float scaled = dl * static_cast<float>(q);
    return scaled - ml;
  }
};
struct DqQ6_K {
  static constexpr int kBlock = kQK_K;
  TOVA_HD static float elem(const uint8_t* row, int64_t i) {
    const auto* b = reinterpret_cast<const BlockQ6_K*>(row) + i / kQK_K;
    const int k = static_cast<int>(i % kQK_K), h = k / 128, r = k % 128;
    const int lo = (b->ql[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
    const int hi = (b->qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
    const float dl = half_to_float(b->d) * static_cast<float>(b->scales[k / 16]);
    return dl * static_cast<float>((lo | (hi << 4)) - 32);
  }
};

}  // namespace cuda
}  // namespace tova
