#include "request.h"

#include <algorithm>
#include <cmath>

#include "common.h"

namespace tova {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "none";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

void GenerateParams::validate() const {
  if (max_tokens < 0) throw ArgumentError(cat("max_tokens must be >= 0, got ", max_tokens));
  if (top_logprobs < -1 || top_logprobs > kMaxTopLogprobs)
    throw ArgumentError(cat("top_logprobs must be in [0, ", kMaxTopLogprobs, "] (or -1 for none), got ", top_logprobs));
  for (const auto& s : stop)
    if (s.empty()) throw ArgumentError("stop strings must not be empty");
  sampling.validate();
}

Request::Request(std::vector<int32_t> prompt, GenerateParams params, int seq, bool keep)
    : prompt_(std::move(prompt)), params_(std::move(params)), target_seq_(seq), keep_(keep),
      sampler_(params_.sampling) {
  params_.validate();
  if (prompt_.empty()) throw ArgumentError("the prompt is empty (no tokens to condition on)");
  if (keep_ && target_seq_ < 0) throw ArgumentError("keep needs a sequence to continue (seq >= 0)");
  stats_.prompt_tokens = static_cast<int64_t>(prompt_.size());
}

void Request::finish(FinishReason why, double now) {
  if (phase_ == Phase::Done) return;
  phase_ = Phase::Done;
  if (why != FinishReason::Error) produced_ += release_text(true);
  stats_.finish = why;
  if (t_first_ > 0) stats_.generation_seconds = now - t_first_;
  logits_.clear();
  logits_.shrink_to_fit();
  sampler_.release_buffers();  // a finished request its caller keeps holds no vocabulary-sized memory
}

std::string Request::release_text(bool final) {
  if (final) {
    // The bytes of a character the last token left unfinished (max_tokens or a cancel cut it)
    // are dropped: the text is complete UTF-8 (llama-cpp-python drops them too). Bytes that can
    // never be UTF-8 were replaced by U+FFFD as they came.
    utf8_.reset();
    std::string out;
    out.swap(held_);
    return out;
  }
  // Hold back the longest suffix of held_ that is a prefix of a stop string.
  size_t keep = 0;
  for (const auto& s : params_.stop) {
    const size_t max_k = std::min(s.size() - 1, held_.size());
    for (size_t k = max_k; k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

namespace {

// log-softmax of the raw logits at the chosen token, and the k most likely tokens.
TokenLogprob logprob_of(const std::vector<float>& logits, int32_t chosen, int k) {
  const size_t V = logits.size();
  float mx = -INFINITY;
  for (float l : logits) mx = std::max(mx, l);
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprob r;
  r.token = chosen;
  r.logprob = static_cast<float>(logits[static_cast<size_t>(chosen)] - lse);
  if (k > 0) {
    std::vector<int32_t> ids(V);
    for (size_t i = 0; i < V; ++i) ids[i] = static_cast<int32_t>(i);
    const size_t kk = std::min(V, static_cast<size_t>(k));
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kk), ids.end(), [&](int32_t a, int32_t b) {
      const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
      return la != lb ? la > lb : a < b;
    });
    for (size_t i = 0; i < kk; ++i)
      r.top.emplace_back(ids[i], static_cast<float>(logits[static_cast<size_t>(ids[i])] - lse));
  }
  return r;
}

}  // namespace

void Request::on_logits(const Tokenizer& tok, double now) {
  const int32_t t = sampler_.sample(logits_.data(), static_cast<int32_t>(logits_.size()));
  if (params_.top_logprobs >= 0) logprobs_.push_back(logprob_of(logits_, t, params_.top_logprobs));
  sampler_.accept(t);
  ++n_generated_;
  unpublished_.push_back(t);
  stats_.completion_tokens++;
  if (!params_.ignore_eos && tok.is_end_of_generation(t)) {
    stats_.end_token = true;
    finish(FinishReason::Stop, now);
    return;
  }
  held_ += utf8_.push(tok.token_bytes(t));
  size_t cut = std::string::npos;
  for (const auto& s : params_.stop) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    held_.resize(cut);
    utf8_.reset();
    finish(FinishReason::Stop, now);
  } else if (n_generated_ >= params_.max_tokens) {
    finish(FinishReason::Length, now);
  } else {
    need_eval_ = true;
    last_token_ = t;
    produced_ += release_text(false);
  }
}

}  // namespace tova
