// The attention step of one layer over a batch (spec §3 and §5): for each sequence in the batch
// it inserts the new tokens into the sequence's slots, decides which slots every query row sees,
// has the backend compute the attention (and the current query's per-head probabilities), and
// runs the eviction policy. The bookkeeping is the KV store's (kv_store.h); the arithmetic is
// the backend's. Sequences are independent: a policy that fails for one sequence marks it
// failed and the others go on.
#pragma once

#include <cstdint>
#include <exception>
#include <vector>

#include "backend.h"
#include "kv_store.h"

namespace tova {

// The rows of one sequence in a step: rows [row0, row0 + n) of the batch, at positions t0...
struct SeqRows {
  KvStore* store = nullptr;
  int32_t seq = 0;
  int row0 = 0;
  int n = 0;
  int64_t t0 = 0;
  int64_t protect_below = -1;       // positions below this are protected (pinned prompt)
  std::exception_ptr error;         // set when this sequence failed during the step
};

// What one layer's attention needs besides the stores.
struct LayerRule {
  int layer = 0;
  tova_policy* policy = nullptr;  // the layer's policy (window for sliding layers)
  bool never_evicts = false;      // the full policy: capacity is a hard limit
  // Prefill "chunked" (spec §5): a chunk attends to the kept slots plus its causal prefix;
  // afterwards the policy evicts down to capacity once, using the chunk's last row.
  bool chunked = false;
  // Positions "cache_index" (spec §6): keys stored unrotated, rotated by rank in attention.
  const Rope* rank_rope = nullptr;
};

class KvAttention {
 public:
  // q, k, v, out: backend buffers, row i of the batch at i * width.
  void run(Backend& be, const AttnShape& shape, const LayerRule& rule, std::vector<SeqRows>& seqs,
           float* q, float* k, float* v, float* out);

 private:
  struct Scratch {
    bool walk = false;       // the exact row-by-row walk (else all rows at once)
    bool evict_once = false; // chunked: one eviction after the chunk
    int cursor = 0;          // walk: next row
    std::vector<int32_t> alive, slot_of;
    std::vector<float> probs, mean;
  };
  void start(Backend& be, const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x,
             float* q, float* k, float* v, float* out);
  void walk_row(Backend& be, const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x,
                float* q, float* k, float* v, float* out);
  void finish_row(const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x, int i);

  std::vector<Scratch> scratch_;
  std::vector<AttnRow> rows_;
};

}  // namespace tova
