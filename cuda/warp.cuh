// Warp-level helpers shared by the CUDA kernels.
#pragma once

namespace tova {
namespace cuda {

constexpr int kWarp = 32;

// The sum of v over the 32 lanes of a warp, in every lane (all lanes must take part).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The same for integers (exact in any order).
__device__ __forceinline__ int warp_sum(int v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace cuda
}  // namespace tova
