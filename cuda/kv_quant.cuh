// The K/V element types on the CUDA device, as the CPU backend stores and reads them:
//  - kv_elem: element i of a stored row (any KvType) back to float (cpu/kv_cpu.cpp's decoders);
//  - quantize_kv_block: one 32-element block stored as cpu/quant_legacy.cpp's scalar quantizers
//    store it (the same bits: the same operations in the same order, no fused multiply-add);
//  - the integer product the CPU scores quantized keys with (cpu/attention_cpu.cpp): the query
//    block quantized to the key type's vec_dot_type (q8_0, or q8_1 with its scaled sum) by
//    quantize_query_block, each key element's quant, scale and minimum by key_quant, and a block's
//    score by key_block_score.
// Host-callable (TOVA_HD), so that the C++ tests check them against the CPU without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "config.h"
#include "dequant.cuh"

namespace tova {
namespace cuda {

TOVA_HD uint16_t float_to_half(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));  // round to nearest even, as the CPU's
#else
  return fp32_to_fp16(f);
#endif
}

TOVA_HD bool kv_quantized(KvType t) { return t != KvType::F32 && t != KvType::F16; }

TOVA_HD float kv_elem(KvType t, const uint8_t* row, int64_t i) {
  switch (t) {
    case KvType::F32: return DqF32::elem(row, i);
    case KvType::F16: return DqF16::elem(row, i);
    case KvType::Q8_0: return DqQ8_0::elem(row, i);
    case KvType::Q4_0: return DqQ4_0::elem(row, i);
    case KvType::Q4_1: return DqQ4_1::elem(row, i);
    case KvType::Q5_0: return DqQ5_0::elem(row, i);
    case KvType::Q5_1: return DqQ5_1::elem(row, i);
    case KvType::Q3_0: return DqQ3_0::elem(row, i);
  }
  return 0.0f;
}

TOVA_HD int kv_clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The symmetric formats (Q3_0, Q4_0, Q5_0): the first value of largest magnitude maps to -half,
// d stored as fp16; returns 1 / d (0 for a block of zeros).
TOVA_HD float kv_symmetric_scale(const float* x, float half, uint16_t* d_out) {
  int best = 0;
  float amax = fabsf(x[0]);
  for (int j = 1; j < kQK; ++j) {
    const float a = fabsf(x[j]);
    if (a > amax) {
      amax = a;
      best = j;
    }
  }
  const float d = x[best] / -half;
  *d_out = float_to_half(d);
  return d != 0.0f ? 1.0f / d : 0.0f;
}

TOVA_HD void kv_min_max(const float* x, float* mn, float* mx) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < kQK; ++j) {
    lo = x[j] < lo ? x[j] : lo;
    hi = x[j] > hi ? x[j] : hi;
  }
  *mn = lo;
  *mx = hi;
}

// Q8_0's quants (d = amax / 127, rounded half away from zero); returns d before its fp16 rounding.
TOVA_HD float kv_q8_block(const float* x, int8_t* qs) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = fmaxf(amax, fabsf(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j) qs[j] = static_cast<int8_t>(roundf(x[j] * id));
  return d;
}

// Five-bit quants packed: low nibbles as Q4_0, bit 4 of quant j at bit j of qh.
TOVA_HD void kv_pack5(const int* q, uint8_t* qh, uint8_t* qs) {
  uint32_t h = 0;
  for (int j = 0; j < kQK; ++j) h |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  for (int k = 0; k < 4; ++k) qh[k] = static_cast<uint8_t>(h >> (8 * k));
  for (int j = 0; j < kQK / 2; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + kQK / 2] & 0xF) << 4));
}

