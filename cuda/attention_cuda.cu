// Attention of query rows over each sequence's slot pool on the GPU: one block per (row, query
// heads sharing a K/V head, GQA), so that each K and V row is read once for all of them; scores
// one warp per key, a block-wide softmax per head, then the weighted sums of values, each warp
// over a share of the slots, lanes over the head's elements. Writes the probabilities the
// policies read when the row asks for them. Per head, every sum is taken in the order of the
// one-head-per-block kernel it replaces: the same values. K/V rows of any KvType (kv_quant.cuh):
// quantized keys are scored as the CPU scores them, by integer products with the query
// quantized block by block; quantized values are decoded element by element.
#include <cuda_fp16.h>

#include "cuda_check.h"
#include "hadamard.cuh"
#include "kv_quant.cuh"
#include "launch.cuh"
#include "ops_cuda.h"
#include "warp.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 256;  // the weighted sum's registers and shared memory
constexpr int kMaxGroup = 8;      // query heads per block (sharing one K/V head)

// How the kernel reads a K or V row: float elements, half elements, or a quantized type.
enum KvKind { kKindF32, kKindF16, kKindQuant };

KvKind kind_of(KvType t) { return t == KvType::F32 ? kKindF32 : t == KvType::F16 ? kKindF16 : kKindQuant; }

template <int kKind>
__device__ __forceinline__ float load(KvType t, const uint8_t* row, int e) {
  if (kKind == kKindF16) return half_to_float(reinterpret_cast<const uint16_t*>(row)[e]);
  if (kKind == kKindF32) return reinterpret_cast<const float*>(row)[e];
  return kv_elem(t, row, e);
}

__device__ float block_reduce(float v, bool is_max, float* shared) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, u) : v + u;
  }
  const int warp = threadIdx.x / kWarp;
  __syncthreads();  // shared is reused between calls
  if (threadIdx.x % kWarp == 0) shared[warp] = v;
  __syncthreads();
  float r = shared[0];
  for (int i = 1; i < kThreads / kWarp; ++i) r = is_max ? fmaxf(r, shared[i]) : r + shared[i];
  return r;
}

