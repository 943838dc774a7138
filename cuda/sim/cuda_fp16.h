// __half for the simulator (cuda/sim/cuda_runtime.h): the conversions are the CPU's
// (cpp/src/quant.h), which round to nearest even as the device's __float2half_rn does.
#pragma once

#include <cstdint>

#include "quant.h"

struct __half {
  uint16_t x;
};

inline float __half2float(__half h) { return tova::fp16_to_fp32(h.x); }
inline __half __float2half_rn(float f) { return __half{tova::fp32_to_fp16(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
