// The scheduler of Engine (engine.h): requests queue, join free sequences between steps, and
// each step runs one batch: a decode row for every sequence that is generating, then prompt
// chunks of joining sequences while the step's token budget lasts (at least one chunk, so a
// long prompt stalls the others for at most one chunk per step). Chunks follow the same grid as
// a direct eval of the prompt (chunk tokens from its start), and every row's arithmetic is
// independent of the other rows in its step, so a request's tokens do not depend on what else
// runs beside it.
#include <algorithm>
#include <chrono>

#include "common.h"
#include "engine.h"

namespace tova {

namespace {

// The engine whose compute this thread holds (a step or a direct call), or null. Per thread by
// nature: a policy callback runs on that thread, and a call from it into an engine, its own or
// another, would wait for a step (two engines whose policies call each other: forever).
thread_local const Engine* tls_computing = nullptr;

}  // namespace

void Engine::take_compute() {
  stepping_ = true;
  stepper_ = std::this_thread::get_id();
  tls_computing = this;
}

void Engine::drop_compute() {
  stepping_ = false;
  if (tls_computing == this) tls_computing = nullptr;
}

std::shared_ptr<Request> Engine::submit(std::vector<int32_t> prompt, const GenerateParams& params, int seq,
                                        bool keep, bool reuse_prefix) {
  if (seq >= 0) seq_at(seq);  // range check
  const int V = model_->hp().n_vocab;
  for (int32_t id : prompt)
    if (id < 0 || id >= V) throw ArgumentError(cat("token id ", id, " is out of range [0, ", V, ")"));
  auto r = std::make_shared<Request>(std::move(prompt), params, seq, keep);
  // Reuse is exact only when reading is: chunked prefill depends on where chunks fall.
  r->reuse_prefix_ = reuse_prefix && seq < 0 && params_.prefill == PrefillMode::Exact;
  if (policies_.never_evicts) {
    const int64_t held = keep ? n_past(seq) : 0;
    const int64_t n = static_cast<int64_t>(r->prompt().size());
    if (held + n > params_.n_ctx)
      throw ArgumentError(cat(held > 0 ? cat(held, " cached + ") : std::string(), n, " tokens exceed n_ctx ",
                              params_.n_ctx, " (policy 'full' never evicts: raise n_ctx or use an evicting policy)"));
  }
  std::lock_guard<std::mutex> lk(mu_);
  check_not_reentrant();  // (from a policy callback: refused as every other call is)
  queue_.push_back(r);
  cv_.notify_all();
  return r;
}

bool Engine::has_work() const { return !queue_.empty() || !running_.empty(); }

void Engine::check_not_reentrant() const {
  if (tls_computing == this || (stepping_ && stepper_ == std::this_thread::get_id()))
    throw Error("the engine was called from inside its own step (a policy callback may not use the engine)");
  if (tls_computing)
    throw Error("an engine was called from inside another engine's step (a policy callback may not use an "
                "engine: two engines whose policies call each other would wait for each other forever)");
}

// Under mu_ (released meanwhile): runs one step as the stepping thread.
void Engine::step_locked(std::unique_lock<std::mutex>& lk, Request* waiting) {
  take_compute();
  step_waiting_ = waiting;
  lk.unlock();
  try {
    run_step();
  } catch (...) {
    lk.lock();
    step_waiting_ = nullptr;
    drop_compute();
    cv_.notify_all();
    throw;
  }
  lk.lock();
  step_waiting_ = nullptr;
  drop_compute();
  cv_.notify_all();
}

void Engine::poll_cancel() {
  if (!in_forward_) return;  // (a direct eval's chunk: its caller checks between chunks)
  if (cancel_requested.load())
    for (Request* r : batch_req_) r->cancel();
  Request* mine = step_waiting_;
  if (!mine || !interrupt_probe || mine->cancel_requested()) return;
  const double now = now_seconds();
  if (now - last_probe_ < 0.05) return;
  last_probe_ = now;
  bool stop = false;
  try {
    stop = interrupt_probe();
  } catch (...) {  // (a probe that fails stops nothing: the waiting call checks again itself)
  }
  if (stop) mine->cancel();
}

template <class Ready>
bool Engine::drive(std::unique_lock<std::mutex>& lk, Ready ready, double timeout_s, Request* waiting) {
  check_not_reentrant();
  if (timeout_s > 1e6) timeout_s = -1;  // a day or more: no deadline (and no overflow)
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_s >= 0 ? timeout_s : 0));
  while (!ready()) {
    if (!stepping_ && has_work()) {
      step_locked(lk, waiting);
      // A waiter with a deadline returns between steps, so that its caller can check for
      // Ctrl-C even while the steps are other requests' (or its own long prompt's).
      if (timeout_s >= 0 && !ready() && std::chrono::steady_clock::now() >= deadline) return false;
      continue;
    }
    if (timeout_s < 0) {
      cv_.wait(lk);
    } else if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && !ready()) {
      return false;
    }
  }
  return true;
}