template <int kKey, int kValue>
__global__ void attend_kernel(const KvFormat f, const AttnDesc* rows, const int32_t* idx_all, int n_head, int group,
                              int per_block, int head_dim, float scale, int max_idx, float* scratch, float* probs) {
  const AttnDesc r = rows[blockIdx.x];
  const int h0 = blockIdx.y * per_block;  // this block's first query head
  const int kvh = h0 / group;             // the K/V head its per_block query heads share
  const int32_t* idx = idx_all + r.idx_off;
  const int64_t head0 = static_cast<int64_t>(kvh) * r.n_slots;  // first row of this KV head
  const auto* k_rows = static_cast<const uint8_t*>(r.k);
  const auto* v_rows = static_cast<const uint8_t*>(r.v);
  float* s0 = scratch + (static_cast<int64_t>(blockIdx.x) * n_head + h0) * max_idx;  // head h0 + g at g * max_idx
  __shared__ float qs[kMaxGroup][kMaxHeadDim];
  __shared__ float red[kThreads / kWarp];
  __shared__ float part[kThreads / kWarp][kMaxHeadDim];
  for (int t = threadIdx.x; t < per_block * head_dim; t += kThreads)
    qs[t / head_dim][t % head_dim] = r.q[static_cast<int64_t>(h0) * head_dim + t];
  if (f.hadamard_k) hadamard_shared(&qs[0][0], head_dim, per_block, kMaxHeadDim);  // keys are stored rotated
  // Quantized keys: each query block quantized to the key type's vec_dot_type, as the CPU does.
  constexpr int kMaxBlocks = kMaxHeadDim / kQK;
  __shared__ int8_t qq[kKey == kKindQuant ? kMaxGroup : 1][kMaxHeadDim];
  __shared__ float qd[kKey == kKindQuant ? kMaxGroup : 1][kMaxBlocks], qsum[kKey == kKindQuant ? kMaxGroup : 1][kMaxBlocks];
  const int n_blocks = head_dim / kQK;
  if (kKey == kKindQuant) {
    __syncthreads();
    for (int b = threadIdx.x; b < per_block * n_blocks; b += kThreads) {
      const int g = b / n_blocks, t = b % n_blocks;
      quantize_query_block(&qs[g][t * kQK], &qq[g][t * kQK], &qd[g][t], &qsum[g][t]);
    }
  }
  __syncthreads();

  // Scores: warp w takes the keys j = w, w + kWarps, ...; each key row is read once for the
  // block's query heads.
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const bool has_min = key_has_min(f.k);
  for (int j = warp; j < r.n_idx; j += kThreads / kWarp) {
    const uint8_t* krow = k_rows + (head0 + idx[j]) * static_cast<int64_t>(f.k_row_bytes);
    float acc[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) acc[g] = 0.0f;
    if constexpr (kKey == kKindQuant) {
      // Block t: lane l holds element l; its integer sum, then vec_dot's float step, in block
      // order (every lane ends with the same sums).
      for (int t = 0; t < n_blocks; ++t) {
        const int e = t * kQK + lane;
        const KeyQuant kq = key_quant(f.k, krow, e);
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g) {
          if (g >= per_block) break;  // per_block is the same for the whole warp
          const int sumi = warp_sum(kq.q * static_cast<int>(qq[g][e]));
          acc[g] += key_block_score(sumi, kq, qd[g][t], qsum[g][t], has_min);
        }
      }
    } else {
      for (int e = lane; e < head_dim; e += kWarp) {
        const float kv = load<kKey>(f.k, krow, e);
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g)
          if (g < per_block) acc[g] = fmaf(qs[g][e], kv, acc[g]);
      }
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g >= per_block) break;  // per_block is the same for the whole warp
        acc[g] = warp_sum(acc[g]);
      }
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= per_block) break;
      if (lane == 0) s0[static_cast<int64_t>(g) * max_idx + j] = acc[g] * scale;
    }
  }
  __syncthreads();
  // A block-wide softmax per query head.
  for (int g = 0; g < per_block; ++g) {
    float* s = s0 + static_cast<int64_t>(g) * max_idx;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < r.n_idx; j += kThreads) mx = fmaxf(mx, s[j]);
    mx = block_reduce(mx, true, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < r.n_idx; j += kThreads) {
      const float p = expf(s[j] - mx);
      s[j] = p;
      sum += p;
    }
    const float inv = 1.0f / block_reduce(sum, false, red);
    for (int j = threadIdx.x; j < r.n_idx; j += kThreads) s[j] *= inv;
  }
  __syncthreads();
  if (r.probs_off >= 0) {
    for (int g = 0; g < per_block; ++g) {
      float* pr = probs + r.probs_off + static_cast<int64_t>(h0 + g) * r.n_idx;
      const float* s = s0 + static_cast<int64_t>(g) * max_idx;
      for (int j = threadIdx.x; j < r.n_idx; j += kThreads) pr[j] = s[j];
    }
  }
  // Weighted sum of values: warp w sums the slots j = w, w + kWarps, ... (each value row read
  // once for the block's query heads), lane l the elements l, l + 32, ...; then, head by head,
  // the warps' partial sums are added.
  float acc[kMaxGroup][kMaxHeadDim / kWarp];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
    for (int t = 0; t < kMaxHeadDim / kWarp; ++t) acc[g][t] = 0.0f;
  for (int j = warp; j < r.n_idx; j += kThreads / kWarp) {
    const uint8_t* vrow = v_rows + (head0 + idx[j]) * static_cast<int64_t>(f.v_row_bytes);
    float p[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) p[g] = g < per_block ? s0[static_cast<int64_t>(g) * max_idx + j] : 0.0f;
#pragma unroll
    for (int t = 0; t < kMaxHeadDim / kWarp; ++t) {
      const int e = lane + kWarp * t;
      if (e >= head_dim) break;
      const float v = load<kValue>(f.v, vrow, e);
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
        if (g < per_block) acc[g][t] = fmaf(p[g], v, acc[g][t]);
    }
  }
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= per_block) break;  // the same for every thread of the block
#pragma unroll
    for (int t = 0; t < kMaxHeadDim / kWarp; ++t) {
      const int e = lane + kWarp * t;
      if (e < head_dim) part[warp][e] = acc[g][t];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < head_dim; e += kThreads) {
      float sum = part[0][e];
      for (int w = 1; w < kThreads / kWarp; ++w) sum += part[w][e];
      if (f.hadamard_v)
        qs[g][e] = sum;  // the queries are no longer needed: the sums wait there to be rotated back
      else
        r.out[static_cast<int64_t>(h0 + g) * head_dim + e] = sum;
    }
    __syncthreads();  // part is rewritten for the next head
  }
  if (!f.hadamard_v) return;  // the same for the whole block
  hadamard_shared(&qs[0][0], head_dim, per_block, kMaxHeadDim);  // values are stored rotated: H is its own inverse
  for (int t = threadIdx.x; t < per_block * head_dim; t += kThreads)
    r.out[static_cast<int64_t>(h0) * head_dim + t] = qs[t / head_dim][t % head_dim];
}

