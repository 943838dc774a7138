// Attention of query rows over each sequence's slot pool on the GPU, split-softmax style in two
// passes. Pass 1: a block per (row, query heads sharing a K/V head (GQA), run of the row's
// slots), so that each K and V row is read once for all of those heads and a single sequence
// still fills many blocks; scores one warp per key, then per head the run's largest score, its
// sum of exponentials and its exponential-weighted sums of values (each warp over a share of the
// run's slots, lanes over the head's elements). Pass 2: a block per (row, query head) combines the
// runs (the softmax over every slot), writes the probabilities the policies read when the row
// asks for them, rotates each tier's sum back and adds the tiers. K/V rows of any KvType
// (kv_quant.cuh): quantized keys are scored as the CPU scores them, by integer products with the
// query quantized block by block; quantized values are decoded element by element.
#include <cuda_fp16.h>

#include "act_quant_cuda.h"
#include "cuda_check.h"
#include "hadamard.cuh"
#include "kv_quant.cuh"
#include "launch.cuh"
#include "rope_pair.cuh"
#include "ops_cuda.h"
#include "policy_step.cuh"
#include "tail.cuh"
#include "warp.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kThreads = 128;
static_assert(kThreads == kPolicyThreads, "a row's last block runs its policy step (policy_step.cuh)");
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

// A row's slots are split into runs, each attended by a block of its own, then combined (so that
// one sequence's decode step keeps many blocks busy, not one per K/V head): runs of at least
// kRunSlots slots, at most max_runs (<= kAttnMaxRuns) of them. The split depends on the row's slot
// count alone: a sequence's attention does not depend on the rows beside it in a step.
constexpr int kRunSlots = 64;

__host__ __device__ inline int attn_splits(int n_idx, int max_runs) {
  const int n = (n_idx + kRunSlots - 1) / kRunSlots;
  return n < max_runs ? n : max_runs;
}

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

// Where a block's run of a row's slots [j0, j1) ends (attn_splits runs; empty past the last).
struct Run {
  int j0, j1;
};

__device__ __forceinline__ Run run_of(int n_idx, int max_runs, int z) {
  const int n = attn_splits(n_idx, max_runs);
  const int len = n > 0 ? (n_idx + n - 1) / n : 0;
  const int j0 = min(z * len, n_idx);
  return {j0, min(j0 + len, n_idx)};
}

// The scratch of a call: each (row, query head)'s scores, and for each run of its slots the run's
// softmax statistics and weighted sums of values (AttnScratch in ops_cuda.h).
struct Scratch {
  float* scores;  // [row][head][max_idx]: scaled scores
  float* stats;   // [row][head][max_split][2]: the run's largest score m, sum of exp(score - m)
  float* part;    // [row][head][max_split][tiers][head_dim]: sum of exp(score - m) * value
  int max_idx, max_split, tiers;
  int max_runs;  // attn_splits' bound
};

