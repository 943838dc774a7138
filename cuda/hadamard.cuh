// The orthonormal Walsh-Hadamard rotation of quantized K/V rows (KvLayout::hadamard_k / _v) on the
// device, for vectors in shared memory: the CPU's hadamard (cpu/kv_cpu.cpp) operation for
// operation (each stage's sums and differences, then the scale 1 / sqrt(n)), so the same bits.
#pragma once

namespace tova {
namespace cuda {

struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};
struct WarpSync {
  __device__ void operator()() const { __syncwarp(); }
};

// x_v <- H x_v / sqrt(n) for the `count` vectors x_v = x + v * stride (n a power of two), thread
// `tid` of `n_threads` taking its share of each stage's pairs; `sync` is their barrier, called
// before the first stage, between stages and at the end.
template <class Sync>
__device__ __forceinline__ void hadamard_by(float* x, int n, int count, int stride, int tid, int n_threads, Sync sync) {
  const int half = n / 2;
  for (int h = 1; h < n; h *= 2) {
    sync();
    for (int p = tid; p < count * half; p += n_threads) {
      const int k = p % half;
      float* y = x + (p / half) * stride;
      const int i = (k / h) * 2 * h + k % h;
      const float a = y[i], b = y[i + h];
      y[i] = a + b;
      y[i + h] = a - b;
    }
  }
  sync();
  const float s = 1.0f / sqrtf(static_cast<float>(n));
  for (int p = tid; p < count * n; p += n_threads) x[(p / n) * stride + p % n] *= s;
  sync();
}

// By the whole block (every thread calls it).
__device__ inline void hadamard_shared(float* x, int n, int count, int stride) {
  hadamard_by(x, n, count, stride, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x), BlockSync{});
}

// One vector by the 32 lanes of a warp (every lane calls it).
__device__ inline void hadamard_warp(float* x, int n) {
  hadamard_by(x, n, 1, n, static_cast<int>(threadIdx.x % 32), 32, WarpSync{});
}

}  // namespace cuda
}  // namespace tova