// A candidate of the victim selection: the slot's key (head mean or policy state) and position,
// at index j of the row (-1: none). a before b: lower key, then lower position; none last.
struct Candidate {
  float mean;
  int32_t pos;
  int j;
};

__device__ __forceinline__ bool before(const Candidate& a, const Candidate& b) {
  if (a.j < 0 || b.j < 0) return b.j < 0 && a.j >= 0;
  if (a.mean != b.mean) return a.mean < b.mean;
  return a.pos < b.pos;
}

// The first candidate of the block in that order, in every thread.
__device__ Candidate block_first(Candidate c, Candidate* shared) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    Candidate u;
    u.mean = __shfl_xor_sync(0xffffffffu, c.mean, o);
    u.pos = __shfl_xor_sync(0xffffffffu, c.pos, o);
    u.j = __shfl_xor_sync(0xffffffffu, c.j, o);
    if (before(u, c)) c = u;
  }
  __syncthreads();  // shared is reused between calls
  if (threadIdx.x % kWarp == 0) shared[threadIdx.x / kWarp] = c;
  __syncthreads();
  Candidate r = shared[0];
  for (int i = 1; i < kThreads / kWarp; ++i)
    if (before(shared[i], r)) r = shared[i];
  return r;
}

__global__ void head_mean_kernel(const AttnDesc* rows, int n_head, float inv_head, const float* probs,
                                 float* means, const int32_t* idx_all, int32_t* victims) {
  const AttnDesc r = rows[blockIdx.x];
  if (r.mean_off < 0) return;
  const float* p = probs + r.probs_off;
  float* mean = means + r.mean_off;
  for (int j = threadIdx.x; j < r.n_idx; j += blockDim.x) {
    float m = 0.0f;
    for (int h = 0; h < n_head; ++h) m += p[static_cast<int64_t>(h) * r.n_idx + j];
    mean[j] = m * inv_head;
  }
  if (r.rule == BuiltinRule::None) return;
  // The policy's state, kv_policy.cpp's arithmetic (no fused multiply-add), each thread its own
  // slots as above.
  const int32_t* idx = idx_all + r.idx_off;
  if (r.rule == BuiltinRule::H2o)
    for (int j = threadIdx.x; j < r.n_idx; j += blockDim.x) r.state[idx[j]] += mean[j];
  if (r.rule == BuiltinRule::TovaEma) {
    const float a = kTovaEmaDecay, b = 1.0f - kTovaEmaDecay;
    for (int j = threadIdx.x; j < r.n_idx; j += blockDim.x) {
      float& st = r.state[idx[j]];
      st = idx[j] == r.new_slot ? mean[j] : __fadd_rn(__fmul_rn(a, st), __fmul_rn(b, mean[j]));
    }
  }
  if (r.n_evict <= 0) return;
  // The victims one by one, each the first candidate after the one chosen before it (positions
  // are distinct: the order is total), so that nothing chosen needs marking.
  __shared__ Candidate red[kThreads / kWarp];
  __syncthreads();  // every mean and state written
  const int32_t* pos = idx_all + r.sel_off;
  const bool by_state = r.rule != BuiltinRule::Tova;
  Candidate last{0.0f, 0, -1};
  for (int k = 0; k < r.n_evict; ++k) {
    Candidate best{0.0f, 0, -1};
    for (int j = threadIdx.x; j < r.n_idx; j += blockDim.x) {
      const Candidate c{by_state ? r.state[idx[j]] : mean[j], pos[j], j};
      if (c.pos < 0 || (last.j >= 0 && !before(last, c))) continue;
      if (before(c, best)) best = c;
    }
    best = block_first(best, red);
    if (threadIdx.x == 0) victims[r.victims_off + k] = best.j < 0 ? -1 : idx[best.j];
    if (best.j < 0) {  // fewer candidates than victims (the same for every thread)
      for (int e = k + 1 + threadIdx.x; e < r.n_evict; e += blockDim.x) victims[r.victims_off + e] = -1;
      return;
    }
    last = best;
  }
}

}  // namespace

