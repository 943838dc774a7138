#include "engine.h"

#include <new>
#include <algorithm>

#include "common.h"

namespace tova {

Engine::Engine(const std::string& model_path, EngineParams params) : params_(std::move(params)) {
  params_.validate();
  model_ = std::make_unique<Model>(model_path);
  const HParams& h = model_->hp();
  const bool full = params_.full();
  if (params_.kv_size == 0) {  // the default: 512, or the model's whole training context when shorter
    params_.kv_size = std::min(EngineParams::kDefaultKvSize, h.n_ctx_train);
    params_.validate();
  } else if (!full && params_.kv_size > h.n_ctx_train) {
    throw ArgumentError(cat("kv_size ", params_.kv_size, " is larger than the model's context ", h.n_ctx_train));
  }

  KvConfig kc;
  kc.capacity = full ? params_.n_ctx : params_.kv_size;
  kc.max_step = params_.chunk;
  kc.type_k = params_.kv_type_k;
  kc.type_v = params_.kv_type_v;
  kc.hadamard = params_.kv_hadamard;
  kc.hi_capacity = params_.hi_size();
  kc.type_k_lo = params_.kv_lo_type_k;
  kc.type_v_lo = params_.kv_lo_type_v;
  kc.n_sink = params_.sink();
  kc.full = full;
  const uint64_t per_seq = plan_kv(h, kc).bytes;
  int n_seq = params_.n_seq;
  if (params_.kv_budget > 0) {
    const uint64_t fit = params_.kv_budget / per_seq;
    if (fit == 0)
      throw ArgumentError(cat("kv_budget ", format_bytes(params_.kv_budget), " (", params_.kv_budget,
                              " bytes) is too small for one sequence: one needs ", per_seq, " bytes (",
                              format_bytes(per_seq), ") with ", full ? "n_ctx " : "kv_size ", kc.capacity,
                              ", kv_type ", params_.kv_type_label(),
                              params_.kv_lo ? cat(", kv_lo_type ", params_.kv_lo_type_label(), " beyond kv_hi_size ",
                                                  kc.hi_capacity)
                                            : std::string(),
                              ", chunk ", kc.max_step));
    n_seq = static_cast<int>(std::min<uint64_t>(fit, Limits::kMaxSeq));
  }
  n_batch_ = params_.n_batch > 0 ? params_.n_batch : std::min(Limits::kMaxBatch, params_.chunk + n_seq);
  // Refuse what cannot fit in this machine's memory before allocating any of it. (On a GPU the
  // K/V and activations are device memory: an allocation there that fails is the error; the CPU
  // simulator's device memory is this machine's.)
  const uint64_t act = static_cast<uint64_t>(n_batch_) * sizeof(float) *
                       (4ull * h.n_embd + 2ull * h.n_head * h.head_dim + 2ull * h.n_head_kv * h.head_dim + 2ull * h.n_ff);
  const uint64_t need = per_seq * static_cast<uint64_t>(n_seq) + act;
  const uint64_t have = available_memory_bytes();
  if ((params_.backend == BackendKind::Cpu || cuda_simulated()) && need > have)
    throw ArgumentError(cat("these settings need ", format_bytes(need), " (KV ", format_bytes(per_seq), " x ",
                            n_seq, " sequences + activations for ", n_batch_, " tokens per step), more than "
                            "the memory this process can take now, ", format_bytes(have),
                            " (the machine's available memory, less any container or ulimit -v limit)",
                            ": lower n_seq, kv_size, n_ctx or chunk"));

  policy_ = params_.plugin ? std::move(params_.plugin) : make_builtin_policy(tova::policy_name(params_.policy));
  if (params_.plugin || policy_.origin().rfind("built-in", 0) != 0) params_.policy = PolicyKind::Plugin;
  check_policy_abi(policy_.get(), policy_.origin());
  if (n_seq > 1 && policy_->abi_version < 2 && policy_->reset)
    throw ArgumentError(cat(policy_.origin(), ": an ABI version 1 policy with a reset callback keeps state the "
                            "engine cannot tell apart by sequence; n_seq must be 1 (or rebuild it against "
                            "ABI version 2, which adds view->seq and reset_seq)"));
  window_ = make_builtin_policy("window");
  policies_.policy.resize(static_cast<size_t>(h.n_layer));
  for (int l = 0; l < h.n_layer; ++l)
    policies_.policy[static_cast<size_t>(l)] = h.is_swa_layer(l) ? window_.get() : policy_.get();
  policies_.never_evicts = full;
  policies_.cache_index = params_.positions == PositionsMode::CacheIndex;
  policies_.chunked = params_.prefill == PrefillMode::Chunked;

  try {
    backend_ = make_backend(params_.backend, *model_, n_batch_, params_.n_threads, params_.float_activations);
    forward_ = std::make_unique<Forward>(*model_, *backend_, policies_);
    forward_->set_cancel_poll([this] { poll_cancel(); });
    for (int i = 0; i < n_seq; ++i) {
      auto s = std::make_unique<Sequence>();
      s->id = i;
      s->store = std::make_unique<KvStore>(h, kc, *backend_);
      seqs_.push_back(std::move(s));
    }
  } catch (const std::bad_alloc&) {  // past the check above: memory taken meanwhile, or fragmented
    throw Error(cat("cannot allocate the engine's ", format_bytes(need), " (KV ", format_bytes(per_seq), " x ", n_seq,
                    " sequences + activations): the system refused it (", format_bytes(available_memory_bytes()),
                    " available now); lower n_seq, kv_size, n_ctx or chunk"));
  }
  params_.n_seq = n_seq;
}

Engine::~Engine() = default;

const char* Engine::policy_name() const { return policy_->name ? policy_->name : "plugin"; }

std::vector<int32_t> Engine::tokenize(const std::string& text, bool add_bos, bool special) const {
  return model_->tokenizer().encode(text, add_bos, special);
}

std::string Engine::detokenize(const std::vector<int32_t>& ids, bool special) const {
  const Tokenizer& t = model_->tokenizer();
  for (int32_t id : ids)
    if (id < 0 || id >= t.n_vocab())
      throw ArgumentError(cat("token id ", id, " is out of range [0, ", t.n_vocab(), ")"));
  return t.decode(ids, special);
}

Sequence& Engine::seq_at(int seq) {
  if (seq < 0 || seq >= n_seq())
    throw ArgumentError(cat("sequence ", seq, " is out of range [0, ", n_seq(), ")"));
  return *seqs_[static_cast<size_t>(seq)];
}

const Sequence& Engine::seq_at(int seq) const { return const_cast<Engine*>(this)->seq_at(seq); }

uint64_t Engine::kv_bytes() const {
  uint64_t b = 0;
  for (const auto& s : seqs_) b += s->store->bytes();
  return b;
}

int64_t Engine::remaining_context(int seq) const {
  if (policies_.never_evicts) return params_.n_ctx - seq_at(seq).n_past;
  return -1;
}

void Engine::check_fits(const Sequence& s, int64_t n_new) const {
  if (!policies_.never_evicts) return;
  const int64_t room = params_.n_ctx - s.n_past;
  if (n_new > room)
    throw ArgumentError(cat(s.n_past > 0 ? cat(s.n_past, " cached + ") : std::string(), n_new,
                            " tokens exceed n_ctx ", params_.n_ctx,
                            " (policy 'full' never evicts: raise n_ctx or use an evicting policy)"));
}

void Engine::record(Sequence& s, const int32_t* ids, int n) {
  s.n_past += n;
  if (s.record_ok && s.record.size() + static_cast<size_t>(n) <= Sequence::kRecordCap) {
    s.record.insert(s.record.end(), ids, ids + n);
  } else {
    s.record_ok = false;
    s.record.clear();
    s.record.shrink_to_fit();
  }
  s.history.insert(s.history.end(), ids, ids + n);
  // Fixed memory: keep only the most recent tokens (amortized: trim at twice the bound).
  if (s.history.size() > 2 * kHistoryKeep)
    s.history.erase(s.history.begin(), s.history.end() - static_cast<std::ptrdiff_t>(kHistoryKeep));
}

void Engine::notify_policy_reset(const Sequence& s) {
  tova_policy* p = policy_.get();
  if (p->abi_version >= 2 && p->reset_seq) p->reset_seq(p->user, s.id);
  else if (p->reset) p->reset(p->user);
}

void Engine::clear_sequence(Sequence& s) {
  // The policy's hook first, without mu_: a Python policy takes the GIL, and a thread holding
  // the GIL may be waiting for mu_.
  notify_policy_reset(s);
  std::lock_guard<std::mutex> lk(mu_);
  s.epoch++;
  s.store->clear();
  s.history.clear();
  s.record.clear();
  s.record_ok = true;
  s.kept = false;
  s.scored = false;
  s.n_past = 0;
  s.protect_below = -1;
}

// ---- direct calls on one sequence ----------------------------------------------------------

void Engine::release_direct(int seq, int seq2) {
  std::lock_guard<std::mutex> lk(mu_);
  seqs_[static_cast<size_t>(seq)]->busy = false;
  if (seq2 >= 0) seqs_[static_cast<size_t>(seq2)]->busy = false;
  drop_compute();
  cv_.notify_all();
}

void Engine::eval(int seq, const std::vector<int32_t>& ids, bool all_logits, std::vector<float>& logits) {
  if (ids.empty()) throw ArgumentError("eval needs at least one token");
  Sequence& s = seq_at(seq);
  const int V = model_->hp().n_vocab;
  for (int32_t id : ids)
    if (id < 0 || id >= V) throw ArgumentError(cat("token id ", id, " is out of range [0, ", V, ")"));
  if (all_logits) {  // n x n_vocab floats: refused before they are allocated, not an OOM kill
    const uint64_t need = static_cast<uint64_t>(ids.size()) * static_cast<uint64_t>(V) * sizeof(float);
    const uint64_t avail = available_memory_bytes();
    if (need > avail / 2)
      throw ArgumentError(cat("all_logits for ", ids.size(), " tokens needs ", format_bytes(need), " (tokens x ", V,
                              " vocabulary floats), more than half the memory available now (",
                              format_bytes(avail), "): evaluate the tokens in pieces"));
  }
  {
    std::unique_lock<std::mutex> lk(mu_);
    acquire_direct(lk, seq);
  }
  struct Release {
    Engine* e;
    int seq;
    ~Release() { e->release_direct(seq); }
  } release{this, seq};
  check_fits(s, static_cast<int64_t>(ids.size()));
  logits.resize(all_logits ? ids.size() * static_cast<size_t>(V) : static_cast<size_t>(V));
  const size_t U = static_cast<size_t>(params_.chunk);
  std::vector<SeqBatch> batch(1);
  for (size_t b = 0; b < ids.size(); b += U) {
    const int n = static_cast<int>(std::min(ids.size() - b, U));
    const bool last = b + static_cast<size_t>(n) == ids.size();
    SeqBatch& sb = batch[0];
    sb = SeqBatch{};
    sb.store = s.store.get();
    sb.seq = s.id;
    sb.t0 = s.n_past;
    sb.protect_below = s.protect_below;
    sb.tokens = ids.data() + b;
    sb.n = n;
    sb.all_logits = all_logits;
    sb.logits = all_logits ? logits.data() + b * static_cast<size_t>(V) : (last ? logits.data() : nullptr);
    try {
      if (b > 0 && interrupt_hook) interrupt_hook();
      forward_->run(batch);
      if (sb.error) std::rethrow_exception(sb.error);
    } catch (...) {
      clear_sequence(s);  // the store may be half-updated: start the sequence over
      throw;
    }
    std::lock_guard<std::mutex> lk(mu_);
    record(s, ids.data() + b, n);
    // What eval builds is its caller's (scoring step by step): a generation for any sequence
    // takes another free one first (only when none is left does it take this one, clearing it).
    s.scored = true;
  }
}

void Engine::reset(int seq) {
  Sequence& s = seq_at(seq);
  {
    std::unique_lock<std::mutex> lk(mu_);
    acquire_direct(lk, seq);
  }
  try {
    clear_sequence(s);
  } catch (...) {
    release_direct(seq);
    throw;
  }
  release_direct(seq);
}

void Engine::copy_sequence(int src, int dst) {
  Sequence& a = seq_at(src);
  Sequence& b = seq_at(dst);
  if (src == dst) return;
  std::unique_lock<std::mutex> lk(mu_);
  acquire_direct(lk, src, dst);
  lk.unlock();
  struct Release {
    Engine* e;
    int a, b;
    ~Release() { e->release_direct(a, b); }
  } release{this, src, dst};
  try {
    b.store->copy_from(*a.store, *backend_);
    notify_policy_reset(b);
  } catch (...) {
    clear_sequence(b);  // not half a copy
    throw;
  }
  std::lock_guard<std::mutex> fields(mu_);
  b.epoch++;
  b.n_past = a.n_past;
  b.history = a.history;
  b.record = a.record;
  b.record_ok = a.record_ok;
  b.protect_below = a.protect_below;
}

// The compute token for the scope: no step runs while a store is read or its settings change.
class Engine::ComputeScope {
 public:
  explicit ComputeScope(const Engine& e) : e_(const_cast<Engine&>(e)) {
    std::unique_lock<std::mutex> lk(e_.mu_);
    e_.acquire_compute(lk);
  }
  ~ComputeScope() { e_.release_compute(); }
  ComputeScope(const ComputeScope&) = delete;
  ComputeScope& operator=(const ComputeScope&) = delete;

