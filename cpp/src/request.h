// One generation request: a prompt, how to sample and when to stop, and the text it produced.
// The scheduler (scheduler.cpp) runs it in one of the engine's sequences; the decode-loop rules
// that turn sampled tokens into text (end of generation, stop strings held back until they
// cannot match, complete UTF-8 only, max_tokens) live here, once, for every face.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "sampler.h"
#include "tokenizer.h"

namespace tova {

enum class FinishReason { None, Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);

struct GenerateParams {
  int max_tokens = 128;
  std::vector<std::string> stop;  // stop strings (not included in the output)
  bool ignore_eos = false;
  SamplingParams sampling;
  // Per generated token, its log-probability under the model (log-softmax of the raw logits)
  // and the `top_logprobs` most likely alternatives: -1 = none recorded, 0..kMaxTopLogprobs.
  int top_logprobs = -1;
  static constexpr int kMaxTopLogprobs = 20;

  void validate() const;  // ArgumentError for max_tokens < 0, an empty stop string, bad sampling
};

struct Stats {
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;  // of those, held by the sequence already (reuse_prefix): not read
  int64_t completion_tokens = 0;  // every token sampled, a final end-of-generation token included
  bool end_token = false;         // it ended on an end-of-generation token (not part of the text)
  double prompt_seconds = 0;
  double generation_seconds = 0;
  FinishReason finish = FinishReason::None;
  int32_t seq = -1;  // the sequence it ran in
  // That sequence's KV occupancy after the request's last step: tokens read into it, and the
  // evictions and demotions of its store so far (every layer).
  int64_t n_past = 0, evictions = 0, demotions = 0;
  // The answer's tokens, as OpenAI and llama-cpp-python count them (usage.completion_tokens):
  // without the final end-of-generation token.
  int64_t answer_tokens() const { return completion_tokens - (end_token ? 1 : 0); }
  double prompt_tps() const { return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0; }
  double generation_tps() const {
    return generation_seconds > 0 ? completion_tokens / generation_seconds : 0;
  }
};

// One generated token's log-probability and the most likely tokens at its position.
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};

class Engine;

class Request {
 public:
  // seq: the sequence to run in (-1: any free one); keep: continue what that sequence holds
  // instead of starting it empty (needs seq >= 0).
  Request(std::vector<int32_t> prompt, GenerateParams params, int seq, bool keep);

  // Any thread: asks the scheduler to stop this request at its next step.
  void cancel() { cancel_flag_.store(true); }
  bool cancel_requested() const { return cancel_flag_.load(); }
  int target_seq() const { return target_seq_; }
  bool keep() const { return keep_; }
  const std::vector<int32_t>& prompt() const { return prompt_; }
  const GenerateParams& params() const { return params_; }

 private:
  friend class Engine;
  enum class Phase { Queued, Prefill, Decode, Done };

  // ---- the decode loop (stepping thread only) ----
  // The logits of the last evaluated token are in logits_: sample one token and turn it into
  // text; finishes the request when a stop condition is met.
  void on_logits(const Tokenizer& tok, double now);
  void finish(FinishReason why, double now);
  std::string release_text(bool final);

  std::vector<int32_t> prompt_;
  GenerateParams params_;
  int target_seq_;
  bool keep_;
  std::atomic<bool> cancel_flag_{false};

  Phase phase_ = Phase::Queued;
  int seq_ = -1;
  bool started_ = false;         // its sequence was prepared (joined)
  bool reuse_prefix_ = false;    // may continue a sequence holding a prefix of the prompt
  size_t reused_ = 0;            // prompt tokens that sequence held
  size_t prompt_done_ = 0;       // prompt tokens evaluated
  bool need_eval_ = false;       // last_token_ must be evaluated before the next sample
  int32_t last_token_ = -1;
  double t_start_ = 0, t_first_ = 0;
  Sampler sampler_;
  Utf8Stream utf8_;
  std::string held_;             // decoded text not yet released (could start a stop string)
  std::vector<float> logits_;    // [n_vocab] while running
  std::string produced_;         // text released by this step, published after it
  std::exception_ptr failure_;   // set by the step that failed it, published as error_
  int64_t n_generated_ = 0;
  std::vector<int32_t> unpublished_;  // generated since the last publication (then in pub_tokens_)
  std::vector<TokenLogprob> logprobs_;  // with params_.top_logprobs >= 0
  Stats stats_;

  // ---- shared with the waiting threads (under the engine's mutex), copied at each step's end ----
  std::deque<std::string> out_;
  std::vector<int32_t> pub_tokens_;
  std::vector<TokenLogprob> pub_logprobs_;
  Stats pub_stats_;
  bool done_ = false;            // no more pieces will come (out_ may still hold some)
  std::exception_ptr error_;     // the request failed; rethrown to its waiter once
};

}  // namespace tova
