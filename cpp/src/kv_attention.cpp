#include "kv_attention.h"

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "kv_policy.h"

namespace tova {

namespace {

bool needs_probs(const tova_policy* p) { return p && (p->flags & TOVA_POLICY_NEEDS_PROBS); }

// Whether the backend hands this policy the head mean alone (no per-head probabilities).
bool mean_only(const Backend& be, const tova_policy* p) {
  return needs_probs(p) && (p->flags & TOVA_POLICY_MEAN_ONLY) && be.reduces_probs();
}

// Room for what the backend writes back: every head's probabilities, or their mean.
void size_probs(std::vector<float>& probs, bool mean, int n_head, int n_slots) {
  probs.assign(static_cast<size_t>(mean ? 1 : n_head) * static_cast<size_t>(n_slots), 0.0f);
}

// Runs f for one sequence; an exception marks that sequence failed instead of ending the step.
template <class F>
void guarded(SeqRows& s, F&& f) {
  if (s.error) return;
  try {
    f();
  } catch (...) {
    s.error = std::current_exception();
  }
}

}  // namespace

bool StepCancel::check(std::vector<SeqRows>& seqs) const {
  if (!enabled) return false;
  if (poll) poll();
  bool left = false;
  for (SeqRows& s : seqs) {
    if (!s.error && s.cancel && s.cancel->load(std::memory_order_relaxed))
      s.error = std::make_exception_ptr(Cancelled("the request was cancelled during the step"));
    left |= !s.error;
  }
  return !left;
}

void KvAttention::run(Backend& be, const AttnShape& shape, const LayerRule& rule, std::vector<SeqRows>& seqs,
                      float* q, float* k, float* v, float* out, const StepCancel* cancel) {
  if (scratch_.size() < seqs.size()) scratch_.resize(seqs.size());
  rows_.clear();
  // Wave 0: every row of the sequences read at once, the first row of those walked row by row.
  bool walking = false;
  for (size_t i = 0; i < seqs.size(); ++i) {
    guarded(seqs[i], [&] { start(be, shape, rule, seqs[i], scratch_[i], q, k, v, out); });
    walking |= !seqs[i].error && scratch_[i].walk;
  }
  for (;;) {
    if (!rows_.empty()) be.attend(shape, rows_.data(), static_cast<int>(rows_.size()));
    bool flushed = false;
    const bool deferring = be.defer_policy_calls();
    for (size_t i = 0; i < seqs.size(); ++i) {
      SeqRows& s = seqs[i];
      Scratch& x = scratch_[i];
      if (s.error) continue;
      if (x.walk && x.cursor < s.n) {
        if (deferring && x.cursor == s.n - 1) {
          defer(i, rule, x.cursor, x);
        } else {
          if (!flushed) be.flush_host();  // this row's probabilities, now
          flushed = true;
          guarded(s, [&] { finish_row(shape, rule, s, x, x.cursor); });
        }
        x.cursor++;
      } else if (x.evict_once) {
        if (deferring) {
          defer(i, rule, s.n - 1, x);
        } else {
          if (!flushed) be.flush_host();
          flushed = true;
          guarded(s, [&] { finish_row(shape, rule, s, x, s.n - 1); });
        }
        x.evict_once = false;
      }
    }
    if (!walking) break;
    if (cancel) cancel->check(seqs);  // (between two rows of the walk: every row's call is done)
    rows_.clear();
    walking = false;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (seqs[i].error || !scratch_[i].walk || scratch_[i].cursor >= seqs[i].n) continue;
      guarded(seqs[i], [&] { walk_row(be, shape, rule, seqs[i], scratch_[i], q, k, v, out); });
      walking = true;
    }
    if (rows_.empty()) break;
  }
}

void KvAttention::defer(size_t seq, const LayerRule& rule, int row, Scratch& x) {
  if (n_deferred_ == deferred_.size()) deferred_.emplace_back();
  Deferred& d = deferred_[n_deferred_++];
  d.seq = seq;
  d.rule = rule;
  d.row = row;
  // The backend may still write x.probs (until flush_host): the buffer moves to d as it is.
  std::swap(d.x.alive, x.alive);
  std::swap(d.x.slot_of, x.slot_of);
  std::swap(d.x.probs, x.probs);
  std::swap(d.x.mean, x.mean);
  std::swap(d.x.evict_pos, x.evict_pos);
  std::swap(d.x.victims, x.victims);
  d.x.mean_only = x.mean_only;
  d.x.select = x.select;
}

