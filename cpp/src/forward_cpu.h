// The forward pass on the CPU: one function for prefill chunks and single-token decode, reading
// the architecture's flags (HParams) rather than branching per architecture.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attention_cpu.h"
#include "kv_store.h"
#include "model.h"
#include "ops_cpu.h"
#include "thread_pool.h"

namespace tova {

// What the attention of each layer needs besides the store.
struct LayerPolicies {
  std::vector<tova_policy*> policy;  // per layer
  bool never_evicts = false;         // the full policy on the non-sliding layers
  int n_sink = 0;
  int64_t protect_below = -1;
  bool cache_index = false;  // positions "cache_index": RoPE by rank inside attention
  bool chunked = false;      // prefill "chunked"
};

class ForwardCpu {
 public:
  ForwardCpu(const Model& model, int max_tokens, bool float_activations = false);

  // Runs n tokens (n <= max_tokens) at positions t0.. through the model, updating the store.
  // Writes logits of the last token to `logits` ([n_vocab]) or, with all_logits, of every
  // token ([n][n_vocab]); logits may be null when none are wanted.
  void run(ThreadPool& pool, KvStore& store, const LayerPolicies& lp, const int32_t* tokens,
           int n, int64_t t0, bool all_logits, float* logits);

  int max_tokens() const { return max_tokens_; }
  const AttentionCpu& attention() const { return attention_; }

 private:
  const Model& m_;
  int max_tokens_;
  Rope rope_, rope_swa_;
  Matmul mm_;
  AttentionCpu attention_;
  // Buffers, allocated once: [max_tokens][width]
  std::vector<float> x_, xn_, q_, k_, v_, att_, o_, gate_, up_, embd_row_;
};

}  // namespace tova