void head_mean(cudaStream_t s, const AttnDesc* rows, int n_rows, int n_head, float inv_head, const float* probs,
               float* means, const int32_t* idx, int32_t* victims) {
  if (n_rows <= 0) return;
  TOVA_LAUNCH(head_mean_kernel, static_cast<unsigned>(n_rows), kThreads, s)(rows, n_head, inv_head, probs, means, idx,
                                                                         victims);
  check_launch("head_mean");
}

namespace {

template <int kKey, int kValue>
void launch_attend(cudaStream_t s, const KvFormat& f, dim3 grid, const AttnDesc* rows, const int32_t* idx, int n_head,
                   int group, int per_block, int head_dim, float scale, int max_idx, float* scratch, float* probs) {
  TOVA_LAUNCH((attend_kernel<kKey, kValue>), grid, kThreads, s)(f, rows, idx, n_head, group, per_block, head_dim, scale,
                                                               max_idx, scratch, probs);
}

template <int kKey>
void launch_attend_v(KvKind value, cudaStream_t s, const KvFormat& f, dim3 grid, const AttnDesc* rows,
                     const int32_t* idx, int n_head, int group, int per_block, int head_dim, float scale, int max_idx,
                     float* scratch, float* probs) {
  switch (value) {
    case kKindF32:
      return launch_attend<kKey, kKindF32>(s, f, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                           scratch, probs);
    case kKindF16:
      return launch_attend<kKey, kKindF16>(s, f, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                           scratch, probs);
    case kKindQuant:
      return launch_attend<kKey, kKindQuant>(s, f, grid, rows, idx, n_head, group, per_block, head_dim, scale,
                                             max_idx, scratch, probs);
  }
}

}  // namespace

void attend(cudaStream_t s, const KvFormat& f, const AttnDesc* rows, int n_rows, const int32_t* idx, int n_head,
            int n_head_kv, int head_dim, float scale, int max_idx, float* scratch, float* probs) {
  if (n_rows <= 0) return;
  if (head_dim > kMaxHeadDim)
    throw Error(cat("CUDA attention: head_dim ", head_dim, " > ", kMaxHeadDim, " is not supported"));
  if ((kv_quantized(f.k) || kv_quantized(f.v)) && head_dim % kQK != 0)
    throw Error(cat("CUDA attention: head_dim ", head_dim, " is not a multiple of the quantized block (", kQK, ")"));
  if ((f.hadamard_k || f.hadamard_v) && (head_dim & (head_dim - 1)) != 0)
    throw Error(cat("CUDA attention: a rotated K/V needs a power-of-two head_dim, not ", head_dim));
  if (f.k == KvType::Q3_0) throw Error("CUDA attention: keys are never q3_0");
  // A block per (row, run of query heads sharing a K/V head): up to kMaxGroup heads, a divisor
  // of the group so that a block never straddles two K/V heads.
  const int group = n_head / n_head_kv;
  int per_block = 1;
  for (int d = 1; d <= kMaxGroup && d <= group; ++d)
    if (group % d == 0) per_block = d;
  const dim3 grid(static_cast<unsigned>(n_rows), static_cast<unsigned>(n_head / per_block));
  const KvKind value = kind_of(f.v);
  switch (kind_of(f.k)) {
    case kKindF32:
      launch_attend_v<kKindF32>(value, s, f, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                scratch, probs);
      break;
    case kKindF16:
      launch_attend_v<kKindF16>(value, s, f, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                scratch, probs);
      break;
    case kKindQuant:
      launch_attend_v<kKindQuant>(value, s, f, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                  scratch, probs);
      break;
  }
  check_launch("attend");
}

}  // namespace cuda
}  // namespace tova