void Engine::acquire_direct(std::unique_lock<std::mutex>& lk, int seq, int seq2) {
  Sequence& s = *seqs_[static_cast<size_t>(seq)];
  Sequence* s2 = seq2 >= 0 ? seqs_[static_cast<size_t>(seq2)].get() : nullptr;
  drive(lk, [&] { return !stepping_ && !s.busy && !(s2 && s2->busy); }, -1);
  take_compute();
  s.busy = true;
  if (s2) s2->busy = true;
}

Engine::Wait Engine::next(Request& r, std::string& piece, double timeout_s) {
  std::unique_lock<std::mutex> lk(mu_);
  const bool ok = drive(lk, [&] { return !r.out_.empty() || r.done_; }, timeout_s, &r);
  if (!ok) return Wait::Timeout;
  if (!r.out_.empty()) {
    piece = std::move(r.out_.front());
    r.out_.pop_front();
    return Wait::Piece;
  }
  if (r.error_) {
    std::exception_ptr e = r.error_;
    r.error_ = nullptr;
    std::rethrow_exception(e);
  }
  piece.clear();
  return Wait::Done;
}

void Engine::acquire_compute(std::unique_lock<std::mutex>& lk) {
  drive(lk, [&] { return !stepping_; }, -1);
  take_compute();
}

void Engine::release_compute() {
  std::lock_guard<std::mutex> lk(mu_);
  drop_compute();
  cv_.notify_all();
}

void Engine::wait_prefilled(Request& r) {
  std::unique_lock<std::mutex> lk(mu_);
  auto ready = [&] { return r.done_ || r.pub_stats_.completion_tokens > 0; };
  // With an interrupt hook (Python's Ctrl-C check), wait in slices and ask it between them.
  while (!drive(lk, ready, interrupt_hook ? 0.1 : -1, &r)) {
    lk.unlock();
    try {
      interrupt_hook();
    } catch (...) {
      r.cancel();
      throw;
    }
    lk.lock();
  }
  if (r.done_ && r.error_) {
    std::exception_ptr e = r.error_;
    r.error_ = nullptr;
    std::rethrow_exception(e);
  }
}

std::vector<int32_t> Engine::tokens(const Request& r) const {
  std::lock_guard<std::mutex> lk(mu_);
  return r.pub_tokens_;
}

std::vector<TokenLogprob> Engine::logprobs(const Request& r, size_t from) const {
  std::lock_guard<std::mutex> lk(mu_);
  if (from >= r.pub_logprobs_.size()) return {};
  return std::vector<TokenLogprob>(r.pub_logprobs_.begin() + static_cast<std::ptrdiff_t>(from), r.pub_logprobs_.end());
}

Stats Engine::stats(const Request& r) const {
  std::lock_guard<std::mutex> lk(mu_);
  return r.pub_stats_;
}