// Pass 1, a block per (row, run of query heads sharing a K/V head, run of slots): keys and values
// of the upper tier in kinds kKey / kValue (format f), those of a lower tier (slots n_hi and up,
// format f_lo) read through the run-time type. Scores of the block's slots for its heads, their
// largest and sum of exponentials, and each tier's sum of values weighted by the exponentials.
template <int kKey, int kValue>
__device__ __forceinline__ void attend_block(const KvFormat& f, const KvFormat& f_lo, const AttnDesc* rows,
                                             const int32_t* idx_all, int n_head, int group, int per_block,
                                             int head_dim, float scale, const Scratch& sc) {
  const AttnDesc r = rows[blockIdx.x];
  const Run run = run_of(r.n_idx, sc.max_runs, static_cast<int>(blockIdx.z));
  if (run.j0 >= run.j1) return;  // the whole block: this row has fewer runs
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
  const int64_t rh0 = static_cast<int64_t>(blockIdx.x) * n_head + h0;  // (row, head h0)
  float* s0 = sc.scores + rh0 * sc.max_idx;  // head h0 + g at g * max_idx
  // The queries as loaded ([0]) and rotated ([1]).
  __shared__ float qf[2][kMaxGroup][kMaxHeadDim];
  __shared__ int8_t qq[2][kMaxGroup][kMaxHeadDim];
  __shared__ float qd[2][kMaxGroup][kMaxBlocks], qsum[2][kMaxGroup][kMaxBlocks];
  __shared__ float red[kThreads / kWarp];
  __shared__ float part[kThreads / kWarp][kMaxHeadDim];
  __shared__ float top[kMaxGroup];
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

  // Scores: warp w takes the run's keys j0 + w, j0 + w + kWarps, ...; each key row is read once
  // for the block's query heads.
  constexpr int kWarps = kThreads / kWarp;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  for (int j = run.j0 + warp; j < run.j1; j += kWarps) {
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
      if (lane == 0) s0[static_cast<int64_t>(g) * sc.max_idx + j] = acc[g] * scale;
    }
  }
  __syncthreads();
  // Per head: the run's largest score and sum of exponentials.
  for (int g = 0; g < per_block; ++g) {
    const float* s = s0 + static_cast<int64_t>(g) * sc.max_idx;
    float mx = -INFINITY;
    for (int j = run.j0 + threadIdx.x; j < run.j1; j += kThreads) mx = fmaxf(mx, s[j]);
    mx = block_reduce(mx, true, red);
    float sum = 0.0f;
    for (int j = run.j0 + threadIdx.x; j < run.j1; j += kThreads) sum += expf(s[j] - mx);
    sum = block_reduce(sum, false, red);
    if (threadIdx.x == 0) {
      float* st = sc.stats + ((rh0 + g) * sc.max_split + blockIdx.z) * 2;
      st[0] = mx;
      st[1] = sum;
      top[g] = mx;
    }
  }
  __syncthreads();
  // Weighted sums of values, tier by tier: warp w sums the tier's slots among the run's keys
  // j0 + w, j0 + w + kWarps, ... (each value row read once for the block's query heads), lane l
  // the elements l, l + 32, ...; then, head by head, the warps' partial sums are added and
  // written out.
  for (int tier = 0; tier < (tiered ? 2 : 1); ++tier) {
    float acc[kMaxGroup][kMaxHeadDim / kWarp];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
      for (int t = 0; t < kMaxHeadDim / kWarp; ++t) acc[g][t] = 0.0f;
    for (int j = run.j0 + warp; j < run.j1; j += kWarps) {
      if ((idx[j] >= r.n_hi) != (tier == 1)) continue;
      const uint8_t* vrow = row(false, idx[j]);
      float p[kMaxGroup];
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
        p[g] = g < per_block ? expf(s0[static_cast<int64_t>(g) * sc.max_idx + j] - top[g]) : 0.0f;
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
      float* out = sc.part + (((rh0 + g) * sc.max_split + blockIdx.z) * sc.tiers + tier) * head_dim;
      for (int e = threadIdx.x; e < head_dim; e += kThreads) {
        float sum = part[0][e];
        for (int w = 1; w < kWarps; ++w) sum += part[w][e];
        out[e] = sum;
      }
      __syncthreads();  // part is rewritten for the next head
    }
  }
}

// Pass 2 for query head h of row i (r): the runs' statistics give the softmax's largest score M
// and sum L; the probabilities exp(score - M) / L written where the row asks for them; each
// tier's output the runs' sums weighted by exp(m - M) / L, rotated back where the tier's values
// are stored rotated (H is its own inverse), the lower tier's added to the upper's. Every thread
// of the block calls it.
__device__ inline void combine_head(const KvFormat& f, const KvFormat& f_lo, const AttnDesc& r, int64_t i, int h,
                                    int n_head, int head_dim, const Scratch& sc, float* probs) {
  const int64_t rh = i * n_head + h;
  const int n_split = attn_splits(r.n_idx, sc.max_runs);
  const float* st = sc.stats + rh * sc.max_split * 2;
  __shared__ float weight[kAttnMaxRuns];
  __shared__ float o[2][kMaxHeadDim];
  float top = -INFINITY;
  for (int z = 0; z < n_split; ++z) top = fmaxf(top, st[2 * z]);
  float sum = 0.0f;
  for (int z = 0; z < n_split; ++z) sum += st[2 * z + 1] * expf(st[2 * z] - top);
  const float inv = 1.0f / sum;
  for (int z = threadIdx.x; z < n_split; z += kThreads) weight[z] = expf(st[2 * z] - top) * inv;
  if (r.probs_off >= 0) {
    const float* s = sc.scores + rh * sc.max_idx;
    float* pr = probs + r.probs_off + static_cast<int64_t>(h) * r.n_idx;
    for (int j = threadIdx.x; j < r.n_idx; j += kThreads) pr[j] = expf(s[j] - top) * inv;
  }
  __syncthreads();  // the weights
  const bool tiered = r.n_slots > r.n_hi;  // the same for the whole block
  for (int tier = 0; tier < (tiered ? 2 : 1); ++tier) {
    const float* part = sc.part + (rh * sc.max_split * sc.tiers + tier) * head_dim;
    for (int e = threadIdx.x; e < head_dim; e += kThreads) {
      float acc = 0.0f;
      for (int z = 0; z < n_split; ++z)
        acc = fmaf(part[static_cast<int64_t>(z) * sc.tiers * head_dim + e], weight[z], acc);
      o[tier][e] = acc;
    }
    if ((tier == 0 ? f.hadamard_v : f_lo.hadamard_v)) hadamard_shared(o[tier], head_dim, 1, kMaxHeadDim);
  }
  __syncthreads();
  float* out = r.out + static_cast<int64_t>(h) * head_dim;
  for (int e = threadIdx.x; e < head_dim; e += kThreads) out[e] = tiered ? o[0][e] + o[1][e] : o[0][e];
  __syncthreads();  // weight and o are rewritten for the next head
}