void KvAttention::finish_step(Backend& be, const AttnShape& shape, std::vector<SeqRows>& seqs) {
  if (n_deferred_ == 0) return;
  be.flush_host();
  for (size_t j = 0; j < n_deferred_; ++j) {
    Deferred& d = deferred_[j];
    SeqRows& s = seqs[d.seq];
    guarded(s, [&] { finish_row(shape, d.rule, s, d.x, d.row); });
  }
  n_deferred_ = 0;
}

void KvAttention::start(Backend& be, const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x,
                        float* q, float* k, float* v, float* out) {
  LayerCells& L = s.store->layer(rule.layer);
  const tova_policy* pol = rule.policy;
  const bool every_step = pol && (pol->flags & TOVA_POLICY_EVERY_STEP);
  const bool fits = L.n_valid + s.n <= L.capacity;
  if (rule.never_evicts && !fits)
    throw Error(cat("context full: ", L.n_valid, " tokens cached + ", s.n, " new > n_ctx ", L.capacity));
  const bool simple = rule.never_evicts || (fits && !every_step && !(pol && pol->on_insert));
  // (Positions cache_index rotate each row's keys by rank: a chunk read in one pass still works,
  // its rows' slots in position order; a chunk without eviction is walked.)
  const bool one_pass = rule.chunked && s.n > 1;
  x.walk = rule.rank_rope ? !one_pass : !(simple || one_pass);
  x.evict_once = false;
  x.mean_only = x.select = false;
  x.cursor = 0;
  x.slot_of.assign(static_cast<size_t>(s.n), -1);
  if (x.walk) {
    walk_row(be, shape, rule, s, x, q, k, v, out);
    return;
  }
  // No eviction inside the chunk (or chunked prefill): insert every row, row i sees the kept
  // slots with position <= t0 + i, a prefix of the slots in position order.
  for (int i = 0; i < s.n; ++i)
    x.slot_of[static_cast<size_t>(i)] =
        s.store->insert(rule.layer, s.t0 + i, s.protect_below, rule.never_evicts, be, s.t0);
  const size_t KW = static_cast<size_t>(shape.n_head_kv) * shape.head_dim;
  const size_t QW = static_cast<size_t>(shape.n_head) * shape.head_dim;
  be.write_kv(s.store->payload(), rule.layer, x.slot_of.data(), s.n, k + s.row0 * KW, v + s.row0 * KW);
  if (pol && pol->on_insert) {  // chunked prefill: every token written is announced too
    PolicyCall call;
    call.policy = rule.policy;
    call.seq = s.seq;
    call.n_head = shape.n_head;
    for (int i = 0; i < s.n; ++i)
      s.store->notify_insert(rule.layer, x.slot_of[static_cast<size_t>(i)], s.t0 + i, call);
  }
  L.alive_by_position(x.alive);
  const int n_before = static_cast<int>(x.alive.size()) - s.n;
  x.evict_once = !simple;
  for (int i = 0; i < s.n; ++i) {
    AttnRow r;
    r.kv = &s.store->payload();
    r.layer = rule.layer;
    r.idx = x.alive.data();
    r.n_idx = n_before + i + 1;
    r.q = q + (s.row0 + i) * QW;
    r.out = out + (s.row0 + i) * QW;
    r.n_slots = L.n_slots;
    r.rank_rope = rule.rank_rope;
    if (x.evict_once && i == s.n - 1)  // (the chunk's tokens are the last s.n of idx)
      ask_policy_input(be, shape, pol, L, x.slot_of[static_cast<size_t>(i)], s.n, x, r);
    rows_.push_back(r);
  }
}

// One row of the exact walk: insert token i, attend over the kept set plus it; the policy then
// evicts down to capacity using this row's probabilities (finish_row).
void KvAttention::walk_row(Backend& be, const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x,
                           float* q, float* k, float* v, float* out) {
  const int i = x.cursor;
  LayerCells& L = s.store->layer(rule.layer);
  const int64_t t = s.t0 + i;
  const int slot = s.store->insert(rule.layer, t, s.protect_below, rule.never_evicts, be, s.t0);
  x.slot_of[static_cast<size_t>(i)] = slot;
  const size_t KW = static_cast<size_t>(shape.n_head_kv) * shape.head_dim;
  const size_t QW = static_cast<size_t>(shape.n_head) * shape.head_dim;
  be.write_kv(s.store->payload(), rule.layer, &slot, 1, k + (s.row0 + i) * KW, v + (s.row0 + i) * KW);
  PolicyCall call;
  call.policy = rule.policy;
  call.seq = s.seq;
  call.n_head = shape.n_head;
  s.store->notify_insert(rule.layer, slot, t, call);
  // The row sees every kept slot: read in memory order (an evicting policy scatters positions
  // over the pool), except with cache_index, where key j is rotated by its rank j.
  if (rule.rank_rope)
    L.alive_by_position(x.alive);
  else
    L.alive_by_slot(x.alive);
  AttnRow r;
  r.kv = &s.store->payload();
  r.layer = rule.layer;
  r.idx = x.alive.data();
  r.n_idx = static_cast<int>(x.alive.size());
  r.q = q + (s.row0 + i) * QW;
  r.out = out + (s.row0 + i) * QW;
  r.n_slots = L.n_slots;
  r.rank_rope = rule.rank_rope;
  ask_policy_input(be, shape, rule.policy, L, slot, 0, x, r);
  rows_.push_back(r);
}

