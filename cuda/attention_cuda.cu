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
#include "rope_pair.cuh"
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

__host__ __device__ inline KvKind kind_of(KvType t) {
  return t == KvType::F32 ? kKindF32 : t == KvType::F16 ? kKindF16 : kKindQuant;
}

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

constexpr int kMaxBlocks = kMaxHeadDim / kQK;

// The block's query heads as one tier's keys meet them (shared memory): floats, rotated where the
// tier's keys are stored rotated, and for quantized keys the same quantized block by block
// (quants, scales, scaled sums: quantize_query_block).
struct Queries {
  const float (*f)[kMaxHeadDim];
  const int8_t (*q)[kMaxHeadDim];
  const float (*d)[kMaxBlocks];
  const float (*s)[kMaxBlocks];
};

// acc[g] = the dot product of key row `row` (type t) with query head g, in every lane of the warp.
template <int kKind>
__device__ __forceinline__ void key_scores(KvType t, const uint8_t* row, const Queries& q, int per_block, int head_dim,
                                           int lane, float* acc) {
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) acc[g] = 0.0f;
  if constexpr (kKind == kKindQuant) {
    // Block b: lane l holds element l; its integer sum, then vec_dot's float step, in block
    // order (every lane ends with the same sums).
    const bool has_min = key_has_min(t);
    for (int b = 0; b < head_dim / kQK; ++b) {
      const int e = b * kQK + lane;
      const KeyQuant kq = key_quant(t, row, e);
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g >= per_block) break;  // per_block is the same for the whole warp
        const int sumi = warp_sum(kq.q * static_cast<int>(q.q[g][e]));
        acc[g] += key_block_score(sumi, kq, q.d[g][b], q.s[g][b], has_min);
      }
    }
  } else {
    for (int e = lane; e < head_dim; e += kWarp) {
      const float k = load<kKind>(t, row, e);
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
        if (g < per_block) acc[g] = fmaf(q.f[g][e], k, acc[g]);
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= per_block) break;
      acc[g] = warp_sum(acc[g]);
    }
  }
}

// The same for a type known only at run time (the lower tier's).
__device__ __forceinline__ void key_scores_any(KvType t, const uint8_t* row, const Queries& q, int per_block, int head_dim, int lane,
                               float* acc) {
  switch (kind_of(t)) {
    case kKindF32: return key_scores<kKindF32>(t, row, q, per_block, head_dim, lane, acc);
    case kKindF16: return key_scores<kKindF16>(t, row, q, per_block, head_dim, lane, acc);
    case kKindQuant: return key_scores<kKindQuant>(t, row, q, per_block, head_dim, lane, acc);
  }
}

