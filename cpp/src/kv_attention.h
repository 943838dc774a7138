// The attention step of one layer over a batch (spec §3 and §5): for each sequence in the batch
// it inserts the new tokens into the sequence's slots, decides which slots every query row sees,
// has the backend compute the attention (and the current query's per-head probabilities), and
// runs the eviction policy. The bookkeeping is the KV store's (kv_store.h); the arithmetic is
// the backend's. Sequences are independent: a policy that fails for one sequence marks it
// failed and the others go on.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
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
  const std::atomic<bool>* cancel = nullptr;  // its request's cancel flag (none: null)
};

// Requests cancelled while a step runs (during a long prompt chunk, a slow Python policy): their
// sequences stop taking part at the next layer, or the next row of an exact walk, failed with
// Cancelled (their stores are then undefined: the caller clears them). Only where the backend
// computes as the host goes (Backend::cancels_mid_step).
struct StepCancel {
  bool enabled = false;
  std::function<void()> poll;  // first: may cancel requests (a Ctrl-C check); may be empty
  // Marks the sequences whose request was cancelled failed; true when none is left.
  bool check(std::vector<SeqRows>& seqs) const;
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

// The policy call after a sequence's last row in a layer changes nothing the rest of the step
// reads (later layers have their own slots; the next step's insert comes after), so run() defers
// it to finish_step() when the backend asks for it (Backend::defer_policy_calls): a backend that
// computes elsewhere (CUDA) then hands every layer's probabilities back at once, at the end of
// the step, instead of waiting for the device once per layer. Rows before the last of a walked
// chunk are finished at once, as the exact walk needs. Both orders give the same results.
class KvAttention {
 public:
  // Forgets what an interrupted step left pending; call before a step's first layer.
  void begin_step() { n_deferred_ = 0; }

  // q, k, v, out: backend buffers, row i of the batch at i * width.
  // cancel (may be null) is checked between the rows of an exact walk.
  void run(Backend& be, const AttnShape& shape, const LayerRule& rule, std::vector<SeqRows>& seqs,
           float* q, float* k, float* v, float* out, const StepCancel* cancel = nullptr);

  // Runs the deferred policy calls, layer by layer in the order run() met them (after
  // be.flush_host(): the probabilities are complete). A failing policy marks its sequence failed.
  void finish_step(Backend& be, const AttnShape& shape, std::vector<SeqRows>& seqs);

 private:
  struct Scratch {
    bool walk = false;       // the exact row-by-row walk (else all rows at once)
    bool evict_once = false; // chunked: one eviction after the chunk
    int cursor = 0;          // walk: next row
    bool mean_only = false;  // probs holds the head mean the backend computed ([n_slots])
    bool select = false;     // victims holds the backend's choice (Backend::selects_victims)
    std::vector<int32_t> alive, slot_of;
    std::vector<float> probs, mean;
    std::vector<int32_t> evict_pos, victims;  // select: per alive slot its position or -1; the choice
  };
  // A policy call left for finish_step: the sequence (index in seqs), its layer and row, and the
  // scratch of that layer (its vectors swapped out of the sequence's scratch, not copied).
  struct Deferred {
    size_t seq = 0;
    LayerRule rule;
    int row = 0;
    Scratch x;
  };
  void defer(size_t seq, const LayerRule& rule, int row, Scratch& x);
  void start(Backend& be, const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x,
             float* q, float* k, float* v, float* out);
  void walk_row(Backend& be, const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x,
                float* q, float* k, float* v, float* out);
  // Asks the backend, on the row the policy call follows, for what that call reads.
  static void ask_policy_input(const Backend& be, const AttnShape& shape, const tova_policy* pol,
                               const LayerCells& L, int new_slot, int new_tail, Scratch& x, AttnRow& r);
  void finish_row(const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x, int i);

  std::vector<Scratch> scratch_;
  std::vector<AttnRow> rows_;
  std::vector<Deferred> deferred_;  // [0, n_deferred_) pending; the rest keep their capacity
  size_t n_deferred_ = 0;
};

}  // namespace tova
