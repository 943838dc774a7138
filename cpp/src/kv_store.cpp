#include "kv_store.h"

#include <algorithm>

#include "arch.h"
#include "common.h"
#include "quant_blocks.h"

namespace tova {

namespace {

const char* name_of(const tova_policy* p) { return p->name ? p->name : "?"; }

}  // namespace

GgmlType kv_ggml_type(KvType t) {
  switch (t) {
    case KvType::F32: return GgmlType::F32;
    case KvType::F16: return GgmlType::F16;
    case KvType::Q8_0: return GgmlType::Q8_0;
    case KvType::Q4_0: return GgmlType::Q4_0;
    case KvType::Q4_1: return GgmlType::Q4_1;
    case KvType::Q5_0: return GgmlType::Q5_0;
    case KvType::Q5_1: return GgmlType::Q5_1;
    case KvType::Q3_0: break;
  }
  throw Error(cat("kv type ", kv_type_name(t), " is not a ggml type"));
}

int kv_block_size(KvType t) {
  return t == KvType::Q3_0 ? kQK : static_cast<int>(type_traits(kv_ggml_type(t)).block_size);
}

size_t kv_row_bytes(KvType t, int64_t n) {
  return t == KvType::Q3_0 ? static_cast<size_t>(n / kQK) * sizeof(BlockQ3_0) : row_bytes(kv_ggml_type(t), n);
}

bool KvLayout::tiered() const {
  for (int n : n_lo)
    if (n > 0) return true;
  return false;
}

uint64_t KvLayout::payload_bytes() const {
  uint64_t b = 0;
  for (size_t l = 0; l < n_slots.size(); ++l) {
    const uint64_t lo_rows = static_cast<uint64_t>(n_lo_of(static_cast<int>(l)));
    const uint64_t hi_rows = static_cast<uint64_t>(n_slots[l]) - lo_rows;
    b += static_cast<uint64_t>(n_head_kv) *
         (hi_rows * (k_row_bytes + v_row_bytes) + lo_rows * (lo.k_row_bytes + lo.v_row_bytes));
  }
  return b;
}

int LayerCells::free_slot(int begin, int end) const {
  for (int s = begin; s < end; ++s)
    if (pos[static_cast<size_t>(s)] < 0) return s;
  return -1;
}

void LayerCells::alive_by_position(std::vector<int32_t>& out) const { out.assign(order.begin(), order.end()); }

void LayerCells::alive_by_slot(std::vector<int32_t>& out) const {
  out.clear();
  for (int s = 0; s < n_slots; ++s)
    if (pos[static_cast<size_t>(s)] >= 0) out.push_back(s);
}

KvPlan plan_kv(const HParams& hp, const KvConfig& cfg) {
  if (cfg.capacity < 1) throw ArgumentError(cat("kv_size must be at least 1, got ", cfg.capacity));
  if (cfg.max_step < 1) throw ArgumentError(cat("chunk size must be at least 1, got ", cfg.max_step));
  const bool tiered = cfg.hi_capacity > 0;
  if (tiered && cfg.hi_capacity >= cfg.capacity)
    throw ArgumentError(cat("the upper tier (", cfg.hi_capacity, " tokens) must be smaller than the cache (",
                            cfg.capacity, ")"));
  std::vector<KvType> types = {cfg.type_k, cfg.type_v};
  if (tiered) types.insert(types.end(), {cfg.type_k_lo, cfg.type_v_lo});
  for (KvType t : types) {
    if (hp.head_dim % kv_block_size(t) != 0)
      throw ArgumentError(cat("kv_type ", kv_type_name(t), " needs a head size that is a multiple of ",
                              kv_block_size(t), ", the model's is ", hp.head_dim));
  }
  const bool pow2 = hp.head_dim > 0 && (hp.head_dim & (hp.head_dim - 1)) == 0;
  auto tier = [&](KvType k, KvType v) {
    auto quantized = [](KvType t) { return t != KvType::F16 && t != KvType::F32; };
    KvTierTypes t;
    t.type_k = k;
    t.type_v = v;
    t.k_row_bytes = kv_row_bytes(k, hp.head_dim);
    t.v_row_bytes = kv_row_bytes(v, hp.head_dim);
    t.hadamard_k = cfg.hadamard && quantized(k) && pow2;
    t.hadamard_v = cfg.hadamard && quantized(v) && pow2;
    return t;
  };
  KvPlan plan;
  static_cast<KvTierTypes&>(plan.layout) = tier(cfg.type_k, cfg.type_v);
  if (tiered) plan.layout.lo = tier(cfg.type_k_lo, cfg.type_v_lo);
  plan.layout.n_head_kv = hp.n_head_kv;
  plan.layout.head_dim = hp.head_dim;
  plan.layers.resize(static_cast<size_t>(hp.n_layer));
  uint64_t tables = 0;
  for (int l = 0; l < hp.n_layer; ++l) {
    LayerCells& L = plan.layers[static_cast<size_t>(l)];
    L.sliding = hp.is_swa_layer(l);
    // A sliding window of n_swa lets a query see n_swa keys, itself included: C = n_swa - 1.
    // Sliding layers keep their whole window whatever kv_size is (spec §6: the policy and C
    // apply to the global layers); a full cache smaller than the window bounds them too.
    L.capacity = L.sliding ? (cfg.full ? std::min(hp.n_swa - 1, cfg.capacity) : hp.n_swa - 1)
                           : cfg.capacity;
    L.n_slots = cfg.full && !L.sliding ? cfg.capacity : L.capacity + cfg.max_step;
    // Tiers: the upper tier holds hi_capacity tokens and the step's working slots (a full cache
    // too: a step's tokens all enter it), the lower tier the rest of the capacity.
    const int n_lo = tiered && !L.sliding ? cfg.capacity - cfg.hi_capacity : 0;
    if (n_lo > 0) L.n_slots = L.capacity + cfg.max_step;
    L.n_hi = L.n_slots - n_lo;
    plan.layout.n_slots.push_back(L.n_slots);
    plan.layout.n_lo.push_back(n_lo);
    const uint64_t per_slot = sizeof(int32_t) + 1 + sizeof(float) + (n_lo > 0 ? sizeof(float) : 0);
    tables += static_cast<uint64_t>(L.n_slots) * per_slot;
  }
  plan.bytes = plan.layout.payload_bytes() + tables;
  return plan;
}

KvStore::KvStore(const HParams& hp, const KvConfig& cfg, Backend& backend) : cfg_(cfg) {
  KvPlan plan = plan_kv(hp, cfg);
  layers_ = std::move(plan.layers);
  for (LayerCells& L : layers_) {
    L.pos.assign(static_cast<size_t>(L.n_slots), -1);
    L.protect.assign(static_cast<size_t>(L.n_slots), 0);
    L.state.assign(static_cast<size_t>(L.n_slots), 0.0f);
    L.order.reserve(static_cast<size_t>(L.n_slots));
    if (L.n_hi < L.n_slots) L.attention.assign(static_cast<size_t>(L.n_slots), 0.0f);
  }
  payload_ = backend.new_kv(plan.layout);
  bytes_ = plan.bytes;
}

int64_t KvStore::evictions() const {
  int64_t n = 0;
  for (const LayerCells& L : layers_) n += L.n_evicted;
  return n;
}

int64_t KvStore::demotions() const {
  int64_t n = 0;
  for (const LayerCells& L : layers_) n += L.n_demoted;
  return n;
}

void KvStore::clear() {
  for (LayerCells& L : layers_) {
    std::fill(L.pos.begin(), L.pos.end(), -1);
    std::fill(L.protect.begin(), L.protect.end(), 0);
    std::fill(L.state.begin(), L.state.end(), 0.0f);
    std::fill(L.attention.begin(), L.attention.end(), 0.0f);
    L.order.clear();
    L.n_valid = 0;
    L.n_evicted = 0;
    L.n_demoted = 0;
  }
}

void KvStore::copy_from(const KvStore& other, Backend& backend) {
  TOVA_ASSERT(other.layers_.size() == layers_.size() && other.bytes_ == bytes_);
  layers_ = other.layers_;
  backend.copy_kv(*payload_, *other.payload_);
}

int KvStore::demote(int layer, Backend& backend, int64_t before) {
  LayerCells& L = this->layer(layer);
  const int dst = L.free_slot(L.n_hi, L.n_slots);
  if (dst < 0) return -1;
  int src = -1;
  for (int s = 0; s < L.n_hi; ++s) {
    const size_t u = static_cast<size_t>(s);
    if (L.pos[u] < 0 || L.pos[u] >= before) continue;
    if (src < 0) {
      src = s;
      continue;
    }
    const size_t b = static_cast<size_t>(src);
    if (L.protect[u] != L.protect[b]) {  // protected tokens (sinks, a pinned prompt) go last
      if (L.protect[u] < L.protect[b]) src = s;
    } else if (L.state[u] != L.state[b]) {
      if (L.state[u] < L.state[b]) src = s;
    } else if (L.attention[u] != L.attention[b]) {
      if (L.attention[u] < L.attention[b]) src = s;
    } else if (L.pos[u] < L.pos[b]) {
      src = s;
    }
  }
  if (src < 0) return -1;
  backend.demote_kv(*payload_, layer, src, dst);
  const size_t a = static_cast<size_t>(src), b = static_cast<size_t>(dst);
  L.pos[b] = L.pos[a];
  L.protect[b] = L.protect[a];
  L.state[b] = L.state[a];
  L.attention[b] = L.attention[a];
  L.pos[a] = -1;
  L.protect[a] = 0;
  L.state[a] = 0.0f;
  L.attention[a] = 0.0f;
  *std::find(L.order.begin(), L.order.end(), src) = dst;  // same position, new slot
  L.n_demoted++;
  return src;
}

int KvStore::insert(int layer, int64_t p, int64_t protect_below, bool never_evicts, Backend& backend,
                    int64_t step_t0) {
  LayerCells& L = this->layer(layer);
  int s = L.free_slot(0, L.n_hi);
  if (s < 0 && L.n_hi < L.n_slots) s = demote(layer, backend, step_t0);
  if (s < 0)
    throw Error(cat("layer ", layer, ": no free KV slot for position ", p, " (", L.n_slots, " slots",
                    never_evicts ? ": the context is full" : "", ")"));
  L.pos[static_cast<size_t>(s)] = static_cast<int32_t>(p);
  L.protect[static_cast<size_t>(s)] = !L.sliding && (p < cfg_.n_sink || p < protect_below) ? 1 : 0;
  L.state[static_cast<size_t>(s)] = 0.0f;
  if (!L.attention.empty()) L.attention[static_cast<size_t>(s)] = 0.0f;
  // Positions arrive in increasing order: the new slot goes last (found by search all the same).
  auto later = std::upper_bound(L.order.begin(), L.order.end(), static_cast<int32_t>(p),
                                [&](int32_t x, int32_t slot) { return x < L.pos[static_cast<size_t>(slot)]; });
  L.order.insert(later, s);
  L.n_valid++;
  return s;
}

tova_policy_view KvStore::view(int layer, int64_t t, int slot_new, const PolicyCall& call) {
  LayerCells& L = this->layer(layer);
  tova_policy_view v{};
  v.layer = layer;
  v.capacity = L.capacity;
  v.n_slots = L.n_slots;
  v.n_valid = L.n_valid;
  v.n_heads = call.n_head;
  v.t = t;
  v.new_slot = slot_new;
  v.pos = L.pos.data();
  v.protect = L.protect.data();
  v.state = L.state.data();
  v.seq = call.seq;
  return v;
}

void KvStore::notify_insert(int layer, int slot, int64_t t, const PolicyCall& call) {
  tova_policy* pol = call.policy;
  if (!pol || !pol->on_insert) return;
  tova_policy_view v = view(layer, t, slot, call);
  pol->on_insert(pol->user, &v, slot);
}

void KvStore::apply_policy(int layer, int64_t t, int slot_new, bool never_evicts, const PolicyCall& call) {
  LayerCells& L = this->layer(layer);
  tova_policy* pol = call.policy;
  const int n = std::max(0, L.n_valid - L.capacity);
  if (!pol) {
    TOVA_ASSERT(n == 0);
    return;
  }
  if (!L.attention.empty() && call.probs_mean)  // two tiers: what demote() ranks by
    for (int s = 0; s < L.n_slots; ++s)
      if (L.pos[static_cast<size_t>(s)] >= 0) L.attention[static_cast<size_t>(s)] = call.probs_mean[s];
  if (n == 0 && !(pol->flags & TOVA_POLICY_EVERY_STEP)) return;
  if (n > 0 && never_evicts) throw Error(cat("context full: n_ctx ", L.capacity, " reached at position ", t));
  tova_policy_view v = view(layer, t, slot_new, call);
  v.n_evict = n;
  v.probs = call.probs;
  v.probs_mean = call.probs_mean;
  victims_.assign(static_cast<size_t>(std::max(n, 1)), -1);
  if (call.victims && call.n_victims != n)
    throw Error(cat("layer ", layer, ", position ", t, ": ", call.n_victims, " victims selected for ", n, " to evict"));
  if (call.victims) std::copy(call.victims, call.victims + n, victims_.begin());
  const bool failed = call.victims ? std::find(victims_.begin(), victims_.begin() + n, -1) != victims_.begin() + n
                                   : pol->select(pol->user, &v, victims_.data()) != 0;
  if (failed) {
    const char* e = pol->last_error ? pol->last_error(pol->user) : nullptr;
    throw Error(cat("policy '", name_of(pol), "' failed at layer ", layer, ", position ", t,
                    e ? cat(": ", e) : std::string()));
  }
  if (n == 0) return;
  // Check the answer before touching the store: right count, distinct, valid, not protected.
  for (int j = 0; j < n; ++j) {
    const int32_t s = victims_[static_cast<size_t>(j)];
    auto who = [&] { return cat("policy '", name_of(pol), "' at layer ", layer, ", position ", t, ": "); };
    if (s < 0 || s >= L.n_slots) throw Error(cat(who(), "slot ", s, " is out of range [0, ", L.n_slots, ")"));
    if (L.pos[static_cast<size_t>(s)] < 0) throw Error(cat(who(), "slot ", s, " is empty"));
    if (L.protect[static_cast<size_t>(s)])
      throw Error(cat(who(), "slot ", s, " (position ", L.pos[static_cast<size_t>(s)], ") is protected"));
    for (int k = 0; k < j; ++k)
      if (victims_[static_cast<size_t>(k)] == s) throw Error(cat(who(), "slot ", s, " was returned twice"));
  }
  if (pol->on_evict) pol->on_evict(pol->user, &v, victims_.data(), n);
  for (int j = 0; j < n; ++j) {
    const size_t s = static_cast<size_t>(victims_[static_cast<size_t>(j)]);
    L.pos[s] = -1;
    L.protect[s] = 0;
    L.state[s] = 0.0f;
  }
  L.order.erase(std::remove_if(L.order.begin(), L.order.end(),
                               [&](int32_t slot) { return L.pos[static_cast<size_t>(slot)] < 0; }),
                L.order.end());
  L.n_valid -= n;
  L.n_evicted += n;
}

}  // namespace tova