 private:
  Engine& e_;
};

void Engine::set_protect_below(int64_t pos, int seq) {
  Sequence& s = seq_at(seq);
  ComputeScope compute(*this);
  s.protect_below = pos;
}

uint64_t Engine::epoch(int seq) const {
  std::lock_guard<std::mutex> lk(mu_);
  return seq_at(seq).epoch;
}

void Engine::set_held(int seq, bool held) {
  Sequence& s = seq_at(seq);
  std::lock_guard<std::mutex> lk(mu_);
  s.held = held;
  cv_.notify_all();
}

void Engine::set_kept(int seq, bool kept) {
  Sequence& s = seq_at(seq);
  std::lock_guard<std::mutex> lk(mu_);
  s.kept = kept;
}

std::vector<Engine::LayerSummary> Engine::layer_summary(int seq) const {
  const Sequence& s = seq_at(seq);
  ComputeScope compute(*this);
  std::vector<LayerSummary> out;
  for (int l = 0; l < s.store->n_layer(); ++l) {
    const LayerCells& L = s.store->layer(l);
    out.push_back({L.capacity, L.n_slots, L.n_valid, L.sliding, L.n_evicted});
  }
  return out;
}

int64_t Engine::n_past(int seq) const {
  std::lock_guard<std::mutex> lk(mu_);
  return seq_at(seq).n_past;
}

std::vector<int32_t> Engine::history(int seq) const {
  std::lock_guard<std::mutex> lk(mu_);
  return seq_at(seq).history;
}

const KvStore& Engine::kv_store(int seq) const { return *seq_at(seq).store; }

std::vector<int32_t> Engine::kv_positions(int layer, int seq, int tier) const {
  const Sequence& s = seq_at(seq);
  if (layer < 0 || layer >= s.store->n_layer())
    throw ArgumentError(cat("layer ", layer, " is out of range [0, ", s.store->n_layer(), ")"));
  if (tier < -1 || tier > 1) throw ArgumentError(cat("tier must be 0 (upper), 1 (lower) or -1 (both), got ", tier));
  ComputeScope compute(*this);
  const LayerCells& L = s.store->layer(layer);
  const int begin = tier == 1 ? L.n_hi : 0, end = tier == 0 ? L.n_hi : L.n_slots;
  std::vector<int32_t> out;
  for (int i = begin; i < end; ++i)
    if (L.pos[static_cast<size_t>(i)] >= 0) out.push_back(L.pos[static_cast<size_t>(i)]);
  std::sort(out.begin(), out.end());
  return out;
}

int64_t Engine::evictions(int seq) const {
  const Sequence& s = seq_at(seq);
  ComputeScope compute(*this);
  return s.store->evictions();
}

int64_t Engine::demotions(int seq) const {
  const Sequence& s = seq_at(seq);
  ComputeScope compute(*this);
  return s.store->demotions();
}

}  // namespace tova
