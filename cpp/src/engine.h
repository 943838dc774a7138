// The engine: a model, one sequence with its fixed-memory KV store and policy, and the one decode
// loop (Generation) that Python's generate/stream/chat and the CLI all run.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "forward_cpu.h"
#include "kv_policy.h"
#include "kv_store.h"
#include "model.h"
#include "sampler.h"
#include "thread_pool.h"

namespace tova {

struct EngineParams {
  int n_threads = 0;            // 0: the number of cores, at most 8... (see engine.cpp)
  std::string policy = "tova";  // tova, h2o, sink, window, full (ignored when plugin is set)
  int kv_size = 512;            // C: tokens kept per layer (evicting policies)
  int n_ctx = 2048;             // full policy: the cache size and the most tokens a sequence holds
  int n_sink = -1;              // -1: the policy's default (sink: 4, others 0)
  std::string kv_type = "f16";  // f16, f32, q8_0
  std::string prefill = "exact";  // exact (the default) or chunked
  std::string positions = "original";  // original (the default) or cache_index
  int chunk = 64;               // U: tokens per prefill step
  bool float_activations = false;  // exact float32 matmuls instead of 8-bit activations
  PolicyHandle plugin;          // a user policy (C plugin or Python adapter); overrides `policy`

  void validate() const;
};

enum class FinishReason { None, Stop, Length, Cancelled };
const char* finish_reason_name(FinishReason r);

struct GenerateParams {
  int max_tokens = 128;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool ignore_eos = false;
  SamplingParams sampling;
};

struct Stats {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double prompt_seconds = 0;
  double generation_seconds = 0;
  FinishReason finish = FinishReason::None;
  double prompt_tps() const { return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0; }
  double generation_tps() const {
    return generation_seconds > 0 ? completion_tokens / generation_seconds : 0;
  }
};

class Engine;

// The decode loop as a state machine: start() evaluates the prompt; each next() samples one
// token, evaluates it, and returns the text that became final (UTF-8 complete, not part of a
// possible stop string). Done when finished() is true.
class Generation {
 public:
  Generation(Engine& engine, const std::vector<int32_t>& prompt, const GenerateParams& params);
  // Returns the next piece of text ("" is possible while text is held back).
  std::string next();
  bool finished() const { return finish_ != FinishReason::None; }
  FinishReason finish_reason() const { return finish_; }
  void cancel();  // finish now with reason Cancelled
  const std::vector<int32_t>& tokens() const { return generated_; }

 private:
  std::string release_text(bool final);

  Engine& engine_;
  GenerateParams params_;
  Sampler sampler_;
  Utf8Stream utf8_;
  std::string held_;  // decoded text not yet returned (could start a stop string)
  std::vector<int32_t> generated_;
  FinishReason finish_ = FinishReason::None;
  bool need_eval_ = false;
  int32_t last_token_ = -1;
};

class Engine {
 public:
  Engine(const std::string& model_path, EngineParams params);
  ~Engine();

  const Model& model() const { return *model_; }
  const EngineParams& params() const { return params_; }
  int n_threads() const { return pool_->size(); }

  std::vector<int32_t> tokenize(const std::string& text, bool add_bos, bool special) const;
  std::string detokenize(const std::vector<int32_t>& ids, bool special = false) const;

  // Appends tokens to the sequence and runs them through the model in chunks. Writes the
  // last position's logits (or every position's, [n][n_vocab], with all_logits).
  void eval(const std::vector<int32_t>& ids, bool all_logits, std::vector<float>& logits);
  const std::vector<float>& last_logits() const { return logits_; }

  // Clears the sequence (the store keeps its memory).
  void reset();
  int64_t n_past() const { return n_past_; }
  // The most recent tokens of the sequence (at least the last kHistoryKeep, at most twice that:
  // the sequence itself may be unbounded, its record is not).
  const std::vector<int32_t>& history() const { return history_; }
  static constexpr size_t kHistoryKeep = 4096;

  uint64_t kv_bytes() const { return store_->bytes(); }
  const KvStore& kv_store() const { return *store_; }
  std::vector<int32_t> kv_positions(int layer) const;
  int64_t evictions() const;

  // Protects every position below `pos` from eviction from now on (a pinned system prompt).
  void set_protect_below(int64_t pos) { policies_.protect_below = pos; }

  Stats last_stats;
  // Called between prefill chunks of a long eval; may throw to abort it (the sequence is then
  // reset). Python installs a Ctrl-C check here, the CLI a check of its SIGINT flag.
  std::function<void()> interrupt_hook;
  // Set from another thread (or a signal handler) to stop the running generation.
  std::atomic<bool> cancel_requested{false};

  // Tokens the next eval may take before the limit (full policy: n_ctx); -1 = unlimited.
  int64_t remaining_context() const;
  const char* policy_name() const;
  tova_policy* policy() const { return policy_.get(); }

 private:
  friend class Generation;
  void check_fits(int64_t n_new) const;

  EngineParams params_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<KvStore> store_;
  std::unique_ptr<ForwardCpu> forward_;
  PolicyHandle policy_, window_;
  LayerPolicies policies_;
  std::vector<float> logits_;
  std::vector<int32_t> history_;
  int64_t n_past_ = 0;
};

}  // namespace tova
