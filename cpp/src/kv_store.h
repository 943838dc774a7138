// The fixed-memory KV store of one sequence (spec §2): per layer a pool of slots allocated once.
// This file keeps the bookkeeping of every slot (absolute position, -1 = empty; protection; the
// policy's per-slot float) and the one implementation of insert, policy call, victim validation
// and eviction; the K/V vectors themselves live in a backend-owned KvPayload. Nothing here grows
// while generating.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend.h"
#include "config.h"
#include "tova/policy_plugin.h"

namespace tova {

struct HParams;

struct KvConfig {
  int capacity = 512;      // C for the policy's layers (states kept after each step)
  int max_step = 64;       // U: the most tokens of this sequence handled in one step
  KvType type_k = KvType::F16;
  KvType type_v = KvType::F16;
  bool hadamard = true;    // rotate quantized keys and values (KvLayout::hadamard_k/_v) where head_dim allows
  int n_sink = 0;          // first positions never evicted
  bool full = false;       // every non-sliding layer a plain cache of `capacity` that never evicts
  // Two precision tiers on the non-sliding layers when > 0 (and < capacity): the store keeps
  // `capacity` tokens, of which hi_capacity (plus the U working slots) in type_k/_v and the rest
  // in type_k_lo/_v_lo. New tokens enter the upper tier; when it is full, its token with the
  // lowest (protected, state, attention, position) moves down (demote; attention: the
  // head-mean probability the slot got at the last step the policy saw one). One pool to the policy.
  int hi_capacity = 0;
  KvType type_k_lo = KvType::Q4_0;
  KvType type_v_lo = KvType::Q4_0;
};

// One layer's slot table.
struct LayerCells {
  int capacity = 0;       // C of this layer
  int n_slots = 0;        // P = C + U
  int n_hi = 0;           // slots [0, n_hi) are the upper tier, [n_hi, n_slots) the lower
  bool sliding = false;   // a sliding-window layer (window policy, fixed by the model)
  std::vector<int32_t> pos;       // -1 = empty
  std::vector<uint8_t> protect;   // 1 = never evicted
  std::vector<float> state;       // the policy's per-slot value
  std::vector<float> attention;   // two tiers only: the last head-mean probability (else empty)
  int n_valid = 0;
  std::vector<int32_t> order;     // the occupied slots in ascending position (kept with pos)
  int64_t n_evicted = 0;          // total evictions, for stats
  int64_t n_demoted = 0;          // total moves to the lower tier, for stats

  int free_slot(int begin, int end) const;  // lowest empty slot in [begin, end), -1 if none
  // Slots holding a token, in ascending position order.
  void alive_by_position(std::vector<int32_t>& out) const;
  // The same slots in ascending slot order: their K/V rows in memory order.
  void alive_by_slot(std::vector<int32_t>& out) const;
};

// The slot tables' shapes and the payload layout for a model and configuration; `bytes` is what
// one sequence's store allocates (K/V payload + slot tables), exactly.
struct KvPlan {
  std::vector<LayerCells> layers;  // empty tables with capacity, n_slots, sliding set
  KvLayout layout;
  uint64_t bytes = 0;
};
KvPlan plan_kv(const HParams& hp, const KvConfig& cfg);

// What a policy call needs besides the layer's cells.
struct PolicyCall {
  tova_policy* policy = nullptr;
  int32_t seq = 0;
  int n_head = 0;
  const float* probs = nullptr;       // [n_head][n_slots] or null
  const float* probs_mean = nullptr;  // [n_slots] or null
  // The policy's victims as the backend selected them (Backend::selects_victims: the built-in
  // tova, h2o and tova_ema run there), or null: select() is not called then; -1 among them is
  // select()'s failure.
  const int32_t* victims = nullptr;
  int n_victims = 0;  // how many: the layer's excess when they were selected
};

class KvStore {
 public:
  KvStore(const HParams& hp, const KvConfig& cfg, Backend& backend);

  int n_layer() const { return static_cast<int>(layers_.size()); }
  LayerCells& layer(int l) { return layers_[static_cast<size_t>(l)]; }
  const LayerCells& layer(int l) const { return layers_[static_cast<size_t>(l)]; }
  const KvConfig& config() const { return cfg_; }
  KvPayload& payload() { return *payload_; }

  // Exact bytes of K/V and the per-slot tables, allocated at construction.
  uint64_t bytes() const { return bytes_; }
  int64_t evictions() const;
  int64_t demotions() const;  // moves to the lower tier

  // Empties every slot.
  void clear();
  // Becomes a copy of `other` (same model and configuration): slots, tables and K/V.
  void copy_from(const KvStore& other, Backend& backend);

  // Takes the lowest free slot of a layer's upper tier for position `pos` (protected below
  // n_sink or protect_below, except on sliding layers), first moving a token older than
  // `step_t0` (the step's first position: its tokens are not written yet) down to the lower
  // tier when the upper one is full (backend.demote_kv); Error when the layer is full.
  int insert(int layer, int64_t pos, int64_t protect_below, bool never_evicts, Backend& backend,
             int64_t step_t0);

  // Calls the policy's on_insert hook for the token just written to `slot`.
  void notify_insert(int layer, int slot, int64_t t, const PolicyCall& call);

  // Lets the policy evict down to the layer's capacity (or run its every-step hook): builds the
  // view, calls select(), checks the answer (count, range, occupied, unprotected, distinct)
  // before touching the store, then evicts. Error naming the policy, layer and position.
  void apply_policy(int layer, int64_t t, int slot_new, bool never_evicts, const PolicyCall& call);

 private:
  // Moves the upper tier's token with the lowest (protected, state, attention, position) below
  // position `before` to a free lower slot: its position, protection, state and attention go
  // with it (a protected token only when no other is left).
  // Returns the freed upper
  // slot, -1 if none.
  int demote(int layer, Backend& backend, int64_t before);
  tova_policy_view view(int layer, int64_t t, int slot_new, const PolicyCall& call);

  KvConfig cfg_;
  std::vector<LayerCells> layers_;
  std::unique_ptr<KvPayload> payload_;
  uint64_t bytes_ = 0;
  std::vector<int32_t> victims_;
};

}  // namespace tova