// A built-in policy's step where the backend runs it (tova: nothing at all while the layer has
// room), else the probabilities, or their head mean, when the policy reads them. Two tiers rank
// demotions by the head mean: the host's policy then.
void KvAttention::ask_policy_input(const Backend& be, const AttnShape& shape, const tova_policy* pol,
                                   const LayerCells& L, int new_slot, int new_tail, Scratch& x, AttnRow& r) {
  const BuiltinRule rule = be.selects_victims() && L.attention.empty() ? builtin_rule(pol) : BuiltinRule::None;
  x.select = rule != BuiltinRule::None;
  x.mean_only = false;
  if (x.select) {
    const int n_evict = std::max(0, L.n_valid - L.capacity);
    x.victims.assign(static_cast<size_t>(n_evict), -1);
    if (n_evict == 0 && rule == BuiltinRule::Tova) return;
    if (n_evict > 0) {  // the candidates (h2o, tova_ema: the state is updated every step all the same)
      const int32_t recent =
          rule == BuiltinRule::H2o ? h2o_recent_start(L.pos.data(), L.n_slots, L.capacity) : INT32_MAX;
      x.evict_pos.resize(static_cast<size_t>(r.n_idx));
      for (int j = 0; j < r.n_idx; ++j) {
        const size_t sl = static_cast<size_t>(r.idx[j]);
        x.evict_pos[static_cast<size_t>(j)] = L.protect[sl] || L.pos[sl] >= recent ? -1 : L.pos[sl];
      }
    }
    r.rule = rule;
    r.new_slot = new_slot;
    r.new_tail = new_tail;
    r.evict_pos = x.evict_pos.data();
    r.n_evict = n_evict;
    r.victims = x.victims.data();
    return;
  }
  if (!needs_probs(pol)) return;
  x.mean_only = mean_only(be, pol);
  size_probs(x.probs, x.mean_only, shape.n_head, L.n_slots);
  r.probs = x.probs.data();
  r.probs_mean_only = x.mean_only;
}

// After row i's attention: probs_mean (over all query heads, summed in head order, unless the
// backend did that) and the policy.
void KvAttention::finish_row(const AttnShape& shape, const LayerRule& rule, SeqRows& s, Scratch& x, int i) {
  LayerCells& L = s.store->layer(rule.layer);
  PolicyCall call;
  call.policy = rule.policy;
  call.seq = s.seq;
  call.n_head = shape.n_head;
  // probs only when the policy asked for them (the ABI's promise): others never pay for them.
  const int32_t none = -1;
  if (x.select) {  // (never select() then, not even with nothing selected)
    call.victims = x.victims.empty() ? &none : x.victims.data();
    call.n_victims = static_cast<int>(x.victims.size());
  } else if (needs_probs(rule.policy) && x.mean_only) {
    call.probs_mean = x.probs.data();  // probs stays null (TOVA_POLICY_MEAN_ONLY)
  } else if (needs_probs(rule.policy)) {
    const int n_slots = L.n_slots;
    x.mean.assign(static_cast<size_t>(n_slots), 0.0f);
    for (int h = 0; h < shape.n_head; ++h) {
      const float* row = x.probs.data() + static_cast<size_t>(h) * n_slots;
      for (int32_t sl : x.alive) x.mean[static_cast<size_t>(sl)] += row[sl];
    }
    const float inv_h = 1.0f / static_cast<float>(shape.n_head);
    for (int32_t sl : x.alive) x.mean[static_cast<size_t>(sl)] *= inv_h;
    call.probs = x.probs.data();
    call.probs_mean = x.mean.data();
  }
  s.store->apply_policy(rule.layer, s.t0 + i, x.slot_of[static_cast<size_t>(i)], rule.never_evicts, call);
}

}  // namespace tova