// Pass 2 as a kernel of its own: a block per (row, query head).
__global__ void attend_combine_kernel(const KvFormat f, const KvFormat f_lo, const AttnDesc* rows, int n_head,
                                      int head_dim, const Scratch sc, float* probs) {
  const AttnDesc r = rows[blockIdx.x];
  combine_head(f, f_lo, r, blockIdx.x, static_cast<int>(blockIdx.y), n_head, head_dim, sc, probs);
}

// What follows pass 1 in its kernel (AttnPost with counters): the row's last block combines
// every head of the row, then runs the row's policy step and quantizes its output.
__device__ inline void attend_post(const KvFormat& f, const KvFormat& f_lo, const AttnDesc* rows,
                                   const int32_t* idx_all, int n_head, int head_dim, const Scratch& sc, float* probs,
                                   const AttnPost& post) {
  if (!last_block(post.counters + blockIdx.x, gridDim.y * gridDim.z)) return;
  const AttnDesc r = rows[blockIdx.x];
  for (int h = 0; h < n_head; ++h) combine_head(f, f_lo, r, blockIdx.x, h, n_head, head_dim, sc, probs);
  if (post.means)
    head_mean_row(r, n_head, 1.0f / static_cast<float>(n_head), probs, post.means, idx_all, post.victims);
  if (post.quant_block) quantize_row(post.quant_x, post.q, post.quant_block, blockIdx.x);
}

// Pass 1, then (kPost) attend_post.
template <int kKey, int kValue, bool kPost>
__global__ void attend_kernel(const KvFormat f, const KvFormat f_lo, const AttnDesc* rows, const int32_t* idx_all,
                              int n_head, int group, int per_block, int head_dim, float scale, const Scratch sc,
                              float* probs, const AttnPost post) {
  attend_block<kKey, kValue>(f, f_lo, rows, idx_all, n_head, group, per_block, head_dim, scale, sc);
  if (kPost) attend_post(f, f_lo, rows, idx_all, n_head, head_dim, sc, probs, post);
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

}  // namespace

void rank_keys(Queue s, const KvFormat& f, const AttnDesc* rows, int n_rows, const int32_t* idx, int n_head_kv,
               int head_dim, const float* cs, const float* sn) {
  if (n_rows <= 0) return;
  if (head_dim > kMaxHeadDim) throw Error(cat("CUDA rank_keys: head_dim ", head_dim, " > ", kMaxHeadDim));
  const dim3 grid(static_cast<unsigned>(n_rows), static_cast<unsigned>(n_head_kv));
  TOVA_LAUNCH(rank_keys_kernel, grid, kThreads, s)(f, rows, idx, head_dim, cs, sn);
  check_launch(s, "rank_keys");
}

namespace {

// A launch's arguments (the kernel's parameters after its template's).
struct AttendArgs {
  KvFormat f, f_lo;
  dim3 grid;
  const AttnDesc* rows;
  const int32_t* idx;
  int n_head, group, per_block, head_dim;
  float scale;
  Scratch sc;
  float* probs;
  AttnPost post;
};

template <int kKey, int kValue>
void launch_attend(Queue s, const AttendArgs& a) {
  auto* kernel = a.post.counters ? attend_kernel<kKey, kValue, true> : attend_kernel<kKey, kValue, false>;
  TOVA_LAUNCH(kernel, a.grid, kThreads, s)(a.f, a.f_lo, a.rows, a.idx, a.n_head, a.group, a.per_block, a.head_dim,
                                           a.scale, a.sc, a.probs, a.post);
}

template <int kKey>
void launch_attend_v(KvKind value, Queue s, const AttendArgs& a) {
  switch (value) {
    case kKindF32: return launch_attend<kKey, kKindF32>(s, a);
    case kKindF16: return launch_attend<kKey, kKindF16>(s, a);
    case kKindQuant: return launch_attend<kKey, kKindQuant>(s, a);
  }
}

}  // namespace