bool Engine::finished(const Request& r) const {
  std::lock_guard<std::mutex> lk(mu_);
  return r.done_ && r.out_.empty();
}

bool Engine::step() {
  std::unique_lock<std::mutex> lk(mu_);
  if (stepping_ || !has_work()) return false;
  step_locked(lk);
  return true;
}

// ---- the step ------------------------------------------------------------------------------

void Engine::fail(Request& r, std::exception_ptr e, double now) {
  r.finish(FinishReason::Error, now);
  r.failure_ = e;  // becomes error_ when the step is published
}

// Under mu_: cancelled requests finish, queued ones take free sequences (lowest index first; a
// request for a given sequence waits for it).
void Engine::admit(double now, Retired& retired) {
  const bool cancel_all = cancel_requested.exchange(false);
  for (auto& r : running_)
    if ((cancel_all || r->cancel_requested()) && r->phase_ != Request::Phase::Done)
      r->finish(FinishReason::Cancelled, now);
  for (auto it = queue_.begin(); it != queue_.end();) {
    Request& r = **it;
    if (cancel_all || r.cancel_requested()) {
      r.finish(FinishReason::Cancelled, now);
      r.pub_stats_ = r.stats_;
      r.done_ = true;
      retired.push_back(std::move(*it));
      it = queue_.erase(it);
      continue;
    }
    Sequence* s = nullptr;
    if (r.target_seq() >= 0) {
      if (!seqs_[static_cast<size_t>(r.target_seq())]->busy) s = seqs_[static_cast<size_t>(r.target_seq())].get();
    } else {
      if (r.reuse_prefix_) {  // the free sequence holding the longest prefix of the prompt
        const std::vector<int32_t>& p = r.prompt();
        for (auto& c : seqs_) {
          const std::vector<int32_t>& rec = c->record;
          if (c->busy || c->held || c->scored || !c->record_ok || c->protect_below >= 0 || rec.empty() ||
              rec.size() >= p.size())
            continue;  // (not eval's tokens: they are their caller's, not a conversation to go on with)
          if ((!s || rec.size() > s->record.size()) && std::equal(rec.begin(), rec.end(), p.begin())) s = c.get();
        }
        if (s) r.reused_ = s->record.size();
      }
      // Any free sequence that no turn is being set up in: one that holds nothing of anyone's
      // first, then one holding a conversation (its next turn notices and reads it again), and
      // eval's tokens last (their caller cannot notice: its next eval would continue another
      // context).
      for (int pass = 0; pass < 3 && !s; ++pass)
        for (auto& c : seqs_)
          if (!c->busy && !c->held && (pass == 2 || (!c->scored && (pass == 1 || !c->kept)))) {
            s = c.get();
            break;
          }
    }
    if (!s) {
      ++it;
      continue;
    }
    s->busy = true;
    r.seq_ = s->id;
    r.stats_.seq = s->id;
    r.phase_ = Request::Phase::Prefill;
    running_.push_back(*it);
    it = queue_.erase(it);
  }
}

void Engine::forget_queued(const std::shared_ptr<Request>& r) {
  r->cancel();
  std::unique_lock<std::mutex> lk(mu_, std::try_to_lock);
  if (!lk.owns_lock()) return;  // the next step's admit() finishes it
  const auto it = std::find(queue_.begin(), queue_.end(), r);
  if (it == queue_.end()) return;  // running: it stops at the next step
  r->finish(FinishReason::Cancelled, now_seconds());
  r->pub_stats_ = r->stats_;
  r->done_ = true;
  queue_.erase(it);  // (the caller still holds it: it is freed outside this lock)
}

