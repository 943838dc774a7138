// The forward pass, written once for every backend: it reads the architecture's flags (HParams)
// and calls the backend's operations. One step takes rows from several sequences: every weight
// matrix is read once for all of them, and attention runs per sequence over its own slots.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <vector>

#include "backend.h"
#include "kv_attention.h"
#include "kv_store.h"
#include "model.h"
#include "rope.h"

namespace tova {

// The eviction rules of the engine's layers.
struct LayerPolicies {
  std::vector<tova_policy*> policy;  // per layer
  bool never_evicts = false;         // the full policy on the non-sliding layers
  bool cache_index = false;          // positions "cache_index": RoPE by rank inside attention
  bool chunked = false;              // prefill "chunked"
};

// One sequence's part of a step.
struct SeqBatch {
  KvStore* store = nullptr;
  int32_t seq = 0;
  int64_t t0 = 0;                 // position of the first token
  int64_t protect_below = -1;
  const int32_t* tokens = nullptr;
  int n = 0;
  // Host memory for logits: the last token's ([n_vocab]) or, with all_logits, every token's
  // ([n][n_vocab]); null when none are wanted.
  float* logits = nullptr;
  bool all_logits = false;
  std::exception_ptr error;       // set when this sequence failed (its store is then undefined)
  // Its request's cancel flag (null: none): once set, the sequence may stop between two layers
  // of the step (error Cancelled) where the backend allows it (Backend::cancels_mid_step).
  const std::atomic<bool>* cancel = nullptr;
};

class Forward {
 public:
  Forward(const Model& model, Backend& backend, const LayerPolicies& policies);

  // Runs the step. A sequence whose policy fails gets `error` set and the others complete; an
  // error of the backend itself propagates (then every store in the step is undefined).
  // The rows of all sequences together must be at most backend.max_rows().
  void run(std::vector<SeqBatch>& batch);

  // Called between layers (and rows of an exact walk) before the cancel flags are read: may
  // cancel requests (the engine's Ctrl-C check).
  void set_cancel_poll(std::function<void()> poll) { cancel_.poll = std::move(poll); }

 private:
  void step(std::vector<SeqBatch>& batch);
  void logits(std::vector<SeqBatch>& batch);

  const Model& m_;
  Backend& be_;
  const LayerPolicies& lp_;
  Rope rope_, rope_swa_;
  KvAttention attention_;
  StepCancel cancel_;
  std::vector<int32_t> tokens_;
  std::vector<int64_t> positions_;
  std::vector<SeqRows> rows_;
  std::vector<float> staging_;  // last-token logits of several sequences, [k][n_vocab]
};

}  // namespace tova