size_t attend_scratch_floats(int n_rows, int n_head, int head_dim, int max_idx, bool tiered, int max_runs) {
  const size_t per_head = static_cast<size_t>(max_idx) + static_cast<size_t>(attn_splits(max_idx, max_runs)) *
                                                             (2 + (tiered ? 2 : 1) * static_cast<size_t>(head_dim));
  return static_cast<size_t>(n_rows) * static_cast<size_t>(n_head) * per_head;
}

void attend(Queue s, const KvFormat& f, const KvFormat& f_lo, const AttnDesc* rows, int n_rows, const int32_t* idx, int n_head,
            int n_head_kv, int head_dim, float scale, int max_idx, bool tiered, int max_runs, float* scratch, float* probs,
            const AttnPost& post) {
  if (n_rows <= 0) return;
  if (max_runs < 1 || max_runs > kAttnMaxRuns)
    throw Error(cat("CUDA attention: ", max_runs, " runs a row (1 to ", kAttnMaxRuns, ")"));
  if (head_dim > kMaxHeadDim)
    throw Error(cat("CUDA attention: head_dim ", head_dim, " > ", kMaxHeadDim, " is not supported"));
  for (const KvFormat* t : {&f, &f_lo}) {
    if ((kv_quantized(t->k) || kv_quantized(t->v)) && head_dim % kQK != 0)
      throw Error(cat("CUDA attention: head_dim ", head_dim, " is not a multiple of the quantized block (", kQK, ")"));
    if ((t->hadamard_k || t->hadamard_v) && (head_dim & (head_dim - 1)) != 0)
      throw Error(cat("CUDA attention: a rotated K/V needs a power-of-two head_dim, not ", head_dim));
    if (t->k == KvType::Q3_0) throw Error("CUDA attention: keys are never q3_0");
  }
  // The scratch as attend_scratch_floats counts it.
  Scratch sc;
  sc.max_idx = max_idx;
  sc.max_runs = max_runs;
  sc.max_split = attn_splits(max_idx, max_runs);
  sc.tiers = tiered ? 2 : 1;
  sc.scores = scratch;
  sc.stats = sc.scores + static_cast<int64_t>(n_rows) * n_head * max_idx;
  sc.part = sc.stats + static_cast<int64_t>(n_rows) * n_head * sc.max_split * 2;
  // A block per (row, run of query heads sharing a K/V head, run of slots): up to kMaxGroup heads,
  // a divisor of the group so that a block never straddles two K/V heads.
  const int group = n_head / n_head_kv;
  int per_block = 1;
  for (int d = 1; d <= kMaxGroup && d <= group; ++d)
    if (group % d == 0) per_block = d;
  const AttendArgs a{f,         f_lo,     dim3(static_cast<unsigned>(n_rows), static_cast<unsigned>(n_head / per_block),
                                          static_cast<unsigned>(sc.max_split)),
                     rows,      idx,      n_head,
                     group,     per_block, head_dim,
                     scale,     sc,       probs,
                     post};
  const KvKind value = kind_of(f.v);
  switch (kind_of(f.k)) {
    case kKindF32: launch_attend_v<kKindF32>(value, s, a); break;
    case kKindF16: launch_attend_v<kKindF16>(value, s, a); break;
    case kKindQuant: launch_attend_v<kKindQuant>(value, s, a); break;
  }
  check_launch(s, "attend");
  if (post.counters) return;  // the rest ran in the rows' last blocks
  const dim3 heads(static_cast<unsigned>(n_rows), static_cast<unsigned>(n_head));
  TOVA_LAUNCH(attend_combine_kernel, heads, kThreads, s)(f, f_lo, rows, n_head, head_dim, sc, probs);
  check_launch(s, "attend (combine)");
  if (post.means) head_mean(s, rows, n_rows, n_head, 1.0f / static_cast<float>(n_head), probs, post.means, idx, post.victims);
  if (post.quant_block) quantize_rows(s, post.quant_x, n_rows, post.q, post.quant_block);
}

}  // namespace cuda
}  // namespace tova