void Engine::run_step() {
  double now = now_seconds();
  Retired retired;  // released when this step returns, after mu_ (declared before the locks)
  {
    std::lock_guard<std::mutex> lk(mu_);
    admit(now, retired);
  }
  const Tokenizer& tok = model_->tokenizer();
  const int V = model_->hp().n_vocab;
  // Joining requests start their sequence (outside the lock: the sequence is theirs now).
  for (auto& rp : running_) {
    Request& r = *rp;
    if (r.phase_ != Request::Phase::Prefill || r.started_) continue;
    r.started_ = true;
    Sequence& s = *seqs_[static_cast<size_t>(r.seq_)];
    try {
      if (r.reused_ > 0) {  // the sequence holds the prompt's first reused_ tokens already
        r.prompt_done_ = r.reused_;
        r.stats_.cached_tokens = static_cast<int64_t>(r.reused_);
      } else if (!r.keep()) {
        clear_sequence(s);
      }
      check_fits(s, static_cast<int64_t>(r.prompt().size() - r.prompt_done_));
      r.logits_.assign(static_cast<size_t>(V), 0.0f);
      r.t_start_ = now;
    } catch (...) {
      fail(r, std::current_exception(), now);
    }
  }
  // The batch: decode rows first, then prompt chunks within the budget.
  batch_.clear();
  batch_req_.clear();
  int budget = n_batch_;
  auto add = [&](Request& r, const int32_t* ids, int n, bool want_logits) {
    Sequence& s = *seqs_[static_cast<size_t>(r.seq_)];
    SeqBatch b;
    b.store = s.store.get();
    b.seq = s.id;
    b.t0 = s.n_past;
    b.protect_below = s.protect_below;
    b.tokens = ids;
    b.n = n;
    b.logits = want_logits ? r.logits_.data() : nullptr;
    // A prompt chunk may leave the step when its request is cancelled (a long chunk is seconds
    // of work); a decode row finishes its step, which is short, and its sequence stays whole
    // (a conversation stopped mid-answer is continued from it).
    b.cancel = n > 1 ? &r.cancel_flag_ : nullptr;
    batch_.push_back(b);
    batch_req_.push_back(&r);
    budget -= n;
  };
  // When a prompt is waiting, one chunk of the budget is kept for it (every other step if the
  // budget is a single chunk), so decodes never hold a joining prompt back for long; decode
  // rows beyond the budget wait a step, starting from a rotating point so none waits twice.
  bool prefill_waiting = false;
  for (auto& rp : running_) prefill_waiting |= rp->phase_ == Request::Phase::Prefill;
  int decode_budget = budget;
  if (prefill_waiting && (n_batch_ > params_.chunk || step_count_ % 2 == 0))
    decode_budget = std::max(0, n_batch_ - params_.chunk);
  const size_t n_run = running_.size();
  for (size_t k = 0; k < n_run; ++k) {
    Request& r = *running_[(k + step_count_) % n_run];
    if (r.phase_ != Request::Phase::Decode || !r.need_eval_ || decode_budget < 1) continue;
    if (remaining_context(r.seq_) == 0) {
      r.finish(FinishReason::Length, now);
      continue;
    }
    add(r, &r.last_token_, 1, true);
    decode_budget--;
  }
  step_count_++;
  for (auto& rp : running_) {
    Request& r = *rp;
    if (r.phase_ != Request::Phase::Prefill) continue;
    const size_t left = r.prompt().size() - r.prompt_done_;
    const int n = static_cast<int>(std::min(left, static_cast<size_t>(params_.chunk)));
    if (n > budget && !batch_.empty()) continue;
    add(r, r.prompt().data() + r.prompt_done_, n, static_cast<size_t>(n) == left);
  }
  if (!batch_.empty()) {
    in_forward_ = true;
    try {
      forward_->run(batch_);
      in_forward_ = false;
    } catch (...) {
      in_forward_ = false;
      // The backend itself failed: every sequence in the step is undefined.
      for (SeqBatch& b : batch_) b.error = std::current_exception();
    }
  }
  now = now_seconds();
  for (size_t i = 0; i < batch_.size(); ++i) {
    Request& r = *batch_req_[i];
    Sequence& s = *seqs_[static_cast<size_t>(r.seq_)];
    const SeqBatch& b = batch_[i];
    if (b.error) {
      try {
        clear_sequence(s);
      } catch (...) {  // the policy's reset failed too: the step's error is the one to report
      }
      if (r.cancel_requested()) r.finish(FinishReason::Cancelled, now);  // (it left the step for that)
      else fail(r, b.error, now);
      continue;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      record(s, b.tokens, b.n);
    }
    try {
      if (r.phase_ == Request::Phase::Decode) {
        r.need_eval_ = false;
        r.on_logits(tok, now);
      } else {
        r.prompt_done_ += static_cast<size_t>(b.n);
        if (r.prompt_done_ == r.prompt().size()) {
          // The penalties look back over the context, as if the whole of it were the prompt:
          // a request continuing its sequence (a chat turn) sees what the sequence holds (its
          // most recent Engine::kHistoryKeep tokens or more), not only its new tokens.
          for (int32_t t : r.keep() ? s.history : r.prompt()) r.sampler_.accept(t);
          r.t_first_ = now;
          r.stats_.prompt_seconds = now - r.t_start_;
          r.phase_ = Request::Phase::Decode;
          if (r.params().max_tokens == 0) r.finish(FinishReason::Length, now);
          else r.on_logits(tok, now);
        }
      }
    } catch (...) {
      fail(r, std::current_exception(), now);
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  publish(now, retired);
}

// Under mu_: the step's text, tokens and statistics become visible; finished requests leave
// their sequences.
void Engine::publish(double now, Retired& retired) {
  for (auto it = running_.begin(); it != running_.end();) {
    Request& r = **it;
    if (!r.produced_.empty()) {
      r.out_.push_back(std::move(r.produced_));
      r.produced_.clear();
    }
    r.pub_tokens_.insert(r.pub_tokens_.end(), r.unpublished_.begin(), r.unpublished_.end());
    r.unpublished_.clear();  // the ids are kept once, in pub_tokens_
    r.pub_logprobs_.insert(r.pub_logprobs_.end(),
                           r.logprobs_.begin() + static_cast<std::ptrdiff_t>(r.pub_logprobs_.size()), r.logprobs_.end());
    if (r.phase_ == Request::Phase::Decode && r.t_first_ > 0) r.stats_.generation_seconds = now - r.t_first_;
    if (r.seq_ >= 0) {
      const Sequence& s = *seqs_[static_cast<size_t>(r.seq_)];
      r.stats_.n_past = s.n_past;
      r.stats_.evictions = s.store->evictions();
      r.stats_.demotions = s.store->demotions();
    }
    r.pub_stats_ = r.stats_;
    if (r.failure_) {
      r.error_ = r.failure_;
      r.failure_ = nullptr;
    }
    if (r.phase_ == Request::Phase::Done) {
      r.done_ = true;
      seqs_[static_cast<size_t>(r.seq_)]->busy = false;
      // What it leaves may be continued by the conversation's next request: others go elsewhere.
      if (r.reuse_prefix_ && !r.error_) seqs_[static_cast<size_t>(r.seq_)]->kept = true;
      retired.push_back(std::move(*it));
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
  cv_.notify_all();
}

// ---- Generation ----------------------------------------------------------------------------

Generation::Generation(Engine& engine, const std::vector<int32_t>& prompt, const GenerateParams& params)
    : engine_(engine) {
  engine_.cancel_requested.store(false);
  req_ = engine_.submit(prompt, params, 0, true);
  engine_.wait_prefilled(*req_);
}

std::string Generation::next() {
  if (finished_) return "";
  std::string piece;
  if (engine_.next(*req_, piece) == Engine::Wait::Done) finished_ = true;
  else if (engine_.finished(*req_)) finished_ = true;
  return piece;
}

}  // namespace tova
