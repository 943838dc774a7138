// Attention over one layer's slot pool for a chunk of tokens, with the eviction policy run
// inside it (spec §3 and §5 "exact"): the pass that computes attention also yields the current
// query's per-head probabilities the policy reads; K is never re-read for the policy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kv_store.h"
#include "ops_cpu.h"
#include "thread_pool.h"
#include "tova/policy_plugin.h"

namespace tova {

struct AttentionArgs {
  int layer = 0;
  int n_head = 0;        // query heads
  int head_dim = 0;
  float scale = 1.0f;
  int64_t t0 = 0;        // absolute position of the chunk's first token
  int n_tokens = 0;      // U
  const float* q = nullptr;  // [U][n_head * head_dim], RoPE applied
  const float* k = nullptr;  // [U][n_head_kv * head_dim], RoPE applied
  const float* v = nullptr;  // [U][n_head_kv * head_dim]
  float* out = nullptr;      // [U][n_head * head_dim]
  tova_policy* policy = nullptr;  // the layer's policy (window for sliding layers)
  bool never_evicts = false;      // the full policy: capacity is a hard limit
  int n_sink = 0;                 // positions below this are protected
  int64_t protect_below = -1;     // positions below this are protected too (pinned prompt)
  // Positions "cache_index" (spec §6): q and k arrive without RoPE; K is stored unrotated and
  // each key is rotated inside attention by its rank among the kept positions, the query by the
  // largest rank. Rotating keys on the fly costs about one extra pass over K per step, the same
  // as re-rotating on every eviction (which happens every step once the store is full), and
  // keeps the stored K independent of what was evicted.
  const Rope* rank_rope = nullptr;
  // Prefill "chunked" (spec §5): the chunk attends to the kept slots plus its causal prefix;
  // afterwards the policy evicts down to capacity once, using the chunk's last row.
  bool chunked = false;
};

class AttentionCpu {
 public:
  void run(ThreadPool& pool, KvStore& store, const AttentionArgs& a);

  // The last step's per-head probabilities of the last row processed with the walk
  // ([n_head][n_slots]); for introspection.
  const std::vector<float>& last_probs() const { return probs_; }

 private:
  void insert(KvStore& store, LayerKv& L, const AttentionArgs& a, int i);
  void rows_parallel(ThreadPool& pool, KvStore& store, LayerKv& L, const AttentionArgs& a);
  void row_walk(ThreadPool& pool, KvStore& store, LayerKv& L, const AttentionArgs& a, int i);
  void attend(const KvStore& store, const LayerKv& L, int kv_head, const float* q,
              const int32_t* idx, int n_idx, float scale, float* scores, float* out,
              std::vector<float>& tmp) const;
  void evict(LayerKv& L, const AttentionArgs& a, const tova_policy_view& view);
  // cache_index: keys of every KV head rotated by rank once per row, shared by the query heads
  void rotate_keys_by_rank(ThreadPool& pool, const KvStore& store, const LayerKv& L,
                           const AttentionArgs& a, int n_idx);
  void attend_by_rank(const KvStore& store, const LayerKv& L, int kv_head, const float* q,
                      const int32_t* idx_by_pos, int n_idx, const AttentionArgs& a,
                      float* scores, float* out, std::vector<float>& tmp);
  std::vector<float> rotated_k_;  // [n_head_kv][n_idx][head_dim]
  std::vector<int32_t> iota_;     // 0, 1, 2, ...: the rows of rotated_k_ in order
  void ensure_rank_table(const Rope& rope, int n);
  void probs_for_policy(const AttentionArgs& a, int n_slots, int n_alive);
  void run_policy(LayerKv& L, const AttentionArgs& a, int64_t t, int s_new, int n_alive);

  const Rope* table_rope_ = nullptr;
  int table_n_ = 0;
  std::vector<float> rank_cs_, rank_sn_;  // [rank][pair]

  std::vector<float> probs_, mean_;
  std::vector<int32_t> alive_, victims_, row_pos_;
  std::vector<std::vector<float>> scratch_, tmp_;  // per thread
  std::vector<int32_t> slot_of_;
};

}  // namespace tova