// One block of 32 floats x into `dst` in type t (a quantized KvType).
TOVA_HD void quantize_kv_block(KvType t, const float* x, uint8_t* dst) {
  constexpr int kHalf = kQK / 2;
  switch (t) {
    case KvType::Q8_0: {
      auto* b = reinterpret_cast<BlockQ8_0*>(dst);
      b->d = float_to_half(kv_q8_block(x, b->qs));
      break;
    }
    case KvType::Q4_0: {
      auto* b = reinterpret_cast<BlockQ4_0*>(dst);
      const float id = kv_symmetric_scale(x, 8.0f, &b->d);
      for (int j = 0; j < kHalf; ++j) {
        const int q0 = kv_clamp(static_cast<int>(x[j] * id + 8.5f), 0, 15);
        const int q1 = kv_clamp(static_cast<int>(x[j + kHalf] * id + 8.5f), 0, 15);
        b->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
      }
      break;
    }
    case KvType::Q4_1:
    case KvType::Q5_1: {
      const bool five = t == KvType::Q5_1;
      float mn, mx;
      kv_min_max(x, &mn, &mx);
      const float d = (mx - mn) / (five ? 31.0f : 15.0f);
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      int q[kQK];
      for (int j = 0; j < kQK; ++j) q[j] = kv_clamp(static_cast<int>((x[j] - mn) * id + 0.5f), 0, five ? 31 : 15);
      if (five) {
        auto* b = reinterpret_cast<BlockQ5_1*>(dst);
        b->d = float_to_half(d);
        b->m = float_to_half(mn);
        kv_pack5(q, b->qh, b->qs);
      } else {
        auto* b = reinterpret_cast<BlockQ4_1*>(dst);
        b->d = float_to_half(d);
        b->m = float_to_half(mn);
        for (int j = 0; j < kHalf; ++j) b->qs[j] = static_cast<uint8_t>(q[j] | (q[j + kHalf] << 4));
      }
      break;
    }
    case KvType::Q5_0: {
      auto* b = reinterpret_cast<BlockQ5_0*>(dst);
      const float id = kv_symmetric_scale(x, 16.0f, &b->d);
      int q[kQK];
      for (int j = 0; j < kQK; ++j) q[j] = kv_clamp(static_cast<int>(x[j] * id + 16.5f), 0, 31);
      kv_pack5(q, b->qh, b->qs);
      break;
    }
    case KvType::Q3_0: {
      auto* b = reinterpret_cast<BlockQ3_0*>(dst);
      const float id = kv_symmetric_scale(x, 4.0f, &b->d);
      uint8_t qs[kQK / 4] = {}, qh[kQK / 8] = {};
      for (int j = 0; j < kQK; ++j) {
        const int q = kv_clamp(static_cast<int>(x[j] * id + 4.5f), 0, 7);
        qs[j % 8] = static_cast<uint8_t>(qs[j % 8] | ((q & 3) << (2 * (j / 8))));
        qh[j / 8] = static_cast<uint8_t>(qh[j / 8] | ((q >> 2) << (j % 8)));
      }
      for (int k = 0; k < kQK / 4; ++k) b->qs[k] = qs[k];
      for (int k = 0; k < kQK / 8; ++k) b->qh[k] = qh[k];
      break;
    }
    case KvType::F32:
    case KvType::F16: break;  // not block types: stored element by element
  }
}

// A query block in the key type's vec_dot_type: quants qs, scale d (fp16-rounded) and, for
// q8_1, s = d * sum(qs) (fp16-rounded, from d before its rounding).
TOVA_HD void quantize_query_block(const float* x, int8_t* qs, float* d, float* s) {
  const float dr = kv_q8_block(x, qs);
  int sum = 0;
  for (int j = 0; j < kQK; ++j) sum += qs[j];
  *d = half_to_float(float_to_half(dr));
  *s = half_to_float(float_to_half(dr * static_cast<float>(sum)));
}

// Element i of a quantized key row as the integer product sees it: value = d * q (+ m).
struct KeyQuant {
  int q;
  float d;
  float m;
};

// Q4_1 and Q5_1 keys have a minimum (their vec_dot_type is q8_1).
TOVA_HD bool key_has_min(KvType t) { return t == KvType::Q4_1 || t == KvType::Q5_1; }

TOVA_HD KeyQuant key_quant(KvType t, const uint8_t* row, int64_t i) {
  const int64_t blk = i / kQK;
  const int j = static_cast<int>(i % kQK);
  switch (t) {
    case KvType::Q8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(row) + blk;
      return {b->qs[j], half_to_float(b->d), 0.0f};
    }
    case KvType::Q4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(row) + blk;
      return {nibble32(b->qs, j) - 8, half_to_float(b->d), 0.0f};
    }
    case KvType::Q4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(row) + blk;
      return {nibble32(b->qs, j), half_to_float(b->d), half_to_float(b->m)};
    }
    case KvType::Q5_0: {
      const auto* b = reinterpret_cast<const BlockQ5_0*>(row) + blk;
      return {(nibble32(b->qs, j) | (bit32(b->qh, j) << 4)) - 16, half_to_float(b->d), 0.0f};
    }
    case KvType::Q5_1: {
      const auto* b = reinterpret_cast<const BlockQ5_1*>(row) + blk;
      return {nibble32(b->qs, j) | (bit32(b->qh, j) << 4), half_to_float(b->d), half_to_float(b->m)};
    }
    default: return {0, 0.0f, 0.0f};  // keys are never Q3_0 (EngineParams refuses it), nor float here
  }
}

// One block's share of a score, vec_dot's arithmetic: sumi = sum over the block of key q * query
// q, times the two scales, plus the key's minimum times the query's scaled sum where it has one.
TOVA_HD float key_block_score(int sumi, const KeyQuant& k, float qd, float qs, bool has_min) {
  const float v = static_cast<float>(sumi) * (k.d * qd);
  return has_min ? v + k.m * qs : v;
}

}  // namespace cuda
}  // namespace tova