// Keys and values of the upper tier in kinds kKey / kValue (format f); those of a lower tier
// (slots n_hi and up, format f_lo) read through the run-time type.
template <int kKey, int kValue>
__global__ void attend_kernel(const KvFormat f, const KvFormat f_lo, const AttnDesc* rows, const int32_t* idx_all,
                              int n_head, int group, int per_block, int head_dim, float scale, int max_idx,
                              float* scratch, float* probs) {
  const AttnDesc r = rows[blockIdx.x];
  const int h0 = blockIdx.y * per_block;  // this block's first query head
  const int kvh = h0 / group;             // the K/V head its per_block query heads share
  const int32_t* idx = idx_all + r.idx_off;
  const int n_lo = r.n_slots - r.n_hi;
  const bool tiered = n_lo > 0;           // the same for the whole block
  // Row j of this KV head in either tier.
  auto row = [&](bool key, int32_t slot) {
    if (slot < r.n_hi)
      return static_cast<const uint8_t*>(key ? r.k : r.v) +
             (static_cast<int64_t>(kvh) * r.n_hi + slot) * static_cast<int64_t>(key ? f.k_row_bytes : f.v_row_bytes);
    return static_cast<const uint8_t*>(key ? r.k_lo : r.v_lo) +
           (static_cast<int64_t>(kvh) * n_lo + (slot - r.n_hi)) *
               static_cast<int64_t>(key ? f_lo.k_row_bytes : f_lo.v_row_bytes);
  };
  float* s0 = scratch + (static_cast<int64_t>(blockIdx.x) * n_head + h0) * max_idx;  // head h0 + g at g * max_idx
  // The queries as loaded ([0]) and rotated ([1]); later the tiers' weighted sums.
  __shared__ float qf[2][kMaxGroup][kMaxHeadDim];
  __shared__ int8_t qq[2][kMaxGroup][kMaxHeadDim];
  __shared__ float qd[2][kMaxGroup][kMaxBlocks], qsum[2][kMaxGroup][kMaxBlocks];
  __shared__ float red[kThreads / kWarp];
  __shared__ float part[kThreads / kWarp][kMaxHeadDim];
  __shared__ int any_lower;
  const bool ranked = r.ranked != nullptr;  // keys rotated by rank: float rows, no Hadamard rotation
  const bool rot_k[2] = {!ranked && f.hadamard_k, tiered && f_lo.hadamard_k};
  const bool quant_k[2] = {!ranked && kKey == kKindQuant, tiered && kv_quantized(f_lo.k)};
  for (int t = threadIdx.x; t < per_block * head_dim; t += kThreads) {
    const float x = r.q[static_cast<int64_t>(h0) * head_dim + t];
    qf[0][t / head_dim][t % head_dim] = x;
    qf[1][t / head_dim][t % head_dim] = x;
  }
  if (rot_k[0] || rot_k[1]) hadamard_shared(&qf[1][0][0], head_dim, per_block, kMaxHeadDim);  // keys stored rotated
  __syncthreads();
  if (ranked) {  // the query takes the largest rank (Rope::rotate's arithmetic)
    for (int t = threadIdx.x; t < per_block * r.rope_pairs; t += kThreads) {
      const int g = t / r.rope_pairs, p = t % r.rope_pairs;
      rotate_pair(qf[0][g], p, r.rope_pairs, r.rope_neox, r.q_cs[p], r.q_sn[p]);
    }
    __syncthreads();
  }
  // Quantized keys: each query block quantized to the key type's vec_dot_type, as the CPU does
  // (q8_0 and q8_1 share the quants and scale; the scaled sum serves q8_1).
  const int n_blocks = head_dim / kQK;
  for (int v = 0; v < 2; ++v) {
    const bool needed = (quant_k[0] && rot_k[0] == (v == 1)) || (quant_k[1] && rot_k[1] == (v == 1));
    if (!needed) continue;  // the same for the whole block
    for (int b = threadIdx.x; b < per_block * n_blocks; b += kThreads) {
      const int g = b / n_blocks, t = b % n_blocks;
      quantize_query_block(&qf[v][g][t * kQK], &qq[v][g][t * kQK], &qd[v][g][t], &qsum[v][g][t]);
    }
  }
  __syncthreads();
  const Queries q_hi{qf[rot_k[0]], qq[rot_k[0]], qd[rot_k[0]], qsum[rot_k[0]]};
  const Queries q_lo{qf[rot_k[1]], qq[rot_k[1]], qd[rot_k[1]], qsum[rot_k[1]]};

  // Scores: warp w takes the keys j = w, w + kWarps, ...; each key row is read once for the
  // block's query heads.
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int j = warp; j < r.n_idx; j += kThreads / kWarp) {
    float acc[kMaxGroup];
    if (ranked)
      key_scores<kKindF32>(KvType::F32,
                           reinterpret_cast<const uint8_t*>(r.ranked + (static_cast<int64_t>(kvh) * r.n_idx + j) * head_dim),
                           q_hi, per_block, head_dim, lane, acc);
    else if (idx[j] < r.n_hi)
      key_scores<kKey>(f.k, row(true, idx[j]), q_hi, per_block, head_dim, lane, acc);
    else
      key_scores_any(f_lo.k, row(true, idx[j]), q_lo, per_block, head_dim, lane, acc);
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= per_block) break;  // per_block is the same for the whole warp
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
  if (threadIdx.x == 0) any_lower = 0;
  __syncthreads();
  if (tiered)
    for (int j = threadIdx.x; j < r.n_idx; j += kThreads)
      if (idx[j] >= r.n_hi) any_lower = 1;
  // Weighted sums of values, tier by tier: warp w sums the tier's slots among j = w, w + kWarps,
  // ... (each value row read once for the block's query heads), lane l the elements l, l + 32,
  // ...; then, head by head, the warps' partial sums are added into qf[tier] (the queries are no
  // longer needed).
  for (int tier = 0; tier < (tiered ? 2 : 1); ++tier) {
    float acc[kMaxGroup][kMaxHeadDim / kWarp];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
      for (int t = 0; t < kMaxHeadDim / kWarp; ++t) acc[g][t] = 0.0f;
    for (int j = warp; j < r.n_idx; j += kThreads / kWarp) {
      if ((idx[j] >= r.n_hi) != (tier == 1)) continue;
      const uint8_t* vrow = row(false, idx[j]);
      float p[kMaxGroup];
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) p[g] = g < per_block ? s0[static_cast<int64_t>(g) * max_idx + j] : 0.0f;
#pragma unroll
      for (int t = 0; t < kMaxHeadDim / kWarp; ++t) {
        const int e = lane + kWarp * t;
        if (e >= head_dim) break;
        const float v = tier == 0 ? load<kValue>(f.v, vrow, e) : kv_elem(f_lo.v, vrow, e);
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
        qf[tier][g][e] = sum;
      }
      __syncthreads();  // part is rewritten for the next head
    }
  }
  // A tier stored rotated has its sum rotated back (H is its own inverse); the lower tier's sum,
  // where it has slots, is added to the upper's.
  __syncthreads();  // any_lower and the sums are complete
  if (f.hadamard_v) hadamard_shared(&qf[0][0][0], head_dim, per_block, kMaxHeadDim);
  const bool add_lower = tiered && any_lower;
  if (add_lower && f_lo.hadamard_v) hadamard_shared(&qf[1][0][0], head_dim, per_block, kMaxHeadDim);
  for (int t = threadIdx.x; t < per_block * head_dim; t += kThreads) {
    const int g = t / head_dim, e = t % head_dim;
    float o = qf[0][g][e];
    if (add_lower) o += qf[1][g][e];
    r.out[static_cast<int64_t>(h0) * head_dim + t] = o;
  }
}

