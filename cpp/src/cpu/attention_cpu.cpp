#include "attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "kernels_cpu.h"

namespace tova {

namespace {

// Scores of q against quantized keys (q8_0, q4_0, q4_1): the query is quantized once to the key
// type's vec_dot_type and each score is the type's integer dot product, as ggml's CPU attention
// computes with a quantized K cache. Keys stored rotated (hadamard_k) meet the query rotated alike.
void quantized_scores(const CpuKv& kv, int layer, int kvh, const float* q, const int32_t* idx, int n_idx,
                      float scale, float* scores, std::vector<float>& tmp) {
  const int d = kv.layout().head_dim;
  const GgmlType kt = kv_ggml_type(kv.layout().type_k);
  const GgmlType qt = type_traits(kt).vec_dot_type;
  const size_t qq_floats = (row_bytes(qt, d) + sizeof(float) - 1) / sizeof(float);
  // The slots a row sees are spread over [0, hi]: one matrix product over that contiguous range
  // of keys (every product is the type's vec_dot, bit for bit), then the row's slots picked out.
  int hi = 0;
  for (int j = 0; j < n_idx; ++j) hi = std::max(hi, idx[j]);
  tmp.resize(qq_floats + static_cast<size_t>(d) + static_cast<size_t>(hi) + 1);
  float* all = tmp.data() + qq_floats + d;
  if (kv.layout().hadamard_k) {
    float* qr = tmp.data() + qq_floats;
    std::memcpy(qr, q, sizeof(float) * static_cast<size_t>(d));
    hadamard(qr, d);
    q = qr;
  }
  cpu_kernels(qt).quantize(q, tmp.data(), d);
  cpu_kernels(kt).gemm(d, kv.k_row(layer, kvh, 0), kv.layout().k_row_bytes, hi + 1, tmp.data(),
                       row_bytes(qt, d), 1, all, 1);
  for (int j = 0; j < n_idx; ++j) scores[j] = all[idx[j]] * scale;
}

// out = sum_j p[j] * V[idx[j]] for one KV head (values stored rotated: the sum rotated back).
void weighted_values(const CpuKv& kv, int layer, int kvh, const int32_t* idx, int n_idx, const float* p,
                     float* out, std::vector<float>& tmp) {
  const KvLayout& lo = kv.layout();
  const int d = lo.head_dim;
  std::memset(out, 0, sizeof(float) * static_cast<size_t>(d));
  const uint8_t* base = kv.v_row(layer, kvh, 0);
  if (lo.type_v == KvType::F16) {
    gather_axpy_f16(reinterpret_cast<const uint16_t*>(base), lo.v_row_bytes / 2, idx, n_idx, p, d, out);
  } else if (lo.type_v == KvType::F32) {
    gather_axpy_f32(reinterpret_cast<const float*>(base), lo.v_row_bytes / 4, idx, n_idx, p, d, out);
  } else {  // quantized values: each row decoded, then added
    const DequantizeFn dequantize = cpu_kernels(kv_ggml_type(lo.type_v)).dequantize;
    tmp.resize(static_cast<size_t>(d));
    for (int j = 0; j < n_idx; ++j) {
      dequantize(kv.v_row(layer, kvh, idx[j]), tmp.data(), d);
      axpy_f32(p[j], tmp.data(), out, d);
    }
    if (lo.hadamard_v) hadamard(out, d);
  }
}

void scatter_probs(const AttnRow& r, int h, const float* p) {
  if (!r.probs) return;
  float* row = r.probs + static_cast<size_t>(h) * r.n_slots;
  for (int j = 0; j < r.n_idx; ++j) row[r.idx[j]] = p[j];
}

}  // namespace

void AttentionCpu::attend(const CpuKv& kv, int layer, int kvh, const float* q, const int32_t* idx,
                          int n_idx, float scale, float* scores, float* out, std::vector<float>& tmp) const {
  const KvLayout& lo = kv.layout();
  const int d = lo.head_dim;
  // Rows of one head are row_bytes apart: slot s at k_row(layer, kvh, 0) + s * row_bytes.
  const uint8_t* base = kv.k_row(layer, kvh, 0);
  if (lo.type_k == KvType::F16) {
    gather_dot_f16(reinterpret_cast<const uint16_t*>(base), lo.k_row_bytes / 2, idx, n_idx, q, d, scale, scores);
  } else if (lo.type_k == KvType::F32) {
    gather_dot_f32(reinterpret_cast<const float*>(base), lo.k_row_bytes / 4, idx, n_idx, q, d, scale, scores);
  } else {
    quantized_scores(kv, layer, kvh, q, idx, n_idx, scale, scores, tmp);
  }
  softmax_f32(scores, n_idx);
  weighted_values(kv, layer, kvh, idx, n_idx, scores, out, tmp);
}

void AttentionCpu::run(ThreadPool& pool, const AttnShape& s, const AttnRow* rows, int n_rows) {
  const int nth = pool.size();
  if (static_cast<int>(scratch_.size()) < nth) {
    scratch_.resize(static_cast<size_t>(nth));
    tmp_.resize(static_cast<size_t>(nth));
  }
  int widest = 1;
  for (int r = 0; r < n_rows; ++r) widest = std::max(widest, rows[r].n_idx);
  for (auto& sc : scratch_)
    if (static_cast<int>(sc.size()) < widest) sc.resize(static_cast<size_t>(widest));
  const int G = s.n_head / s.n_head_kv;
  const int d = s.head_dim;
  // Rows with keys stored rotated: every (row, head) is one task.
  pool.run(static_cast<int64_t>(n_rows) * s.n_head, [&](int64_t task, int th) {
    const AttnRow& r = rows[task / s.n_head];
    if (r.rank_rope) return;
    const int h = static_cast<int>(task % s.n_head);
    float* sc = scratch_[static_cast<size_t>(th)].data();
    attend(static_cast<const CpuKv&>(*r.kv), r.layer, h / G, r.q + h * d, r.idx, r.n_idx, s.scale, sc,
           r.out + h * d, tmp_[static_cast<size_t>(th)]);
    scatter_probs(r, h, sc);
  });
  // cache_index rows: keys rotated by rank once per row, then the heads.
  for (int i = 0; i < n_rows; ++i) {
    const AttnRow& r = rows[i];
    if (!r.rank_rope) continue;
    const CpuKv& kv = static_cast<const CpuKv&>(*r.kv);
    ensure_rank_table(*r.rank_rope, r.n_idx);
    rotate_keys_by_rank(pool, kv, r);
    pool.run(s.n_head, [&](int64_t h, int th) {
      float* sc = scratch_[static_cast<size_t>(th)].data();
      attend_by_rank(kv, r, static_cast<int>(h) / G, r.q + h * d, s.scale, sc, r.out + h * d,
                     tmp_[static_cast<size_t>(th)]);
      scatter_probs(r, static_cast<int>(h), sc);
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
  weighted_values(kv, row.layer, kvh, row.idx, n_idx, scores, out, tmp);  // tmp: qr is no longer needed
}

}  // namespace tova
