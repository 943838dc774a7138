// The engine: a model, a backend, n_seq sequences each with its own fixed-memory KV store, and
// the scheduler that runs generation requests in them (continuous batching: sequences join and
// leave between steps; a joining prompt is read in chunks interleaved with the others' decode
// steps, under a per-step token budget). Every face (Python's generate/stream/chat/submit, the
// CLI) runs the one decode loop of request.cpp through it.
//
// Threads: any number of threads may use one Engine. Requests are queued; a thread waiting for
// its request's next piece runs scheduler steps itself while no other thread does (so there is
// no background thread, and a step is never run twice at once). Direct calls on one sequence
// (eval, reset, kv_positions) wait until that sequence is not running a request.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "config.h"
#include "forward.h"
#include "kv_policy.h"
#include "kv_store.h"
#include "model.h"
#include "request.h"

namespace tova {

struct Sequence {
  int id = 0;
  std::unique_ptr<KvStore> store;
  int64_t n_past = 0;
  std::vector<int32_t> history;  // the most recent tokens (bounded, see Engine::kHistoryKeep)
  int64_t protect_below = -1;    // positions below this are never evicted (pinned prompt)
  bool busy = false;             // running a request, or in a direct call
  uint64_t epoch = 0;            // counts clears: a holder of its content notices another use
  bool held = false;             // not given to requests for any sequence (a turn being set up)
  bool kept = false;             // holds a conversation: requests for any sequence prefer others
  bool scored = false;           // holds eval's tokens: requests prefer any other (a conversation too)
  // Every token evaluated since the last clear, while there are at most kRecordCap: a request
  // whose prompt starts with them can continue this sequence instead of reading them again.
  std::vector<int32_t> record;
  bool record_ok = true;
  static constexpr size_t kRecordCap = 1 << 16;
};

class Engine {
 public:
  Engine(const std::string& model_path, EngineParams params);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Model& model() const { return *model_; }
  const EngineParams& params() const { return params_; }
  const Backend& backend() const { return *backend_; }
  int n_threads() const { return backend_->n_threads(); }
  int n_seq() const { return static_cast<int>(seqs_.size()); }
  int n_batch() const { return n_batch_; }

  std::vector<int32_t> tokenize(const std::string& text, bool add_bos, bool special) const;
  std::string detokenize(const std::vector<int32_t>& ids, bool special = false) const;

  // ---- one sequence, run directly in the calling thread ----
  // Appends tokens to sequence `seq` and runs them through the model in chunks. Writes the last
  // position's logits (or every position's, [n][n_vocab], with all_logits). On an error the
  // sequence is reset and the error rethrown.
  void eval(int seq, const std::vector<int32_t>& ids, bool all_logits, std::vector<float>& logits);
  void eval(const std::vector<int32_t>& ids, bool all_logits, std::vector<float>& logits) {
    eval(0, ids, all_logits, logits);
  }
  // Clears a sequence (the store keeps its memory).
  void reset(int seq = 0);
  // Makes sequence dst a copy of src (its slots, K/V, positions and history): a fork that
  // continues from the same state without reading it again.
  void copy_sequence(int src, int dst);
  int64_t n_past(int seq = 0) const;
  std::vector<int32_t> history(int seq = 0) const;
  static constexpr size_t kHistoryKeep = 4096;
  // Sorted positions a layer keeps; tier 0 / 1: only those of the upper / lower KV tier.
  std::vector<int32_t> kv_positions(int layer, int seq = 0, int tier = -1) const;
  int64_t evictions(int seq = 0) const;
  int64_t demotions(int seq = 0) const;  // tokens moved to the lower KV tier (kv_lo_type)
  // Protects every position below `pos` of a sequence from eviction from now on.
  void set_protect_below(int64_t pos, int seq = 0);
  // Content ownership for a conversation kept in a sequence (ChatFeed): the clear count, a hold
  // that keeps requests for "any sequence" away while a turn is set up, and a preference flag.
  uint64_t epoch(int seq = 0) const;
  void set_held(int seq, bool held);
  void set_kept(int seq, bool kept);
  // Tokens the next eval of a sequence may take (full policy: n_ctx - n_past); -1 = unlimited.
  int64_t remaining_context(int seq = 0) const;
  // Per layer of a sequence: capacity, slots, valid, sliding, evicted (a consistent snapshot).
  struct LayerSummary {
    int capacity, slots, valid;
    bool sliding;
    int64_t evicted;
  };
  std::vector<LayerSummary> layer_summary(int seq = 0) const;
  const KvStore& kv_store(int seq = 0) const;  // no step may run while it is read (single-threaded use)

  // Exact bytes of every sequence's KV store together, and of one sequence's.
  uint64_t kv_bytes() const;
  uint64_t kv_bytes_per_seq() const { return seqs_.front()->store->bytes(); }

