// The built-in policies' step on the device for one attention row (head_mean_row): run by its
// own kernel (policy_step_cuda.cu) or by the attention's last block of the row
// (attention_cuda.cu). Each row's head mean in the host's order and arithmetic
// (kv_attention.cpp), and for a row with a rule, that policy's state update and victims as
// kv_policy.cpp takes them (no fused multiply-add; the lowest (key, position) first among the
// candidates the host marks).
#pragma once

#include "kv_policy.h"
#include "ops_cuda.h"
#include "warp.cuh"

namespace tova {
namespace cuda {

constexpr int kPolicyThreads = 128;  // threads of a block that runs head_mean_row

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
__device__ inline Candidate block_first(Candidate c, Candidate* shared) {
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
  for (int i = 1; i < kPolicyThreads / kWarp; ++i)
    if (before(shared[i], r)) r = shared[i];
  return r;
}

// Row r's head mean, and its policy's step where it has a rule (AttnDesc, ops_cuda.h; head_mean
// says what). Every thread of the block calls it; blockDim.x kPolicyThreads.
__device__ inline void head_mean_row(const AttnDesc& r, int n_head, float inv_head, const float* probs, float* means,
                                     const int32_t* idx_all, int32_t* victims) {
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
      const bool written = idx[j] == r.new_slot || j >= r.n_idx - r.new_tail;  // in this step
      st = written ? mean[j] : __fadd_rn(__fmul_rn(a, st), __fmul_rn(b, mean[j]));
    }
  }
  if (r.n_evict <= 0) return;
  // The victims one by one, each the first candidate after the one chosen before it (positions
  // are distinct: the order is total), so that nothing chosen needs marking.
  __shared__ Candidate red[kPolicyThreads / kWarp];
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

}  // namespace cuda
}  // namespace tova
