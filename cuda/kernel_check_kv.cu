// The kernel check's K/V kernels: rows stored in every KV type, rotated or not, and moved down to
// a lower tier (the same bytes as the CPU backend's); keys rotated by rank for positions
// "cache_index"; the attention itself (scores, softmax over runs of slots, weighted sums,
// probabilities) against the CPU backend's on the same stored K/V, for every kind of key and
// value, two tiers and cache_index.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/attention_cpu.h"
#include "cpu/kv_cpu.h"
#include "cpu/thread_pool.h"
#include "act_quant_cuda.h"
#include "kernel_check.h"
#include "rope.h"

namespace tova {
namespace kcheck {

// One tier's types as KvLayout sets them up: rows of head_dim elements, the quantized types
// rotated when `rotate`.
void set_tier(KvTierTypes& t, KvType k, KvType v, int head_dim, bool rotate) {
  auto quantized = [](KvType x) { return x != KvType::F16 && x != KvType::F32; };
  t.type_k = k;
  t.type_v = v;
  t.k_row_bytes = kv_row_bytes(k, head_dim);
  t.v_row_bytes = kv_row_bytes(v, head_dim);
  t.hadamard_k = rotate && quantized(k);
  t.hadamard_v = rotate && quantized(v);
}

// write_kv against CpuKv::store_k / store_v: three rows of three KV heads into a pool of five
// slots, for key / value type pairs, head sizes and the rotation on and off; every byte compared.
void check_kv_writes(std::mt19937& rng, std::vector<std::string>& bad) {
  const std::pair<KvType, KvType> pairs[] = {
      {KvType::Q8_0, KvType::Q8_0}, {KvType::Q4_0, KvType::Q4_0}, {KvType::Q4_1, KvType::Q4_1},
      {KvType::Q5_0, KvType::Q5_0}, {KvType::Q5_1, KvType::Q3_0}, {KvType::F16, KvType::Q4_0},
      {KvType::Q8_0, KvType::F32},  {KvType::F16, KvType::F16},   {KvType::F32, KvType::F16}};
  const int n_head_kv = 3, n_slots = 5;
  const int32_t slots[] = {4, 0, 2};
  const int n = 3;
  for (const auto& [tk, tv] : pairs)
    for (int head_dim : {64, 96, 128, 256})
      for (bool rotate : {false, true}) {
        const bool pow2 = (head_dim & (head_dim - 1)) == 0;
        if (rotate && !pow2) continue;
        KvLayout lo;
        lo.n_head_kv = n_head_kv;
        lo.head_dim = head_dim;
        lo.n_slots.assign(1, n_slots);
        set_tier(lo, tk, tv, head_dim, rotate);
        CpuKv cpu(lo);
        const size_t width = static_cast<size_t>(n_head_kv * head_dim);
        const float scale = head_dim == 96 ? 30.0f : 1.0f;
        const std::vector<float> src_k = random_floats(width * n, rng, -scale, scale);
        const std::vector<float> src_v = random_floats(width * n, rng, -scale, scale);
        for (int i = 0; i < n; ++i)
          for (int h = 0; h < n_head_kv; ++h) {
            const size_t at = static_cast<size_t>(i) * width + static_cast<size_t>(h * head_dim);
            cpu.store_k(cpu.k_row(0, h, slots[i]), src_k.data() + at);
            cpu.store_v(cpu.v_row(0, h, slots[i]), src_v.data() + at);
          }
        const size_t k_bytes = lo.k_row_bytes * n_head_kv * n_slots, v_bytes = lo.v_row_bytes * n_head_kv * n_slots;
        DeviceBuffer dk, dv, ds, dsk, dsv, dw;
        auto* k = to_device(dk, std::vector<uint8_t>(k_bytes, 0));
        auto* v = to_device(dv, std::vector<uint8_t>(v_bytes, 0));
        auto* state = to_device(ds, std::vector<float>(n_slots, 1.0f));
        const float* sk = to_device(dsk, src_k);
        const float* sv = to_device(dsv, src_v);
        std::vector<cuda::KvWrite> writes(n);
        for (int i = 0; i < n; ++i) {
          writes[i].k = k;
          writes[i].v = v;
          writes[i].state = state;
          writes[i].src_k = sk + static_cast<size_t>(i) * width;
          writes[i].src_v = sv + static_cast<size_t>(i) * width;
          writes[i].n_slots = n_slots;
          writes[i].slot = slots[i];
        }
        cuda::write_kv(0, cuda::kv_format(lo), to_device(dw, writes), n, n_head_kv, head_dim);
        const std::vector<uint8_t> got_k = to_host(k, k_bytes), got_v = to_host(v, v_bytes);
        const std::vector<float> got_state = to_host(state, n_slots);
        const bool same = std::memcmp(got_k.data(), cpu.k_row(0, 0, 0), k_bytes) == 0 &&
                          std::memcmp(got_v.data(), cpu.v_row(0, 0, 0), v_bytes) == 0 && got_state[4] == 0.0f &&
                          got_state[0] == 0.0f && got_state[2] == 0.0f && got_state[1] == 1.0f;
        if (!same)
          bad.push_back(cat("write_kv ", kv_type_name(tk), "/", kv_type_name(tv), " head_dim ", head_dim,
                            rotate ? " rotated" : ""));
        // The step's RoPE rotation done by the write (WriteRope) against rope() and then the
        // write: the queries, the keys and every byte stored the same (NeoX with a partial
        // rotation where rotated, else whole pairs).
        const int n_head_q = 5, pairs = rotate ? head_dim / 4 : head_dim / 2;
        const std::vector<float> q = random_floats(static_cast<size_t>(n * n_head_q * head_dim), rng);
        const std::vector<float> cs = random_floats(static_cast<size_t>(n * pairs), rng);
        const std::vector<float> sn = random_floats(static_cast<size_t>(n * pairs), rng);
        DeviceBuffer dcs, dsn, fq[2], fk[2], fc[2][2], fw[2];
        const float* cs_dev = to_device(dcs, cs);
        const float* sn_dev = to_device(dsn, sn);
        std::vector<float> got_q[2], got_kr[2];
        std::vector<uint8_t> got_c[2][2];
        for (int fused = 0; fused < 2; ++fused) {
          float* qd = to_device(fq[fused], q);
          float* kd = to_device(fk[fused], src_k);
          auto* kc = to_device(fc[fused][0], std::vector<uint8_t>(k_bytes, 0));
          auto* vc = to_device(fc[fused][1], std::vector<uint8_t>(v_bytes, 0));
          std::vector<cuda::KvWrite> ws = writes;
          for (int i = 0; i < n; ++i) {
            ws[i].k = kc;
            ws[i].v = vc;
            ws[i].src_k = kd + static_cast<size_t>(i) * width;
          }
          const cuda::RopeTarget targets[2] = {{qd, n_head_q, 0}, {kd, n_head_kv, 0}};
          const RopeStyle style = rotate ? RopeStyle::NeoX : RopeStyle::Normal;
          cuda::WriteRope wr;
          if (fused) {
            wr = {targets[0], targets[1], cs_dev, sn_dev, pairs, rotate ? 1 : 0};
          } else {
            cuda::rope(0, style, targets, 2, n, head_dim, pairs, cs_dev, sn_dev);
          }
          cuda::write_kv(0, cuda::kv_format(lo), to_device(fw[fused], ws), n, n_head_kv, head_dim, wr);
          got_q[fused] = to_host(qd, q.size());
          got_kr[fused] = to_host(kd, src_k.size());
          got_c[fused][0] = to_host(kc, k_bytes);
          got_c[fused][1] = to_host(vc, v_bytes);
        }
        if (got_q[0] != got_q[1] || got_kr[0] != got_kr[1] || got_c[0][0] != got_c[1][0] || got_c[0][1] != got_c[1][1])
          bad.push_back(cat("write_kv with the rotation ", kv_type_name(tk), "/", kv_type_name(tv), " head_dim ",
                            head_dim, rotate ? " rotated" : "", ": not rope() then write_kv"));
      }
}

// demote_kv against CpuKv::demote: a tiered pool (three KV heads, upper slots 0-3, lower 4-6) whose
// upper rows hold the CPU's bytes, three slots moved down on both; every byte of both tiers compared.
void check_kv_demote(std::mt19937& rng, std::vector<std::string>& bad) {
  struct Case {
    KvType hk, hv, lk, lv;
  };
  const Case cases[] = {{KvType::F16, KvType::F16, KvType::Q4_0, KvType::Q3_0},
                        {KvType::Q8_0, KvType::Q4_1, KvType::Q4_0, KvType::Q3_0},
                        {KvType::Q8_0, KvType::Q8_0, KvType::Q5_1, KvType::F16},
                        {KvType::F32, KvType::Q5_0, KvType::Q4_1, KvType::Q4_0}};
  const int n_head_kv = 3, n_hi = 4, n_lo = 3, head_dim = 64;
  const std::pair<int, int> moves[] = {{2, 4}, {0, 6}, {3, 5}};  // (upper slot, slot in the lower tier)
  for (const Case& c : cases)
    for (bool rotate : {false, true}) {
      KvLayout lo;
      lo.n_head_kv = n_head_kv;
      lo.head_dim = head_dim;
      lo.n_slots.assign(1, n_hi + n_lo);
      lo.n_lo.assign(1, n_lo);
      set_tier(lo, c.hk, c.hv, head_dim, rotate);
      set_tier(lo.lo, c.lk, c.lv, head_dim, rotate);
      CpuKv cpu(lo);
      for (int h = 0; h < n_head_kv; ++h)
        for (int s = 0; s < n_hi; ++s) {
          const std::vector<float> x = random_floats(static_cast<size_t>(head_dim), rng, -2.0f, 2.0f);
          cpu.store_k(cpu.k_row(0, h, s), x.data());
          cpu.store_v(cpu.v_row(0, h, s), x.data());
        }
      auto bytes_of = [&](bool key, int tier) {
        const KvTierRows r = cpu.tier_rows(0, 0, tier);
        const KvTierTypes& t = tier == 0 ? static_cast<const KvTierTypes&>(lo) : lo.lo;
        const size_t n = static_cast<size_t>(n_head_kv) * (tier == 0 ? n_hi : n_lo) * (key ? t.k_row_bytes : t.v_row_bytes);
        const uint8_t* p = key ? r.k : r.v;
        return std::vector<uint8_t>(p, p + n);
      };
      DeviceBuffer b[4], dd;
      void* dev[4];  // upper K, upper V, lower K, lower V
      for (int i = 0; i < 4; ++i) {
        std::vector<uint8_t> init = bytes_of(i % 2 == 0, i / 2);
        if (i >= 2) std::fill(init.begin(), init.end(), 0);
        dev[i] = to_device(b[i], init);
      }
      std::vector<cuda::KvDemote> ds;
      for (const auto& [from, to] : moves) {
        cpu.demote(0, from, to);
        cuda::KvDemote d;
        d.k_hi = dev[0];
        d.v_hi = dev[1];
        d.k_lo = dev[2];
        d.v_lo = dev[3];
        d.n_hi = n_hi;
        d.n_lo = n_lo;
        d.src = from;
        d.dst = to - n_hi;
        ds.push_back(d);
      }
      // The CPU's lower rows that no move reached are zero, as the device's.
      cuda::demote_kv(0, cuda::kv_format(lo), cuda::kv_format(lo.lo), to_device(dd, ds), static_cast<int>(ds.size()), n_head_kv,
                      head_dim);
      bool same = true;
      for (int i = 0; i < 4; ++i) {
        const std::vector<uint8_t> want = bytes_of(i % 2 == 0, i / 2);
        same &= to_host(static_cast<const uint8_t*>(dev[i]), want.size()) == want;
      }
      if (!same)
        bad.push_back(cat("demote_kv ", kv_type_name(c.hk), "/", kv_type_name(c.hv), " to ", kv_type_name(c.lk), "/",
                          kv_type_name(c.lv), rotate ? " rotated" : ""));
    }
}

// rank_keys against the CPU's rotate_keys_by_rank: stored keys (every key type, rotated or not)
// decoded, rotated back, rotated by RoPE at their rank (normal and NeoX, all or part of the head
// rotated); every float compared bit for bit.
void check_rank_keys(std::mt19937& rng, std::vector<std::string>& bad) {
  const int n_head_kv = 2, head_dim = 64, n_slots = 9;
  const std::vector<int32_t> idx = {4, 0, 7, 2, 8, 5, 1};  // the slots in position order
  const int n_idx = static_cast<int>(idx.size());
  for (KvType t : {KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0, KvType::Q4_1, KvType::Q5_0, KvType::Q5_1})
    for (bool rotate : {false, true})
      for (RopeStyle style : {RopeStyle::Normal, RopeStyle::NeoX})
        for (int rope_dim : {head_dim, 32}) {
          const bool quantized = t != KvType::F16 && t != KvType::F32;
          if (rotate && !quantized) continue;
          HParams hp;
          hp.rope_style = style;
          hp.rope_dim = rope_dim;
          const Rope rope(hp, 10000.0f);
          const int pairs = rope.pairs();
          KvLayout lo;
          lo.n_head_kv = n_head_kv;
          lo.head_dim = head_dim;
          lo.n_slots.assign(1, n_slots);
          set_tier(lo, t, KvType::F16, head_dim, rotate);
          CpuKv cpu(lo);
          for (int h = 0; h < n_head_kv; ++h)
            for (int sl = 0; sl < n_slots; ++sl)
              cpu.store_k(cpu.k_row(0, h, sl), random_floats(static_cast<size_t>(head_dim), rng, -3.0f, 3.0f).data());
          std::vector<float> cs(static_cast<size_t>(n_idx * pairs)), sn(cs.size());
          for (int r = 0; r < n_idx; ++r) rope.angles(r, cs.data() + r * pairs, sn.data() + r * pairs);
          std::vector<float> want(static_cast<size_t>(n_head_kv * n_idx * head_dim));
          for (int h = 0; h < n_head_kv; ++h)
            for (int j = 0; j < n_idx; ++j) {
              float* x = want.data() + (static_cast<size_t>(h) * n_idx + j) * head_dim;
              kv_dequantizer(t)(cpu.k_row(0, h, idx[static_cast<size_t>(j)]), x, head_dim);
              if (rotate) hadamard(x, head_dim);
              rope.rotate(x, 1, head_dim, cs.data() + j * pairs, sn.data() + j * pairs);
            }
          DeviceBuffer dk, dr, di, dd, dcs, dsn;
          const uint8_t* k0 = cpu.k_row(0, 0, 0);
          cuda::AttnDesc d;
          d.k = to_device(dk, std::vector<uint8_t>(k0, k0 + lo.k_row_bytes * n_head_kv * n_slots));
          d.n_slots = d.n_hi = n_slots;
          d.n_idx = n_idx;
          d.idx_off = 0;
          d.ranked = to_device(dr, std::vector<float>(want.size(), 0.0f));
          d.rope_pairs = pairs;
          d.rope_neox = style == RopeStyle::NeoX;
          cuda::rank_keys(0, cuda::kv_format(lo), to_device(dd, std::vector<cuda::AttnDesc>{d}), 1, to_device(di, idx),
                          n_head_kv, head_dim, to_device(dcs, cs), to_device(dsn, sn));
          const std::vector<float> got = to_host(d.ranked, want.size());
          if (std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) != 0)
            bad.push_back(cat("rank_keys ", kv_type_name(t), rotate ? " rotated" : "",
                              style == RopeStyle::NeoX ? " neox" : "", " rope_dim ", rope_dim));
        }
}

// The attention kernel against AttentionCpu on the same stored bytes (written by CpuKv): rows of
// 1 to 1100 slots (one run to the most runs a row is split into) in a scattered order (for
// cache_index: ranks in that order), GQA groups of 2, 3 and 8, head sizes 64 to 256, every kind
// of key (float, half, quantized: the CPU's integer products) and value, rotated or not, two
// tiers, cache_index. Outputs and probabilities agree to float rounding (sums in another order),
// so a wrong block, run, scale, rotation or tier shows.
void check_attention(std::mt19937& rng, std::vector<std::string>& bad) {
  struct Case {
    const char* name;
    KvType k, v;
    bool rotate;
    KvType lk, lv;  // the lower tier's, where n_lo > 0
    int n_lo;
    bool by_rank;
    int n_slots;  // the last row attends every slot: over 1024, the most runs a row is split into
  };
  const Case cases[] = {
      {"f32", KvType::F32, KvType::F32, false, KvType::F32, KvType::F32, 0, false, 1100},
      {"f16", KvType::F16, KvType::F16, false, KvType::F16, KvType::F16, 0, false, 320},
      {"q8_0/q4_1 rotated", KvType::Q8_0, KvType::Q4_1, true, KvType::F16, KvType::F16, 0, false, 320},
      {"q4_0/q3_0", KvType::Q4_0, KvType::Q3_0, false, KvType::F16, KvType::F16, 0, false, 320},
      {"q5_1/q5_0 rotated", KvType::Q5_1, KvType::Q5_0, true, KvType::F16, KvType::F16, 0, false, 320},
      {"f16 over q4_0/q3_0 rotated", KvType::F16, KvType::F16, true, KvType::Q4_0, KvType::Q3_0, 150, false, 1100},
      {"q8_0 over q4_1/q4_0", KvType::Q8_0, KvType::Q8_0, false, KvType::Q4_1, KvType::Q4_0, 150, false, 320},
      {"q8_0/q4_1 over q4_0/q3_0 rotated", KvType::Q8_0, KvType::Q4_1, true, KvType::Q4_0, KvType::Q3_0, 150, false, 320},
      {"q8_0 rotated, by rank", KvType::Q8_0, KvType::F16, true, KvType::F16, KvType::F16, 0, true, 320},
      {"f16, by rank", KvType::F16, KvType::F16, false, KvType::F16, KvType::F16, 0, true, 1100},
  };
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  const Shape shapes[] = {{9, 3, 64}, {4, 2, 128}, {16, 2, 64}, {8, 1, 256}};  // groups of 3, 2, 8, 8
  ThreadPool pool(1);
  for (const Case& c : cases)
    for (const Shape& sh : shapes) {
      const int n_slots = c.n_slots, n_hi = n_slots - c.n_lo, d = sh.head_dim;
      KvLayout lo;
      lo.n_head_kv = sh.n_head_kv;
      lo.head_dim = d;
      lo.n_slots.assign(1, n_slots);
      if (c.n_lo) lo.n_lo = {c.n_lo};
      set_tier(lo, c.k, c.v, d, c.rotate);
      set_tier(lo.lo, c.lk, c.lv, d, c.rotate);
      CpuKv cpu(lo);
      for (int h = 0; h < sh.n_head_kv; ++h)
        for (int sl = 0; sl < n_slots; ++sl) {
          const std::vector<float> kx = random_floats(static_cast<size_t>(d), rng, -2.0f, 2.0f);
          const std::vector<float> vx = random_floats(static_cast<size_t>(d), rng, -1.0f, 1.0f);
          if (sl < n_hi) {
            cpu.store_k(cpu.k_row(0, h, sl), kx.data());
            cpu.store_v(cpu.v_row(0, h, sl), vx.data());
          }
        }
      // The lower tier's rows: upper rows moved down (CpuKv::demote), so both tiers hold data.
      for (int sl = n_hi; sl < n_slots; ++sl) cpu.demote(0, sl - n_hi, sl);
      HParams hp;
      hp.rope_style = RopeStyle::NeoX;
      hp.rope_dim = d;
      const Rope rope(hp, 10000.0f);
      const int sizes[] = {1, 5, 67, n_slots};  // 1, 1, 2 (of 34 and 33) and 5 or 16 runs
      const int n_rows = 4;
      std::vector<std::vector<int32_t>> idx(n_rows);
      std::vector<float> q = random_floats(static_cast<size_t>(n_rows * sh.n_head * d), rng, -1.0f, 1.0f);
      std::vector<float> out_cpu(q.size()), probs_cpu(static_cast<size_t>(n_rows * sh.n_head * n_slots));
      std::vector<AttnRow> rows(n_rows);
      for (int i = 0; i < n_rows; ++i) {
        std::vector<int32_t> all(static_cast<size_t>(n_slots));
        for (int sl = 0; sl < n_slots; ++sl) all[static_cast<size_t>(sl)] = sl;
        std::shuffle(all.begin(), all.end(), rng);  // both tiers, in no order (the slots' positions)
        idx[static_cast<size_t>(i)].assign(all.begin(), all.begin() + sizes[i]);
        AttnRow& r = rows[static_cast<size_t>(i)];
        r.kv = &cpu;
        r.idx = idx[static_cast<size_t>(i)].data();
        r.n_idx = sizes[i];
        r.q = q.data() + static_cast<size_t>(i) * sh.n_head * d;
        r.out = out_cpu.data() + static_cast<size_t>(i) * sh.n_head * d;
        r.probs = probs_cpu.data() + static_cast<size_t>(i) * sh.n_head * n_slots;
        r.n_slots = n_slots;
        r.rank_rope = c.by_rank ? &rope : nullptr;
      }
      AttnShape shape;
      shape.n_head = sh.n_head;
      shape.n_head_kv = sh.n_head_kv;
      shape.head_dim = d;
      shape.scale = 1.0f / std::sqrt(static_cast<float>(d));
      AttentionCpu().run(pool, shape, rows.data(), n_rows);

      // The device: the same bytes, tier by tier.
      auto tier_bytes = [&](bool key, int t) {
        const KvTierRows tr = cpu.tier_rows(0, 0, t);
        const KvTierTypes& ty = t == 0 ? static_cast<const KvTierTypes&>(lo) : lo.lo;
        const size_t n = static_cast<size_t>(sh.n_head_kv) * (t == 0 ? n_hi : c.n_lo) * (key ? ty.k_row_bytes : ty.v_row_bytes);
        const uint8_t* p = key ? tr.k : tr.v;
        return std::vector<uint8_t>(p, p + n);
      };
      DeviceBuffer bk, bv, bkl, bvl, bq, bo, bp, bs, bd, bi, br, bcs, bsn;
      std::vector<int32_t> idx_all;
      std::vector<cuda::AttnDesc> descs(n_rows);
      int64_t n_ranked = 0;
      for (int i = 0; i < n_rows; ++i) n_ranked += static_cast<int64_t>(sh.n_head_kv) * sizes[i] * d;
      float* ranked = c.by_rank ? to_device(br, std::vector<float>(static_cast<size_t>(n_ranked), 0.0f)) : nullptr;
      const float* q_dev = to_device(bq, q);
      float* out_dev = to_device(bo, std::vector<float>(q.size(), 0.0f));
      std::vector<float> cs(static_cast<size_t>(n_slots * rope.pairs())), sn(cs.size());
      for (int r = 0; r < n_slots; ++r) rope.angles(r, cs.data() + r * rope.pairs(), sn.data() + r * rope.pairs());
      const float* cs_dev = to_device(bcs, cs);
      const float* sn_dev = to_device(bsn, sn);
      const void* k_dev = to_device(bk, tier_bytes(true, 0));
      const void* v_dev = to_device(bv, tier_bytes(false, 0));
      const void* kl_dev = c.n_lo ? to_device(bkl, tier_bytes(true, 1)) : nullptr;
      const void* vl_dev = c.n_lo ? to_device(bvl, tier_bytes(false, 1)) : nullptr;
      int64_t probs_at = 0, ranked_at = 0, means_at = 0;
      int max_idx = 1;
      for (int i = 0; i < n_rows; ++i) {
        cuda::AttnDesc& g = descs[static_cast<size_t>(i)];
        g.k = k_dev;
        g.v = v_dev;
        g.k_lo = kl_dev;
        g.v_lo = vl_dev;
        g.n_slots = n_slots;
        g.n_hi = n_hi;
        g.n_idx = sizes[i];
        g.idx_off = static_cast<int64_t>(idx_all.size());
        g.q = q_dev + static_cast<size_t>(i) * sh.n_head * d;
        g.out = out_dev + static_cast<size_t>(i) * sh.n_head * d;
        g.probs_off = probs_at;
        probs_at += static_cast<int64_t>(sh.n_head) * sizes[i];
        g.mean_off = means_at;  // the head means (AttnPost)
        means_at += sizes[i];
        if (c.by_rank) {
          g.ranked = ranked + ranked_at;
          ranked_at += static_cast<int64_t>(sh.n_head_kv) * sizes[i] * d;
          g.q_cs = cs_dev + static_cast<size_t>(sizes[i] - 1) * rope.pairs();
          g.q_sn = sn_dev + static_cast<size_t>(sizes[i] - 1) * rope.pairs();
          g.rope_pairs = rope.pairs();
          g.rope_neox = true;
        }
        idx_all.insert(idx_all.end(), idx[static_cast<size_t>(i)].begin(), idx[static_cast<size_t>(i)].end());
        max_idx = std::max(max_idx, sizes[i]);
      }
      const cuda::AttnDesc* d_dev = to_device(bd, descs);
      const int32_t* i_dev = to_device(bi, idx_all);
      const cuda::KvFormat f = cuda::kv_format(lo), f_lo = cuda::kv_format(lo.lo);
      if (c.by_rank) cuda::rank_keys(0, f, d_dev, n_rows, i_dev, sh.n_head_kv, d, cs_dev, sn_dev);
      // What follows the runs (AttnPost): the head means and the outputs quantized, in kernels of
      // their own and in the rows' last blocks, the same floats and bytes.
      const int64_t width = static_cast<int64_t>(sh.n_head) * d;
      const size_t act_bytes = cuda::act_rows_bytes(width, n_rows);
      DeviceBuffer bm, ba, bc;
      auto* counters = static_cast<unsigned*>(bc.reserve(n_rows * sizeof(unsigned), "kernel check"));
      check(cudaMemset(counters, 0, n_rows * sizeof(unsigned)), "kernel check");
      for (int runs : {cuda::kAttnMaxRuns, 3, 1}) {  // the default, a bound that cuts, one block per row
        std::vector<float> outs[2], probs[2], means[2];
        std::vector<uint8_t> acts[2];
        for (int fused = 0; fused < 2; ++fused) {
          check(cudaMemset(out_dev, 0, q.size() * sizeof(float)), "kernel check");  // written anew by this run
          float* probs_dev = to_device(bp, std::vector<float>(static_cast<size_t>(probs_at), 0.0f));
          float* scratch = to_device(
              bs, std::vector<float>(cuda::attend_scratch_floats(n_rows, sh.n_head, d, max_idx, c.n_lo > 0, runs), 0.0f));
          cuda::AttnPost post;
          post.counters = fused ? counters : nullptr;
          post.means = to_device(bm, std::vector<float>(static_cast<size_t>(means_at), 0.0f));
          void* act = ba.reserve(act_bytes, "kernel check");
          check(cudaMemset(act, 0, act_bytes), "kernel check");
          post.quant_x = out_dev;
          post.q = cuda::act_rows(cuda::ActType::Q8_0, n_rows, width, act, act_bytes);
          post.quant_block = cuda::act_block(cuda::ActType::Q8_0);
          cuda::attend(0, f, f_lo, d_dev, n_rows, i_dev, sh.n_head, sh.n_head_kv, d, shape.scale, max_idx, c.n_lo > 0,
                       runs, scratch, probs_dev, post);
          outs[fused] = to_host(out_dev, q.size());
          probs[fused] = to_host(probs_dev, static_cast<size_t>(probs_at));
          means[fused] = to_host(post.means, static_cast<size_t>(means_at));
          acts[fused] = to_host(static_cast<const uint8_t*>(act), act_bytes);
        }
        if (outs[0] != outs[1] || probs[0] != probs[1] || means[0] != means[1] || acts[0] != acts[1] ||
            to_host(counters, static_cast<size_t>(n_rows)) != std::vector<unsigned>(static_cast<size_t>(n_rows), 0u))
          bad.push_back(cat("attend ", c.name, " heads ", sh.n_head, "/", sh.n_head_kv, " head_dim ", d, " runs ", runs,
                            ": the rows' last blocks differ from the kernels apart (out ", outs[0] != outs[1],
                            ", probabilities ", probs[0] != probs[1], ", means ", means[0] != means[1], ", 8-bit ",
                            acts[0] != acts[1], ") or left a counter set"));
        const std::vector<float>& out_gpu = outs[1];
        const std::vector<float>& probs_gpu = probs[1];
        float worst_out = 0.0f, worst_p = 0.0f, scale_out = 0.0f;
        for (float v : out_cpu) scale_out = std::max(scale_out, std::fabs(v));
        for (size_t e = 0; e < out_cpu.size(); ++e) worst_out = std::max(worst_out, std::fabs(out_gpu[e] - out_cpu[e]));
        int64_t at = 0;
        for (int i = 0; i < n_rows; ++i)
          for (int h = 0; h < sh.n_head; ++h)
            for (int j = 0; j < sizes[i]; ++j) {
              const float want = probs_cpu[(static_cast<size_t>(i) * sh.n_head + h) * n_slots +
                                           static_cast<size_t>(idx[static_cast<size_t>(i)][static_cast<size_t>(j)])];
              worst_p = std::max(worst_p, std::fabs(probs_gpu[static_cast<size_t>(at++)] - want));
            }
        if (!(worst_out <= 2e-5f * std::max(1.0f, scale_out)) || !(worst_p <= 2e-6f))
          bad.push_back(cat("attend ", c.name, " heads ", sh.n_head, "/", sh.n_head_kv, " head_dim ", d, " runs ", runs,
                            ": out off by ", worst_out, ", probabilities by ", worst_p));
      }
    }
}

}  // namespace kcheck
}  // namespace tova