  // ---- the scheduler ----
  // reuse_prefix (with seq -1): continue a free sequence that holds a prefix of the prompt
  // (exact prefill only; the longest such), reading only the rest; the result is the same.
  std::shared_ptr<Request> submit(std::vector<int32_t> prompt, const GenerateParams& params,
                                  int seq = -1, bool keep = false, bool reuse_prefix = false);
  // A request nobody will wait for (its handle dropped), cancelled: when it is still queued and
  // the scheduler's lock is free, it leaves the queue now instead of at the next step that some
  // waiting caller runs (thousands of dropped handles would otherwise hold their memory until
  // then). Never blocks.
  void forget_queued(const std::shared_ptr<Request>& r);
  enum class Wait { Piece, Timeout, Done };
  // The request's next piece of text (Piece), or Done when it has finished and every piece was
  // taken; Timeout when timeout_s >= 0 passed first. Runs scheduler steps while waiting. A
  // request that failed rethrows its error here (once).
  Wait next(Request& r, std::string& piece, double timeout_s = -1);
  // Copies of the request's generated tokens and statistics as of its last step.
  std::vector<int32_t> tokens(const Request& r) const;
  // The recorded log-probabilities of generated tokens from index `from` on (top_logprobs >= 0).
  std::vector<TokenLogprob> logprobs(const Request& r, size_t from = 0) const;
  Stats stats(const Request& r) const;
  bool finished(const Request& r) const;
  // Waits (stepping meanwhile) until the request has read its whole prompt or finished.
  void wait_prefilled(Request& r);
  // Runs one scheduler step if there is work and no other thread is stepping; false otherwise.
  bool step();

  // Set from another thread (or a signal handler) to cancel every running request.
  std::atomic<bool> cancel_requested{false};
  // Called between the prefill chunks of a long direct eval; may throw to abort it (the
  // sequence is then reset). Python installs a Ctrl-C check here, the CLI a check of its flag.
  std::function<void()> interrupt_hook;
  // Called on the stepping thread during a step, between layers (every 50 ms at most), while
  // that thread runs the step as it waits for a request of its own: true cancels that request
  // (its sequence leaves the step at once, and is reset). Python installs a Ctrl-C check here
  // for the main thread (it keeps the KeyboardInterrupt for the waiting call to raise).
  std::function<bool()> interrupt_probe;

  const char* policy_name() const;
  tova_policy* policy() const { return policy_.get(); }

 private:
  class ComputeScope;
  Sequence& seq_at(int seq);
  const Sequence& seq_at(int seq) const;
  void clear_sequence(Sequence& s);  // without mu_ held
  void notify_policy_reset(const Sequence& s);
  void check_fits(const Sequence& s, int64_t n_new) const;
  void record(Sequence& s, const int32_t* ids, int n);
  // Takes the compute token and sequence `seq` (waiting, and stepping for others meanwhile).
  void acquire_direct(std::unique_lock<std::mutex>& lk, int seq, int seq2 = -1);
  void release_direct(int seq, int seq2 = -1);
  bool has_work() const;
  // The compute token alone (no step or direct call runs meanwhile): consistent reads of stores.
  void acquire_compute(std::unique_lock<std::mutex>& lk);
  void release_compute();
  // Throws if the calling thread is the one running a step (a policy callback calling back).
  void check_not_reentrant() const;
  void take_compute();  // under mu_: this thread runs a step or a direct call (stepping_)
  void drop_compute();  // under mu_: it has ended
  // Until ready() holds (under mu_): runs steps when there is work and nobody steps, else
  // waits. False when timeout_s >= 0 passed first.
  // `waiting`: the request the calling thread waits for (interrupt_probe's; may be null).
  template <class Ready>
  bool drive(std::unique_lock<std::mutex>& lk, Ready ready, double timeout_s, Request* waiting = nullptr);
  void run_step();  // the step itself: stepping_ is held by the caller
  void step_locked(std::unique_lock<std::mutex>& lk, Request* waiting = nullptr);
  // Between the layers of a step (Forward's cancel poll): an engine-wide cancel reaches the
  // step's requests, and interrupt_probe may cancel the stepping thread's own.
  void poll_cancel();
  // Requests that leave the queue or their sequence go to `retired`, released by the caller
  // after mu_: a request's last reference may hold a Python exception, whose release takes the
  // GIL, which a thread waiting for mu_ may hold.
  using Retired = std::vector<std::shared_ptr<Request>>;
  void admit(double now, Retired& retired);
  void fail(Request& r, std::exception_ptr e, double now);
  void publish(double now, Retired& retired);

  EngineParams params_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Backend> backend_;
  PolicyHandle policy_, window_;
  LayerPolicies policies_;
  std::unique_ptr<Forward> forward_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
  int n_batch_ = 0;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stepping_ = false;  // a thread is running a step or a direct call
  std::thread::id stepper_;  // that thread
  std::deque<std::shared_ptr<Request>> queue_;
  std::vector<std::shared_ptr<Request>> running_;
  std::vector<SeqBatch> batch_;  // the step being run (stepping thread only)
  uint64_t step_count_ = 0;
  std::vector<Request*> batch_req_;
  bool in_forward_ = false;          // run_step's forward pass is running (batch_req_ is its)
  Request* step_waiting_ = nullptr;  // the stepping thread's own request, during a step
  double last_probe_ = 0;            // when interrupt_probe last ran (stepping thread)
};

// A C++ convenience over one request on sequence 0, continuing what it holds (the CLI's run and
// chat): the constructor reads the prompt; next() returns the next piece ("" possible).
class Generation {
 public:
  Generation(Engine& engine, const std::vector<int32_t>& prompt, const GenerateParams& params);
  // Dropping a generation that has not finished cancels its request (its sequence is freed).
  ~Generation() {
    if (req_ && !finished_) req_->cancel();
  }
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;
  std::string next();
  bool finished() const { return finished_; }
  FinishReason finish_reason() const { return engine_.stats(*req_).finish; }
  void cancel() { req_->cancel(); }
  std::vector<int32_t> tokens() const { return engine_.tokens(*req_); }
  Stats stats() const { return engine_.stats(*req_); }

 private:
  Engine& engine_;
  std::shared_ptr<Request> req_;
  bool finished_ = false;
};

}  // namespace tova