// Positions "cache_index": block (row, KV head), warp w the keys j = w, w + kWarps, ... of it,
// each decoded into the warp's shared row, rotated back from the Hadamard rotation where stored
// so, rotated by RoPE at rank j and written out as floats (the CPU's order of operations).
__global__ void rank_keys_kernel(const KvFormat f, const AttnDesc* rows, const int32_t* idx_all, int head_dim,
                                 const float* cs, const float* sn) {
  const AttnDesc r = rows[blockIdx.x];
  if (!r.ranked) return;
  const int kvh = blockIdx.y;
  const int32_t* idx = idx_all + r.idx_off;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __shared__ float rows_of[kThreads / kWarp][kMaxHeadDim];
  float* x = rows_of[warp];
  for (int j = warp; j < r.n_idx; j += kThreads / kWarp) {
    const uint8_t* row = static_cast<const uint8_t*>(r.k) +
                         (static_cast<int64_t>(kvh) * r.n_hi + idx[j]) * static_cast<int64_t>(f.k_row_bytes);
    __syncwarp();  // the previous key is written out: x is free
    for (int e = lane; e < head_dim; e += kWarp) x[e] = kv_elem(f.k, row, e);
    if (f.hadamard_k) hadamard_warp(x, head_dim);  // back: H is its own inverse
    __syncwarp();
    const float* c = cs + static_cast<int64_t>(j) * r.rope_pairs;
    const float* s = sn + static_cast<int64_t>(j) * r.rope_pairs;
    for (int p = lane; p < r.rope_pairs; p += kWarp) {
      rotate_pair(x, p, r.rope_pairs, r.rope_neox, c[p], s[p]);
    }
    __syncwarp();
    float* out = r.ranked + (static_cast<int64_t>(kvh) * r.n_idx + j) * head_dim;
    for (int e = lane; e < head_dim; e += kWarp) out[e] = x[e];
  }
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

void rank_keys(cudaStream_t s, const KvFormat& f, const AttnDesc* rows, int n_rows, const int32_t* idx, int n_head_kv,
               int head_dim, const float* cs, const float* sn) {
  if (n_rows <= 0) return;
  if (head_dim > kMaxHeadDim) throw Error(cat("CUDA rank_keys: head_dim ", head_dim, " > ", kMaxHeadDim));
  const dim3 grid(static_cast<unsigned>(n_rows), static_cast<unsigned>(n_head_kv));
  TOVA_LAUNCH(rank_keys_kernel, grid, kThreads, s)(f, rows, idx, head_dim, cs, sn);
  check_launch("rank_keys");
}

void head_mean(cudaStream_t s, const AttnDesc* rows, int n_rows, int n_head, float inv_head, const float* probs,
               float* means, const int32_t* idx, int32_t* victims) {
  if (n_rows <= 0) return;
  TOVA_LAUNCH(head_mean_kernel, static_cast<unsigned>(n_rows), kThreads, s)(rows, n_head, inv_head, probs, means, idx,
                                                                         victims);
  check_launch("head_mean");
}

namespace {

template <int kKey, int kValue>
void launch_attend(cudaStream_t s, const KvFormat& f, const KvFormat& f_lo, dim3 grid, const AttnDesc* rows, const int32_t* idx, int n_head,
                   int group, int per_block, int head_dim, float scale, int max_idx, float* scratch, float* probs) {
  TOVA_LAUNCH((attend_kernel<kKey, kValue>), grid, kThreads, s)(f, f_lo, rows, idx, n_head, group, per_block, head_dim,
                                                               scale, max_idx, scratch, probs);
}

template <int kKey>
void launch_attend_v(KvKind value, cudaStream_t s, const KvFormat& f, const KvFormat& f_lo, dim3 grid, const AttnDesc* rows,
                     const int32_t* idx, int n_head, int group, int per_block, int head_dim, float scale, int max_idx,
                     float* scratch, float* probs) {
  switch (value) {
    case kKindF32:
      return launch_attend<kKey, kKindF32>(s, f, f_lo, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                           scratch, probs);
    case kKindF16:
      return launch_attend<kKey, kKindF16>(s, f, f_lo, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                           scratch, probs);
    case kKindQuant:
      return launch_attend<kKey, kKindQuant>(s, f, f_lo, grid, rows, idx, n_head, group, per_block, head_dim, scale,
                                             max_idx, scratch, probs);
  }
}

}  // namespace

void attend(cudaStream_t s, const KvFormat& f, const KvFormat& f_lo, const AttnDesc* rows, int n_rows, const int32_t* idx, int n_head,
            int n_head_kv, int head_dim, float scale, int max_idx, float* scratch, float* probs) {
  if (n_rows <= 0) return;
  if (head_dim > kMaxHeadDim)
    throw Error(cat("CUDA attention: head_dim ", head_dim, " > ", kMaxHeadDim, " is not supported"));
  for (const KvFormat* t : {&f, &f_lo}) {
    if ((kv_quantized(t->k) || kv_quantized(t->v)) && head_dim % kQK != 0)
      throw Error(cat("CUDA attention: head_dim ", head_dim, " is not a multiple of the quantized block (", kQK, ")"));
    if ((t->hadamard_k || t->hadamard_v) && (head_dim & (head_dim - 1)) != 0)
      throw Error(cat("CUDA attention: a rotated K/V needs a power-of-two head_dim, not ", head_dim));
    if (t->k == KvType::Q3_0) throw Error("CUDA attention: keys are never q3_0");
  }
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
      launch_attend_v<kKindF32>(value, s, f, f_lo, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                scratch, probs);
      break;
    case kKindF16:
      launch_attend_v<kKindF16>(value, s, f, f_lo, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                scratch, probs);
      break;
    case kKindQuant:
      launch_attend_v<kKindQuant>(value, s, f, f_lo, grid, rows, idx, n_head, group, per_block, head_dim, scale, max_idx,
                                  scratch, probs);
      break;
  }
  check_launch("attend");
}

}  // namespace cuda
}  // namespace tova
