// Attention arithmetic on the CPU: for each query row, scores over the row's slots (in the order
// given), softmax in float32, the weighted sum of values, and the per-head
// probabilities scattered by slot for the policy. Which slots a row sees, insertion and eviction
// are decided outside (kv_attention.cpp); this file only computes.
#pragma once

#include <cstdint>
#include <vector>

#include "backend.h"
#include "kv_cpu.h"
#include "thread_pool.h"

namespace tova {

class AttentionCpu {
 public:
  void run(ThreadPool& pool, const AttnShape& shape, const AttnRow* rows, int n_rows);

 private:
  struct Scratch {  // one per thread
    std::vector<float> scores, tmp, lower_out;
    std::vector<int32_t> order;
  };
  // The query heads q + h * head_dim (h < nh) of one KV head: their scores ([nh][n_idx]) with
  // each key read once for all of them, softmax per head, the weighted sums likewise. Returns
  // the slots in the order of the scores: idx itself, or with two KV tiers (KvLayout::lo) the
  // upper tier's slots first.
  const int32_t* attend(const CpuKv& kv, int layer, int kv_head, const float* q, int nh, const int32_t* idx,
                        int n_idx, float scale, float* scores, float* out, Scratch& x) const;
  // cache_index: keys of every KV head rotated by rank once per row, shared by the query heads
  void rotate_keys_by_rank(ThreadPool& pool, const CpuKv& kv, const AttnRow& row);
  void attend_by_rank(const CpuKv& kv, const AttnRow& row, int kv_head, const float* q, float scale,
                      float* scores, float* out, std::vector<float>& tmp);
  void ensure_rank_table(const Rope& rope, int n);

  std::vector<float> rotated_k_;  // [n_head_kv][n_idx][head_dim]
  std::vector<int32_t> iota_;     // 0, 1, 2, ...: the rows of rotated_k_ in order
  const Rope* table_rope_ = nullptr;
  int table_n_ = 0;
  std::vector<float> rank_cs_, rank_sn_;  // [rank][pair]
  std::vector<Scratch> scratch_;  // per thread
};

}  // namespace tova
