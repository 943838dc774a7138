// The row operations a kernel of their own does one block a row (rms_norm_kernel,
// quantize_kernel) and a decode-step product does in its last block (Tail, ops_cuda.h): the same
// device code, so the same floats and bytes either way.
//
// The last block: every block writes its part of the product, fences, and counts itself done on
// the tail's counter; the one that counts last (in whatever order the blocks ran) fences again
// and reads what all of them wrote (the threadFenceReduction pattern of the CUDA programming
// guide; nvcc makes sm_90's fence MEMBAR.SC.GPU with an L1 invalidation, CCTL.IVALL), then puts
// the counter back to zero for the next launch. No block waits for another.
#pragma once

#include "act_quant.cuh"
#include "kv_write.cuh"
#include "ops_cuda.h"
#include "warp.cuh"

namespace tova {
namespace cuda {

// Row `row` of x (q.cols wide) quantized into q in blocks of `block` (32 or 256), a warp a block.
__device__ inline void quantize_row(const float* x, ActRows q, int block, int64_t row) {
  const int lane = threadIdx.x % kWarp;
  const float* xr = x + row * q.cols;
#pragma unroll 1
  for (int64_t b = threadIdx.x / kWarp; b < q.cols / block; b += blockDim.x / kWarp) {
    if (block == kQK)
      quantize_q8_32(xr, q, row, b, lane);
    else
      quantize_q8_256(xr, q, row, b, lane);
  }
}

// Threads of a block that norms rows, in its own kernel or as a product's tail (the matrix-vector
// kernels' blocks: matvec_rows.cuh): each thread's share of a row's sum of squares, and so the
// norm, the same either way.
constexpr int kNormThreads = 128;

// Row `row` of x (x += a first where a is set) written as rms_norm(x) * w into y (w null: no
// weight; x == y allowed), and with `block` 32 or 256 y also quantized into q (0: not). Every
// thread of the block calls it; blockDim.x kNormThreads.
__device__ inline void norm_row(float* x, const float* a, const float* w, float* y, int64_t width, float eps, ActRows q,
                                int block, int64_t row) {
  float* xr = x + row * width;
  float* yr = y + row * width;
  __shared__ double part[kWarp];
  double ss = 0.0;
  if (a) {  // each thread updates, then reads back, its own elements
    const float* ar = a + row * width;
    for (int64_t e = threadIdx.x; e < width; e += blockDim.x) xr[e] += ar[e];
  }
  for (int64_t e = threadIdx.x; e < width; e += blockDim.x) ss += static_cast<double>(xr[e]) * xr[e];
  for (int o = kWarp / 2; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % kWarp == 0) part[threadIdx.x / kWarp] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int i = 0; i < static_cast<int>(blockDim.x / kWarp); ++i) t += part[i];
    part[0] = t;
  }
  __syncthreads();
  const float scale = static_cast<float>(1.0 / sqrt(part[0] / static_cast<double>(width) + eps));
  for (int64_t e = threadIdx.x; e < width; e += blockDim.x) {
    const float s = xr[e] * scale;
    yr[e] = w ? s * w[e] : s;
  }
  __syncthreads();  // y of the whole row written; part free for the next row
  if (block != 0) quantize_row(y, q, block, row);  // q.cols == width
}

// True in the block that finishes last of the `blocks` counted on `counter`, once the writes of
// every one of them are visible to it. Every thread of each of those blocks calls it, after its
// last write.
// One thread fences for the block, as cooperative groups' grid sync does: the barrier orders
// every thread's writes before thread 0's fence and count, and thread 0's fence after the count
// (which also drops the multiprocessor's L1 lines) before every thread's reads.
__device__ inline bool last_block(unsigned* counter, unsigned blocks) {
  __shared__ unsigned is_last;
  __syncthreads();  // every thread's writes, before the block counts itself done
  if (threadIdx.x == 0) {
    __threadfence();
    is_last = atomicAdd(counter, 1u) == blocks - 1 ? 1u : 0u;
    if (is_last) {
      atomicExch(counter, 0u);  // every block has counted: ready for the next launch
      __threadfence();          // what the other blocks wrote, before this block reads it
    }
  }
  __syncthreads();
  const bool last = is_last != 0;
  __syncthreads();  // is_last read by every thread before anyone could rewrite it
  return last;
}

// The tail of a kernel (Tail, ops_cuda.h), run by its last block. Every thread of every block
// calls it at the kernel's end.
__device__ inline void run_tail(const Tail& t) {
  if (t.kind == Tail::None || !last_block(t.counter, gridDim.x * gridDim.y * gridDim.z)) return;
  if (t.kind == Tail::Store) {
#pragma unroll 1
    for (int64_t i = 0; i < t.n_writes; ++i) write_row(t.kv, t.writes, i, t.n_head_kv, t.head_dim, t.rope);
    return;
  }
#pragma unroll 1
  for (int64_t i = 0; i < t.rows; ++i) {
    if (t.kind == Tail::Norm)
      norm_row(t.x, t.a, t.w, t.y, t.width, __int_as_float(static_cast<int>(t.eps_bits)), t.q, t.quant_block, i);
    else
      quantize_row(t.x, t.q, t.quant_block, i);
  }
}

}  // namespace cuda
}  // namespace tova
