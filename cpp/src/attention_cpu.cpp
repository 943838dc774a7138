#include "attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"

namespace tova {

namespace {

float kv_dot(KvType t, const uint8_t* row, const float* q, int d) {
  switch (t) {
    case KvType::F32: return dot_f32(reinterpret_cast<const float*>(row), q, d);
    case KvType::F16: return dot_f16_f32(reinterpret_cast<const uint16_t*>(row), q, d);
    case KvType::Q8_0: return type_traits(GgmlType::Q8_0).vec_dot_f32(d, row, q);
  }
  return 0.0f;
}

void kv_axpy(KvType t, float a, const uint8_t* row, float* y, int d, std::vector<float>& tmp) {
  switch (t) {
    case KvType::F32: axpy_f32(a, reinterpret_cast<const float*>(row), y, d); break;
    case KvType::F16: axpy_f16(a, reinterpret_cast<const uint16_t*>(row), y, d); break;
    case KvType::Q8_0:
      tmp.resize(static_cast<size_t>(d));
      type_traits(GgmlType::Q8_0).dequantize(row, tmp.data(), d);
      axpy_f32(a, tmp.data(), y, d);
      break;
  }
}

// softmax in place over n scores, float32 as the spec requires.
void softmax(float* s, int n) {
  float mx = -INFINITY;
  for (int j = 0; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0.0f;
  for (int j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
  for (int j = 0; j < n; ++j) s[j] *= inv;
}

// out = sum_j p[j] * V[idx[j]] for one KV head.
void weighted_values(const KvStore& store, const LayerKv& L, int kvh, const int32_t* idx, int n_idx,
                     const float* p, float* out, std::vector<float>& tmp) {
  const int d = store.head_dim();
  const KvType t = store.type();
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(d));
  if (t == KvType::F16) {
    gather_axpy_f16(reinterpret_cast<const uint16_t*>(L.v_row(kvh, 0)), L.row_bytes / 2, idx, n_idx, p, d, out);
  } else if (t == KvType::F32) {
    gather_axpy_f32(reinterpret_cast<const float*>(L.v_row(kvh, 0)), L.row_bytes / 4, idx, n_idx, p, d, out);
  } else {
    for (int j = 0; j < n_idx; ++j) kv_axpy(t, p[j], L.v_row(kvh, idx[j]), out, d, tmp);
  }
}

// The policy's view of a layer, without the probabilities.
tova_policy_view base_view(LayerKv& L, const AttentionArgs& a, int64_t t, int s_new) {
  tova_policy_view view{};
  view.layer = a.layer;
  view.capacity = L.capacity;
  view.n_slots = L.n_slots;
  view.n_valid = L.n_valid;
  view.n_heads = a.n_head;
  view.t = t;
  view.new_slot = s_new;
  view.pos = L.pos.data();
  view.protect = L.protect.data();
  view.state = L.state.data();
  return view;
}

}  // namespace

void AttentionCpu::attend(const KvStore& store, const LayerKv& L, int kvh, const float* q,
                          const int32_t* idx, int n_idx, float scale, float* scores, float* out,
                          std::vector<float>& tmp) const {
  const int d = store.head_dim();
  const KvType t = store.type();
  // Rows of one head are row_bytes apart in the store: slot s at k_row(kvh, 0) + s * row_bytes.
  if (t == KvType::F16) {
    gather_dot_f16(reinterpret_cast<const uint16_t*>(L.k_row(kvh, 0)), L.row_bytes / 2, idx, n_idx, q, d,
                   scale, scores);
  } else if (t == KvType::F32) {
    gather_dot_f32(reinterpret_cast<const float*>(L.k_row(kvh, 0)), L.row_bytes / 4, idx, n_idx, q, d,
                   scale, scores);
  } else {
    for (int j = 0; j < n_idx; ++j) scores[j] = kv_dot(t, L.k_row(kvh, idx[j]), q, d) * scale;
  }
  softmax(scores, n_idx);
  weighted_values(store, L, kvh, idx, n_idx, scores, out, tmp);
}

void AttentionCpu::insert(KvStore& store, LayerKv& L, const AttentionArgs& a, int i) {
  const int s = L.free_slot();
  if (s < 0)
    throw Error(cat("layer ", a.layer, ": no free KV slot for position ", a.t0 + i, " (",
                    L.n_slots, " slots", a.never_evicts ? ": the context is full" : "", ")"));
  const int d = store.head_dim();
  const int hkv = store.n_head_kv();
  const float* k = a.k + static_cast<size_t>(i) * hkv * d;
  const float* v = a.v + static_cast<size_t>(i) * hkv * d;
  for (int h = 0; h < hkv; ++h) {
    store.write(L.k, static_cast<size_t>(L.k_row(h, s) - L.k.data()), k + h * d);
    store.write(L.v, static_cast<size_t>(L.v_row(h, s) - L.v.data()), v + h * d);
  }
  const int64_t p = a.t0 + i;
  L.pos[static_cast<size_t>(s)] = static_cast<int32_t>(p);
  L.protect[static_cast<size_t>(s)] =
      !L.sliding && (p < a.n_sink || p < a.protect_below) ? 1 : 0;
  L.state[static_cast<size_t>(s)] = 0.0f;
  L.n_valid++;
  slot_of_[static_cast<size_t>(i)] = s;
}

void AttentionCpu::run(ThreadPool& pool, KvStore& store, const AttentionArgs& a) {
  LayerKv& L = store.layer(a.layer);
  const int nth = pool.size();
  if (static_cast<int>(scratch_.size()) < nth) {
    scratch_.resize(static_cast<size_t>(nth));
    tmp_.resize(static_cast<size_t>(nth));
  }
  for (auto& s : scratch_) s.resize(static_cast<size_t>(L.n_slots));
  slot_of_.assign(static_cast<size_t>(a.n_tokens), -1);
  if (a.rank_rope) ensure_rank_table(*a.rank_rope, L.n_slots + 1);
  const tova_policy* pol = a.policy;
  const bool every_step = pol && (pol->flags & TOVA_POLICY_EVERY_STEP);
  const bool fits = L.n_valid + a.n_tokens <= L.capacity;
  if (a.never_evicts && L.n_valid + a.n_tokens > L.capacity)
    throw Error(cat("context full: ", L.n_valid, " tokens cached + ", a.n_tokens, " new > n_ctx ",
                    L.capacity));
  const bool simple = a.never_evicts || (fits && !every_step && !(pol && pol->on_insert));
  if (!a.rank_rope && (simple || (a.chunked && a.n_tokens > 1))) {
    for (int i = 0; i < a.n_tokens; ++i) insert(store, L, a, i);
    rows_parallel(pool, store, L, a);
    if (!simple) {  // chunked: one eviction down to capacity with the last row's probabilities
      const int n_alive = static_cast<int>(alive_.size());
      probs_for_policy(a, L.n_slots, n_alive);
      run_policy(L, a, a.t0 + a.n_tokens - 1, slot_of_.back(), n_alive);
    }
    return;
  }
  for (int i = 0; i < a.n_tokens; ++i) row_walk(pool, store, L, a, i);
}

// No eviction inside this chunk: row i sees every stored slot with position <= t0 + i.
void AttentionCpu::rows_parallel(ThreadPool& pool, KvStore& store, LayerKv& L,
                                 const AttentionArgs& a) {
  // Slots sorted by position, so row i's visible set is a prefix.
  alive_.clear();
  for (int s = 0; s < L.n_slots; ++s)
    if (L.pos[static_cast<size_t>(s)] >= 0) alive_.push_back(s);
  std::sort(alive_.begin(), alive_.end(),
            [&](int32_t x, int32_t y) { return L.pos[static_cast<size_t>(x)] < L.pos[static_cast<size_t>(y)]; });
  const int n_before = static_cast<int>(alive_.size()) - a.n_tokens;
  const int G = a.n_head / store.n_head_kv();
  const int d = a.head_dim;
  const int last = a.n_tokens - 1;
  if (a.chunked) probs_.assign(static_cast<size_t>(a.n_head) * L.n_slots, 0.0f);
  pool.run(static_cast<int64_t>(a.n_tokens) * a.n_head, [&](int64_t task, int th) {
    const int i = static_cast<int>(task / a.n_head), h = static_cast<int>(task % a.n_head);
    const float* q = a.q + (static_cast<size_t>(i) * a.n_head + h) * d;
    float* out = a.out + (static_cast<size_t>(i) * a.n_head + h) * d;
    float* sc = scratch_[static_cast<size_t>(th)].data();
    const int n_idx = n_before + i + 1;
    attend(store, L, h / G, q, alive_.data(), n_idx, a.scale, sc, out, tmp_[static_cast<size_t>(th)]);
    if (a.chunked && i == last) {
      float* row = probs_.data() + static_cast<size_t>(h) * L.n_slots;
      for (int j = 0; j < n_idx; ++j) row[alive_[static_cast<size_t>(j)]] = sc[j];
    }
  });
}

// One row of the exact walk: insert token i, attend over the kept set plus it, let the policy
// evict down to capacity using this row's probabilities.
void AttentionCpu::row_walk(ThreadPool& pool, KvStore& store, LayerKv& L, const AttentionArgs& a,
                            int i) {
  const int n_slots = L.n_slots;
  insert(store, L, a, i);
  const int s_new = slot_of_[static_cast<size_t>(i)];
  const int64_t t = a.t0 + i;
  tova_policy* pol = a.policy;
  if (pol && pol->on_insert) {
    tova_policy_view view = base_view(L, a, t, s_new);
    pol->on_insert(pol->user, &view, s_new);
  }

  alive_.clear();
  for (int s = 0; s < n_slots; ++s)
    if (L.pos[static_cast<size_t>(s)] >= 0) alive_.push_back(s);
  if (a.rank_rope)  // ranks follow positions
    std::sort(alive_.begin(), alive_.end(), [&](int32_t x, int32_t y) {
      return L.pos[static_cast<size_t>(x)] < L.pos[static_cast<size_t>(y)];
    });
  const int n_alive = static_cast<int>(alive_.size());
  const int G = a.n_head / store.n_head_kv();
  const int d = a.head_dim;
  probs_.assign(static_cast<size_t>(a.n_head) * n_slots, 0.0f);
  if (a.rank_rope) rotate_keys_by_rank(pool, store, L, a, n_alive);
  pool.run(a.n_head, [&](int64_t h, int th) {
    const float* q = a.q + (static_cast<size_t>(i) * a.n_head + h) * d;
    float* out = a.out + (static_cast<size_t>(i) * a.n_head + h) * d;
    float* sc = scratch_[static_cast<size_t>(th)].data();
    if (a.rank_rope)
      attend_by_rank(store, L, static_cast<int>(h) / G, q, alive_.data(), n_alive, a, sc, out,
                     tmp_[static_cast<size_t>(th)]);
    else
      attend(store, L, static_cast<int>(h) / G, q, alive_.data(), n_alive, a.scale, sc, out,
             tmp_[static_cast<size_t>(th)]);
    float* row = probs_.data() + static_cast<size_t>(h) * n_slots;
    for (int j = 0; j < n_alive; ++j) row[alive_[static_cast<size_t>(j)]] = sc[j];
  });
  probs_for_policy(a, n_slots, n_alive);
  run_policy(L, a, t, s_new, n_alive);
}

// probs_mean over all query heads (with GQA too), summed in head order, for the alive slots.
void AttentionCpu::probs_for_policy(const AttentionArgs& a, int n_slots, int n_alive) {
  mean_.assign(static_cast<size_t>(n_slots), 0.0f);
  for (int h = 0; h < a.n_head; ++h) {
    const float* row = probs_.data() + static_cast<size_t>(h) * n_slots;
    for (int j = 0; j < n_alive; ++j) {
      const int s = alive_[static_cast<size_t>(j)];
      mean_[static_cast<size_t>(s)] += row[s];
    }
  }
  const float inv_h = 1.0f / static_cast<float>(a.n_head);
  for (int j = 0; j < n_alive; ++j) mean_[static_cast<size_t>(alive_[static_cast<size_t>(j)])] *= inv_h;
}

void AttentionCpu::run_policy(LayerKv& L, const AttentionArgs& a, int64_t t, int s_new, int n_alive) {
  tova_policy* pol = a.policy;
  const int n_evict = std::max(0, L.n_valid - L.capacity);
  if (!pol) {
    TOVA_ASSERT(n_evict == 0);
    return;
  }
  if (n_evict == 0 && !(pol->flags & TOVA_POLICY_EVERY_STEP)) return;
  if (n_evict > 0 && a.never_evicts)
    throw Error(cat("context full: n_ctx ", L.capacity, " reached at position ", t));
  tova_policy_view view = base_view(L, a, t, s_new);
  view.n_evict = n_evict;
  view.probs = probs_.data();
  view.probs_mean = mean_.data();
  (void)n_alive;
  evict(L, a, view);
}

void AttentionCpu::ensure_rank_table(const Rope& rope, int n) {
  if (table_rope_ == &rope && table_n_ >= n) return;
  const int pairs = rope.pairs();
  rank_cs_.resize(static_cast<size_t>(n) * pairs);
  rank_sn_.resize(static_cast<size_t>(n) * pairs);
  for (int r = 0; r < n; ++r)
    rope.angles(r, rank_cs_.data() + static_cast<size_t>(r) * pairs, rank_sn_.data() + static_cast<size_t>(r) * pairs);
  table_rope_ = &rope;
  table_n_ = n;
}

// cache_index positions: key j (in position order) is rotated by rank j, once per KV head.
void AttentionCpu::rotate_keys_by_rank(ThreadPool& pool, const KvStore& store, const LayerKv& L,
                                       const AttentionArgs& a, int n_idx) {
  const int d = store.head_dim(), hkv = store.n_head_kv();
  const int pairs = a.rank_rope->pairs();
  rotated_k_.resize(static_cast<size_t>(hkv) * n_idx * d);
  if (static_cast<int>(iota_.size()) < n_idx) {  // rotated keys are contiguous: rows 0, 1, ...
    iota_.resize(static_cast<size_t>(n_idx));
    for (int j = 0; j < n_idx; ++j) iota_[static_cast<size_t>(j)] = j;
  }
  const KvType t = store.type();
  const GgmlType gt = t == KvType::F32 ? GgmlType::F32 : t == KvType::F16 ? GgmlType::F16 : GgmlType::Q8_0;
  const TypeTraits& tr = type_traits(gt);
  pool.parallel_for(static_cast<int64_t>(hkv) * n_idx, [&](int64_t b, int64_t e, int) {
    for (int64_t k = b; k < e; ++k) {
      const int h = static_cast<int>(k / n_idx), j = static_cast<int>(k % n_idx);
      float* kr = rotated_k_.data() + static_cast<size_t>(k) * d;
      tr.dequantize(L.k_row(h, alive_[static_cast<size_t>(j)]), kr, d);
      const size_t r = static_cast<size_t>(j) * pairs;
      a.rank_rope->rotate(kr, 1, d, rank_cs_.data() + r, rank_sn_.data() + r);
    }
  }, 16);
}

// The query takes the largest rank; keys come pre-rotated from rotate_keys_by_rank.
void AttentionCpu::attend_by_rank(const KvStore& store, const LayerKv& L, int kvh, const float* q,
                                  const int32_t* idx, int n_idx, const AttentionArgs& a,
                                  float* scores, float* out, std::vector<float>& tmp) {
  const int d = store.head_dim();
  const int pairs = a.rank_rope->pairs();
  tmp.resize(static_cast<size_t>(2 * d));
  float* qr = tmp.data();
  std::memcpy(qr, q, sizeof(float) * static_cast<size_t>(d));
  const size_t qrank = static_cast<size_t>(n_idx - 1) * pairs;
  a.rank_rope->rotate(qr, 1, d, rank_cs_.data() + qrank, rank_sn_.data() + qrank);
  const float* keys = rotated_k_.data() + static_cast<size_t>(kvh) * n_idx * d;
  gather_dot_f32(keys, static_cast<size_t>(d), iota_.data(), n_idx, qr, d, a.scale, scores);
  softmax(scores, n_idx);
  weighted_values(store, L, kvh, idx, n_idx, scores, out, tmp);  // tmp: qr is no longer needed
}

void AttentionCpu::evict(LayerKv& L, const AttentionArgs& a, const tova_policy_view& view) {
  tova_policy* pol = a.policy;
  const int n = view.n_evict;
  victims_.assign(static_cast<size_t>(std::max(n, 1)), -1);
  int rc = pol->select(pol->user, &view, victims_.data());
  if (rc != 0) {
    const char* e = pol->last_error ? pol->last_error(pol->user) : nullptr;
    throw Error(cat("policy '", pol->name ? pol->name : "?", "' failed at layer ", a.layer,
                    ", position ", view.t, e ? cat(": ", e) : std::string()));
  }
  if (n == 0) return;
  // Check the answer before touching the store: right count, distinct, valid, not protected.
  for (int j = 0; j < n; ++j) {
    const int32_t s = victims_[static_cast<size_t>(j)];
    const std::string who = cat("policy '", pol->name ? pol->name : "?", "' at layer ", a.layer,
                                ", position ", view.t, ": ");
    if (s < 0 || s >= L.n_slots) throw Error(cat(who, "slot ", s, " is out of range [0, ", L.n_slots, ")"));
    if (L.pos[static_cast<size_t>(s)] < 0) throw Error(cat(who, "slot ", s, " is empty"));
    if (L.protect[static_cast<size_t>(s)]) throw Error(cat(who, "slot ", s, " (position ", L.pos[static_cast<size_t>(s)], ") is protected"));
    for (int k = 0; k < j; ++k)
      if (victims_[static_cast<size_t>(k)] == s) throw Error(cat(who, "slot ", s, " was returned twice"));
  }
  if (pol->on_evict) pol->on_evict(pol->user, &view, victims_.data(), n);
  for (int j = 0; j < n; ++j) {
    const size_t s = static_cast<size_t>(victims_[static_cast<size_t>(j)]);
    L.pos[s] = -1;
    L.protect[s] = 0;
    L.state[s] = 0.0f;
  }
  L.n_valid -= n;
  L.n_evicted += n;
}

}  // namespace tova
