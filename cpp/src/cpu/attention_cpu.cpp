#include "attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "kernels_cpu.h"

namespace tova {

namespace {

// Scores of nh query heads (q + h * d) against quantized keys (q8_0, q4_0, q4_1): each query is
// quantized once to the key type's vec_dot_type and each score is the type's integer dot product,
// as ggml's CPU attention computes with a quantized K cache. Keys stored rotated (hadamard_k) meet
// the queries rotated alike. scores of head h at scores + h * stride.
void quantized_scores(const KvTierRows& t, int d, const float* q, int nh, const int32_t* idx, int n_idx,
                      float scale, float* scores, size_t stride, std::vector<float>& tmp) {
  const GgmlType kt = kv_ggml_type(t.types->type_k);
  const GgmlType qt = type_traits(kt).vec_dot_type;
  const size_t qq_floats = (row_bytes(qt, d) + sizeof(float) - 1) / sizeof(float);
  // The slots a row sees are spread over [0, hi]: one matrix product over that contiguous range
  // of keys for all nh queries (every product is the type's vec_dot, bit for bit, whatever the
  // number of queries), then the row's slots picked out.
  int hi = 0;
  for (int j = 0; j < n_idx; ++j) hi = std::max(hi, idx[j]);
  const size_t span = static_cast<size_t>(hi) + 1;
  tmp.resize(qq_floats * nh + static_cast<size_t>(d) + span * nh);
  float* qr = tmp.data() + qq_floats * nh;
  float* all = qr + d;
  for (int h = 0; h < nh; ++h) {
    const float* qh = q + static_cast<size_t>(h) * d;
    if (t.types->hadamard_k) {
      std::memcpy(qr, qh, sizeof(float) * static_cast<size_t>(d));
      hadamard(qr, d);
      qh = qr;
    }
    cpu_kernels(qt).quantize(qh, tmp.data() + qq_floats * h, d);
  }
  cpu_kernels(kt).gemm(d, t.k, t.types->k_row_bytes, hi + 1, tmp.data(), qq_floats * sizeof(float), nh, all, span);
  for (int h = 0; h < nh; ++h)
    for (int j = 0; j < n_idx; ++j) scores[h * stride + j] = all[h * span + idx[j]] * scale;
}

// The scores of nh query heads against one tier's keys idx[0..n) (tier-relative slots).
void tier_scores(const KvTierRows& t, int d, const float* q, int nh, const int32_t* idx, int n_idx, float scale,
                 float* scores, size_t stride, std::vector<float>& tmp) {
  const KvTierTypes& ty = *t.types;
  if (ty.type_k == KvType::F16) {
    gather_dot_heads_f16(reinterpret_cast<const uint16_t*>(t.k), ty.k_row_bytes / 2, idx, n_idx, q,
                         static_cast<size_t>(d), nh, d, scale, scores, stride);
  } else if (ty.type_k == KvType::F32) {
    gather_dot_heads_f32(reinterpret_cast<const float*>(t.k), ty.k_row_bytes / 4, idx, n_idx, q,
                         static_cast<size_t>(d), nh, d, scale, scores, stride);
  } else {
    quantized_scores(t, d, q, nh, idx, n_idx, scale, scores, stride, tmp);
  }
}

// out_h = sum_j p_h[j] * V[idx[j]] over one tier's values for nh query heads (p_h at
// p + h * p_stride, out_h at out + h * d); values stored rotated: each sum rotated back.
void weighted_values(const KvTierRows& t, int d, const int32_t* idx, int n_idx, int nh, const float* p,
                     size_t p_stride, float* out, std::vector<float>& tmp) {
  const KvTierTypes& ty = *t.types;
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(d) * nh);
  if (ty.type_v == KvType::F16) {
    gather_axpy_heads_f16(reinterpret_cast<const uint16_t*>(t.v), ty.v_row_bytes / 2, idx, n_idx, p, p_stride, nh,
                          d, out, static_cast<size_t>(d));
  } else if (ty.type_v == KvType::F32) {
    gather_axpy_heads_f32(reinterpret_cast<const float*>(t.v), ty.v_row_bytes / 4, idx, n_idx, p, p_stride, nh, d,
                          out, static_cast<size_t>(d));
  } else {  // quantized values: each row decoded once, then added to every head's sum
    const DequantizeFn dequantize = kv_dequantizer(ty.type_v);
    tmp.resize(static_cast<size_t>(d));
    for (int j = 0; j < n_idx; ++j) {
      dequantize(t.v + static_cast<size_t>(idx[j]) * ty.v_row_bytes, tmp.data(), d);
      for (int h = 0; h < nh; ++h) axpy_f32(p[h * p_stride + j], tmp.data(), out + static_cast<size_t>(h) * d, d);
    }
    if (ty.hadamard_v)
      for (int h = 0; h < nh; ++h) hadamard(out + static_cast<size_t>(h) * d, d);
  }
}

void scatter_probs(const AttnRow& r, const int32_t* slots, int h, const float* p) {
  if (!r.probs) return;
  float* row = r.probs + static_cast<size_t>(h) * r.n_slots;
  for (int j = 0; j < r.n_idx; ++j) row[slots[j]] = p[j];
}

}  // namespace

