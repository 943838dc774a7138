// Storing K/V rows on the device: a layer's new rows of every sequence in one launch, one block
// per row (kv_write.cuh: each row as the CPU stores it, the step's RoPE rotation first where
// asked). And the demotion of a slot from the upper KV tier to the lower one, converted as the
// CPU converts it.
#include "cuda_check.h"
#include "kv_write.cuh"
#include "launch.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxHeadDim = kKvMaxHeadDim;

__global__ void write_kv_kernel(const KvFormat f, const KvWrite* writes, int n_head_kv, int head_dim,
                                const WriteRope rope) {
  write_row(f, writes, blockIdx.x, n_head_kv, head_dim, rope);
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

void check_write_kv(const KvFormat& f, int head_dim) {
  if (head_dim > kMaxHeadDim) throw Error(cat("CUDA write_kv: head_dim ", head_dim, " > ", kMaxHeadDim));
  if ((kv_quantized(f.k) || kv_quantized(f.v)) && head_dim % kQK != 0)
    throw Error(cat("CUDA write_kv: head_dim ", head_dim, " is not a multiple of the quantized block (", kQK, ")"));
}

void write_kv(Queue s, const KvFormat& f, const KvWrite* writes, int n, int n_head_kv, int head_dim,
              const WriteRope& rope) {
  if (n <= 0) return;
  check_write_kv(f, head_dim);
  TOVA_LAUNCH(write_kv_kernel, static_cast<unsigned>(n), kThreads, s)(f, writes, n_head_kv, head_dim, rope);
  check_launch(s, "write_kv");
}

}  // namespace cuda
}  // namespace tova
