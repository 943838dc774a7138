// One K/V row stored on the device as the CPU backend stores it (cpu/kv_cpu.cpp): each head's
// key and value vector converted to the sequence's K/V types (f32, f16, or quantized blocks,
// rotated first where the format says so), the same bytes as the CPU's; the step's RoPE rotation
// of the row done first where asked (WriteRope). Run a block a row by write_kv's kernel
// (kv_write_cuda.cu), or by a product's last block (Tail::Store, tail.cuh).
#pragma once

#include <cuda_fp16.h>

#include "hadamard.cuh"
#include "kv_quant.cuh"
#include "ops_cuda.h"
#include "rope_pair.cuh"

namespace tova {
namespace cuda {

constexpr int kKvMaxHeadDim = 256;

__device__ __forceinline__ void store_float(KvType t, uint8_t* row, int e, float x) {
  if (t == KvType::F16)
    reinterpret_cast<uint16_t*>(row)[e] = float_to_half(x);
  else
    reinterpret_cast<float*>(row)[e] = x;
}

// One head_dim vector x (shared memory, every thread of the block calling) stored at `row` in
// type t, rotated first when `rotate` (x is rotated in place).
__device__ inline void store_row(KvType t, bool rotate, float* x, int head_dim, uint8_t* row, size_t row_bytes) {
  if (rotate) hadamard_shared(x, head_dim, 1, head_dim);
  if (!kv_quantized(t)) {
    for (int e = threadIdx.x; e < head_dim; e += blockDim.x) store_float(t, row, e, x[e]);
    return;
  }
  const int n_blocks = head_dim / kQK;
  const size_t block_bytes = row_bytes / static_cast<size_t>(n_blocks);
  for (int b = threadIdx.x; b < n_blocks; b += blockDim.x) quantize_kv_block(t, x + b * kQK, row + b * block_bytes);
}

// Write i (writes: device memory) stored, row i of the rotation done first where rope.pairs > 0
// (the keys it stores). Every thread of the block calls it.
__device__ inline void write_row(const KvFormat& f, const KvWrite* writes, int64_t i, int n_head_kv, int head_dim,
                                 const WriteRope& rope) {
  const KvWrite w = writes[i];
  if (rope.pairs > 0) {  // row i of q and k rotated first (the keys this block stores)
    const float* c = rope.cs + i * rope.pairs;
    const float* s = rope.sn + i * rope.pairs;
    for (int part = 0; part < 2; ++part) {
      const RopeTarget& tg = part == 0 ? rope.q : rope.k;
      for (int t = threadIdx.x; t < tg.n_heads * rope.pairs; t += blockDim.x) {
        const int h = t / rope.pairs, p = t % rope.pairs;
        rotate_pair(tg.x + (i * tg.n_heads + h) * head_dim, p, rope.pairs, rope.neox != 0, c[p], s[p]);
      }
    }
    __syncthreads();  // the keys rotated before any thread stores them
  }
  if (threadIdx.x == 0 && w.state) w.state[w.slot] = 0.0f;
  auto row = [&](bool key, int h) {
    return static_cast<uint8_t*>(key ? w.k : w.v) +
           (static_cast<int64_t>(h) * w.n_slots + w.slot) * static_cast<int64_t>(key ? f.k_row_bytes : f.v_row_bytes);
  };
  if (!kv_quantized(f.k) && !kv_quantized(f.v)) {  // element by element, every head at once
    for (int t = threadIdx.x; t < n_head_kv * head_dim; t += blockDim.x) {
      const int h = t / head_dim, e = t % head_dim;
      store_float(f.k, row(true, h), e, w.src_k[t]);
      store_float(f.v, row(false, h), e, w.src_v[t]);
    }
    return;
  }
  __shared__ float x[kKvMaxHeadDim];
  for (int h = 0; h < n_head_kv; ++h)
    for (int part = 0; part < 2; ++part) {
      const bool key = part == 0;
      const float* src = (key ? w.src_k : w.src_v) + static_cast<int64_t>(h) * head_dim;
      __syncthreads();  // the previous vector is stored: x is free
      for (int e = threadIdx.x; e < head_dim; e += blockDim.x) x[e] = src[e];
      __syncthreads();
      store_row(key ? f.k : f.v, key ? f.hadamard_k : f.hadamard_v, x, head_dim, row(key, h),
                key ? f.k_row_bytes : f.v_row_bytes);
    }
}

}  // namespace cuda
}  // namespace tova