const int32_t* AttentionCpu::attend(const CpuKv& kv, int layer, int kvh, const float* q, int nh, const int32_t* idx,
                                    int n_idx, float scale, float* scores, float* out, Scratch& x) const {
  const int d = kv.layout().head_dim;
  const size_t n = static_cast<size_t>(n_idx);
  const int n_hi = kv.layout().n_hi(layer);
  const KvTierRows upper = kv.tier_rows(layer, kvh, 0);
  if (kv.layout().n_lo_of(layer) == 0) {  // one tier: the slots are its rows
    tier_scores(upper, d, q, nh, idx, n_idx, scale, scores, n, x.tmp);
    for (int h = 0; h < nh; ++h) softmax_f32(scores + h * n, n_idx);
    weighted_values(upper, d, idx, n_idx, nh, scores, n, out, x.tmp);
    return idx;
  }
  // Two tiers: the upper tier's slots first, then the lower's (each in the order given); one
  // softmax over both, each tier's weighted sum apart (rotated back on its own), then added.
  x.order.resize(2 * n);
  int32_t* order = x.order.data();  // slots in the order of the scores
  int32_t* rel = order + n;         // the same, relative to their tier
  int a = 0;
  for (int j = 0; j < n_idx; ++j)
    if (idx[j] < n_hi) order[a++] = idx[j];
  for (int j = 0, b = a; j < n_idx; ++j)
    if (idx[j] >= n_hi) order[b++] = idx[j];
  for (int j = 0; j < n_idx; ++j) rel[j] = j < a ? order[j] : order[j] - n_hi;
  const KvTierRows lower = kv.tier_rows(layer, kvh, 1);
  if (a > 0) tier_scores(upper, d, q, nh, rel, a, scale, scores, n, x.tmp);
  if (a < n_idx) tier_scores(lower, d, q, nh, rel + a, n_idx - a, scale, scores + a, n, x.tmp);
  for (int h = 0; h < nh; ++h) softmax_f32(scores + h * n, n_idx);
  weighted_values(upper, d, rel, a, nh, scores, n, out, x.tmp);
  if (a < n_idx) {
    x.lower_out.resize(static_cast<size_t>(d) * nh);
    weighted_values(lower, d, rel + a, n_idx - a, nh, scores + a, n, x.lower_out.data(), x.tmp);
    for (size_t i = 0; i < x.lower_out.size(); ++i) out[i] += x.lower_out[i];
  }
  return order;
}

void AttentionCpu::run(ThreadPool& pool, const AttnShape& s, const AttnRow* rows, int n_rows) {
  const int nth = pool.size();
  const int G = s.n_head / s.n_head_kv;
  const int d = s.head_dim;
  // A task is one (row, KV head) with its G query heads (each K/V row read once for them) when
  // that leaves every thread a task, else one (row, query head). Both give the same bits.
  const int per_task = G > 1 && static_cast<int64_t>(n_rows) * s.n_head_kv >= nth ? G : 1;
  if (static_cast<int>(scratch_.size()) < nth) scratch_.resize(static_cast<size_t>(nth));
  int widest = 1;
  for (int r = 0; r < n_rows; ++r) widest = std::max(widest, rows[r].n_idx);
  for (auto& sc : scratch_)
    if (sc.scores.size() < static_cast<size_t>(widest) * G) sc.scores.resize(static_cast<size_t>(widest) * G);
  const int tasks_per_row = s.n_head / per_task;
  // Rows with keys stored rotated.
  pool.run(static_cast<int64_t>(n_rows) * tasks_per_row, [&](int64_t task, int th) {
    const AttnRow& r = rows[task / tasks_per_row];
    if (r.rank_rope) return;
    const int h0 = static_cast<int>(task % tasks_per_row) * per_task;
    Scratch& x = scratch_[static_cast<size_t>(th)];
    float* sc = x.scores.data();
    const int32_t* order = attend(static_cast<const CpuKv&>(*r.kv), r.layer, h0 / G, r.q + h0 * d, per_task, r.idx,
                                  r.n_idx, s.scale, sc, r.out + h0 * d, x);
    for (int i = 0; i < per_task; ++i) scatter_probs(r, order, h0 + i, sc + static_cast<size_t>(i) * r.n_idx);
  });
  // cache_index rows: keys rotated by rank once per row, then the heads.
  for (int i = 0; i < n_rows; ++i) {
    const AttnRow& r = rows[i];
    if (!r.rank_rope) continue;
    const CpuKv& kv = static_cast<const CpuKv&>(*r.kv);
    ensure_rank_table(*r.rank_rope, r.n_idx);
    rotate_keys_by_rank(pool, kv, r);
    pool.run(s.n_head, [&](int64_t h, int th) {
      Scratch& x = scratch_[static_cast<size_t>(th)];
      float* sc = x.scores.data();
      attend_by_rank(kv, r, static_cast<int>(h) / G, r.q + h * d, s.scale, sc, r.out + h * d, x.tmp);
      scatter_probs(r, r.idx, static_cast<int>(h), sc);
    });
  }
}

