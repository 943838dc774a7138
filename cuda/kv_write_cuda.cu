// Storing K/V rows on the device: a layer's new rows of every sequence in one launch, one block
// per row, each head's key and value vector converted to the sequence's K/V types as the CPU
// backend stores them (cpu/kv_cpu.cpp): f32, f16, or quantized blocks, rotated first where the
// format says so. The same bytes as the CPU's, so the two backends hold the same cache. The
// step's RoPE rotation of those rows may be done here first (WriteRope). And the
// demotion of a slot from the upper KV tier to the lower one, converted as the CPU converts it.
#include <cuda_fp16.h>

#include "cuda_check.h"
#include "hadamard.cuh"
#include "kv_quant.cuh"
#include "launch.cuh"
#include "ops_cuda.h"
#include "rope_pair.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxHeadDim = 256;

__device__ __forceinline__ void store_float(KvType t, uint8_t* row, int e, float x) {
  if (t == KvType::F16)
    reinterpret_cast<uint16_t*>(row)[e] = float_to_half(x);
  else
    reinterpret_cast<float*>(row)[e] = x;
}

// One head_dim vector x (shared memory, every thread of the block calling) stored at `row` in
// type t, rotated first when `rotate` (x is rotated in place).
__device__ void store_row(KvType t, bool rotate, float* x, int head_dim, uint8_t* row, size_t row_bytes) {
  if (rotate) hadamard_shared(x, head_dim, 1, head_dim);
  if (!kv_quantized(t)) {
    for (int e = threadIdx.x; e < head_dim; e += blockDim.x) store_float(t, row, e, x[e]);
    return;
  }
  const int n_blocks = head_dim / kQK;
  const size_t block_bytes = row_bytes / static_cast<size_t>(n_blocks);
  for (int b = threadIdx.x; b < n_blocks; b += blockDim.x) quantize_kv_block(t, x + b * kQK, row + b * block_bytes);
}

__global__ void write_kv_kernel(const KvFormat f, const KvWrite* writes, int n_head_kv, int head_dim,
                                const WriteRope rope) {
  const KvWrite w = writes[blockIdx.x];
  if (rope.pairs > 0) {  // row blockIdx.x of q and k rotated first (the keys this block stores)
    const int64_t i = blockIdx.x;
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
  __shared__ float x[kMaxHeadDim];
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

__global__ void demote_kv_kernel(const KvFormat hi, const KvFormat lo, const KvDemote* demotes, int n_head_kv,
                                 int head_dim) {
  const KvDemote d = demotes[blockIdx.x];
  __shared__ float x[kMaxHeadDim];
  for (int h = 0; h < n_head_kv; ++h)
    for (int part = 0; part < 2; ++part) {
      const bool key = part == 0;
      const KvType from = key ? hi.k : hi.v, to = key ? lo.k : lo.v;
      const bool rotated = key ? hi.hadamard_k : hi.hadamard_v, rotate = key ? lo.hadamard_k : lo.hadamard_v;
      const bool stays = rotated && rotate;  // rotated in both tiers: no round trip through the rotation
      const size_t hi_bytes = key ? hi.k_row_bytes : hi.v_row_bytes, lo_bytes = key ? lo.k_row_bytes : lo.v_row_bytes;
      const uint8_t* src = static_cast<const uint8_t*>(key ? d.k_hi : d.v_hi) +
                           (static_cast<int64_t>(h) * d.n_hi + d.src) * static_cast<int64_t>(hi_bytes);
      uint8_t* dst = static_cast<uint8_t*>(key ? d.k_lo : d.v_lo) +
                     (static_cast<int64_t>(h) * d.n_lo + d.dst) * static_cast<int64_t>(lo_bytes);
      __syncthreads();  // the previous vector is stored: x is free
      for (int e = threadIdx.x; e < head_dim; e += blockDim.x) x[e] = kv_elem(from, src, e);
      __syncthreads();
      if (rotated && !stays) hadamard_shared(x, head_dim, 1, head_dim);  // back: H is its own inverse
      store_row(to, rotate && !stays, x, head_dim, dst, lo_bytes);
    }
}

}  // namespace

void demote_kv(Queue s, const KvFormat& hi, const KvFormat& lo, const KvDemote* demotes, int n, int n_head_kv,
               int head_dim) {
  if (n <= 0) return;
  if (head_dim > kMaxHeadDim) throw Error(cat("CUDA demote_kv: head_dim ", head_dim, " > ", kMaxHeadDim));
  for (KvType t : {hi.k, hi.v, lo.k, lo.v})
    if (kv_quantized(t) && head_dim % kQK != 0)
      throw Error(cat("CUDA demote_kv: head_dim ", head_dim, " is not a multiple of the quantized block (", kQK, ")"));
  TOVA_LAUNCH(demote_kv_kernel, static_cast<unsigned>(n), kThreads, s)(hi, lo, demotes, n_head_kv, head_dim);
  check_launch(s, "demote_kv");
}

void write_kv(Queue s, const KvFormat& f, const KvWrite* writes, int n, int n_head_kv, int head_dim,
              const WriteRope& rope) {
  if (n <= 0) return;
  if (head_dim > kMaxHeadDim) throw Error(cat("CUDA write_kv: head_dim ", head_dim, " > ", kMaxHeadDim));
  if ((kv_quantized(f.k) || kv_quantized(f.v)) && head_dim % kQK != 0)
    throw Error(cat("CUDA write_kv: head_dim ", head_dim, " is not a multiple of the quantized block (", kQK, ")"));
  TOVA_LAUNCH(write_kv_kernel, static_cast<unsigned>(n), kThreads, s)(f, writes, n_head_kv, head_dim, rope);
  check_launch(s, "write_kv");
}

}  // namespace cuda
}  // namespace tova
