// One 8-bit block of a product's input quantized by a warp, as the CPU backend quantizes its
// activations (cpu/quant_legacy.cpp quantize_q8_0 / quantize_q8_1, cpu/quant_kquants.cpp
// quantize_q8_K): the same quants and scales. 32-element blocks one element a lane, 256-element
// blocks eight a lane. Used by the quantizer (act_quant_cuda.cu) and by the RMS norm that
// quantizes what it writes (ops_cuda.cu).
#pragma once

#include "act_quant_cuda.h"
#include "kv_quant.cuh"
#include "warp.cuh"

namespace tova {
namespace cuda {

// q8_0 / q8_1 (32 elements): amax / 127 the scale, round-half-away quants, the scale rounded to
// fp16 (and for q8_1 s = d * sum(quants) from d before its rounding, rounded to fp16).
__device__ inline void quantize_q8_32(const float* x, ActRows a, int64_t i, int64_t b, int lane) {
  const float v = x[b * kQK + lane];
  float amax = fabsf(v);
  for (int o = kWarp / 2; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const int q = static_cast<int>(roundf(v * id));
  a.q[i * a.cols + b * kQK + lane] = static_cast<int8_t>(q);
  const int sum = warp_sum(q);
  if (lane == 0) {
    const int64_t at = i * (a.cols / kQK) + b;
    a.d[at] = half_to_float(float_to_half(d));
    a.s[at] = half_to_float(float_to_half(d * static_cast<float>(sum)));
  }
}

// q8_K (256 elements): the first element of largest magnitude sets the scale's sign, quants
// rint(-127 / max * x) capped at 127, sums of 16 quants, d = 1 / iscale.
__device__ inline void quantize_q8_256(const float* x, ActRows a, int64_t i, int64_t b, int lane) {
  const float* xb = x + b * kQK_K + 8 * lane;
  float v[8];
  for (int k = 0; k < 8; ++k) v[k] = xb[k];
  float amax = 0.0f;
  int first = kQK_K;  // index of the first element of largest magnitude
  for (int k = 0; k < 8; ++k)
    if (fabsf(v[k]) > amax) {
      amax = fabsf(v[k]);
      first = 8 * lane + k;
    }
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const float am = __shfl_xor_sync(0xffffffffu, amax, o);
    const int fi = __shfl_xor_sync(0xffffffffu, first, o);
    if (am > amax || (am == amax && fi < first)) {
      amax = am;
      first = fi;
    }
  }
  int8_t* q = a.q + i * a.cols + b * kQK_K + 8 * lane;
  int* bsum = a.bsum + i * (a.cols / 16) + b * (kQK_K / 16);
  const int64_t at = i * (a.cols / kQK_K) + b;
  if (amax == 0.0f) {  // the CPU zeroes the block
    for (int k = 0; k < 8; ++k) q[k] = 0;
    if (lane % 2 == 0) bsum[lane / 2] = 0;
    if (lane == 0) a.d[at] = 0.0f;
    return;
  }
  const float max = __shfl_sync(0xffffffffu, v[first % 8], first / 8);
  const float iscale = -127.0f / max;
  int s = 0;
  for (int k = 0; k < 8; ++k) {
    const int r = static_cast<int>(rintf(__fmul_rn(iscale, v[k])));
    q[k] = static_cast<int8_t>(r < 127 ? r : 127);
    s += r < 127 ? r : 127;
  }
  s += __shfl_xor_sync(0xffffffffu, s, 1);  // lanes 2g and 2g + 1 hold the 16 elements of group g
  if (lane % 2 == 0) bsum[lane / 2] = s;
  if (lane == 0) a.d[at] = 1.0f / iscale;
}

}  // namespace cuda
}  // namespace tova