void AttentionCpu::ensure_rank_table(const Rope& rope, int n) {
  if (table_rope_ == &rope && table_n_ >= n) return;
  n = std::max(n, table_rope_ == &rope ? 2 * table_n_ : n);  // grow geometrically
  const int pairs = rope.pairs();
  rank_cs_.resize(static_cast<size_t>(n) * pairs);
  rank_sn_.resize(static_cast<size_t>(n) * pairs);
  for (int r = 0; r < n; ++r)
    rope.angles(r, rank_cs_.data() + static_cast<size_t>(r) * pairs, rank_sn_.data() + static_cast<size_t>(r) * pairs);
  table_rope_ = &rope;
  table_n_ = n;
}

// cache_index positions: key j (in position order) is rotated by rank j, once per KV head.
void AttentionCpu::rotate_keys_by_rank(ThreadPool& pool, const CpuKv& kv, const AttnRow& row) {
  const KvLayout& lo = kv.layout();
  const int d = lo.head_dim, hkv = lo.n_head_kv, n_idx = row.n_idx;
  const int pairs = row.rank_rope->pairs();
  rotated_k_.resize(static_cast<size_t>(hkv) * n_idx * d);
  if (static_cast<int>(iota_.size()) < n_idx) {  // rotated keys are contiguous: rows 0, 1, ...
    iota_.resize(static_cast<size_t>(n_idx));
    for (int j = 0; j < n_idx; ++j) iota_[static_cast<size_t>(j)] = j;
  }
  const DequantizeFn dequantize = cpu_kernels(kv_ggml_type(lo.type_k)).dequantize;
  pool.parallel_for(static_cast<int64_t>(hkv) * n_idx, [&](int64_t b, int64_t e, int) {
    for (int64_t k = b; k < e; ++k) {
      const int h = static_cast<int>(k / n_idx), j = static_cast<int>(k % n_idx);
      float* kr = rotated_k_.data() + static_cast<size_t>(k) * d;
      dequantize(kv.k_row(row.layer, h, row.idx[j]), kr, d);
      if (lo.hadamard_k) hadamard(kr, d);  // back from the stored rotation (its own inverse)
      const size_t r = static_cast<size_t>(j) * pairs;
      row.rank_rope->rotate(kr, 1, d, rank_cs_.data() + r, rank_sn_.data() + r);
    }
  }, 16);
}

// The query takes the largest rank; keys come pre-rotated from rotate_keys_by_rank.
void AttentionCpu::attend_by_rank(const CpuKv& kv, const AttnRow& row, int kvh, const float* q, float scale,
                                  float* scores, float* out, std::vector<float>& tmp) {
  const int d = kv.layout().head_dim;
  const int n_idx = row.n_idx;
  const int pairs = row.rank_rope->pairs();
  tmp.resize(static_cast<size_t>(2 * d));
  float* qr = tmp.data();
  std::memcpy(qr, q, sizeof(float) * static_cast<size_t>(d));
  const size_t qrank = static_cast<size_t>(n_idx - 1) * pairs;
  row.rank_rope->rotate(qr, 1, d, rank_cs_.data() + qrank, rank_sn_.data() + qrank);
  const float* keys = rotated_k_.data() + static_cast<size_t>(kvh) * n_idx * d;
  gather_dot_f32(keys, static_cast<size_t>(d), iota_.data(), n_idx, qr, d, scale, scores);
  softmax_f32(scores, n_idx);
  // One tier (kv_lo_type refuses cache_index); tmp: qr is no longer needed.
  weighted_values(kv.tier_rows(row.layer, kvh, 0), d, row.idx, n_idx, 1, scores, static_cast<size_t>(n_idx), out,
                  tmp);
}

}  // namespace tova
