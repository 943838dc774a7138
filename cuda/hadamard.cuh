// The orthonormal Walsh-Hadamard rotation of quantized K/V rows (KvLayout::hadamard_k / _v) on the
// device, for vectors in shared memory: the CPU's hadamard (cpu/kv_cpu.cpp) operation for
// operation (each stage's sums and differences, then the scale 1 / sqrt(n)), so the same bits.
#pragma once

namespace tova {
namespace cuda {

// x_v <- H x_v / sqrt(n) for the `count` vectors x_v = x + v * stride (n a power of two), the
// block's threads over the pairs of each stage. Every thread of the block calls it; it begins
// and ends with a barrier.
__device__ inline void hadamard_shared(float* x, int n, int count, int stride) {
  const int half = n / 2;
  for (int h = 1; h < n; h *= 2) {
    __syncthreads();
    for (int p = threadIdx.x; p < count * half; p += blockDim.x) {
      const int k = p % half;
      float* y = x + (p / half) * stride;
      const int i = (k / h) * 2 * h + k % h;
      const float a = y[i], b = y[i + h];
      y[i] = a + b;
      y[i + h] = a - b;
    }
  }
  __syncthreads();
  const float s = 1.0f / sqrtf(static_cast<float>(n));
  for (int p = threadIdx.x; p < count * n; p += blockDim.x) x[(p / n) * stride + p % n] *= s;
  __syncthreads();
}

// The same for one vector, by the 32 lanes of a warp (every lane calls it; it begins and ends
// with a warp barrier).
__device__ inline void hadamard_warp(float* x, int n) {
  const int lane = threadIdx.x % 32, half = n / 2;
  for (int h = 1; h < n; h *= 2) {
    __syncwarp();
    for (int k = lane; k < half; k += 32) {
      const int i = (k / h) * 2 * h + k % h;
      const float a = x[i], b = x[i + h];
      x[i] = a + b;
      x[i + h] = a - b;
    }
  }
  __syncwarp();
  const float s = 1.0f / sqrtf(static_cast<float>(n));
  for (int i = lane; i < n; i += 32) x[i] *= s;
  __syncwarp();
}

}  // namespace cuda
}  // namespace tova
