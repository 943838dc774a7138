// Each CUDA kernel against its CPU twin on random inputs (tests/test_cuda.py calls it through
// tova._core._cuda_kernel_check on a GPU machine): matrix products of every weight type, by the
// chunked kernel and by the per-element one (misaligned input rows send the product there), for
// odd row counts, several targets in one launch (one with a bias), 1, 3 and 11 input rows, and
// 70 (the tiled kernel);
// embedding rows; RMS norm, alone and after a residual add; the gated activations, alone and fused
// into the gate / up product; residual adds; the head mean and the built-in policies' steps; K/V
// rows stored in every KV type, rotated or not, and moved down to a lower tier (the same bytes as
// the CPU backend's); keys rotated by rank for positions "cache_index"; the attention itself
// (scores, softmax, weighted sums, probabilities) against the CPU backend's on the same stored
// K/V, for every kind of key and value, two tiers and cache_index.
// The CPU side dequantizes with its own kernels and sums in double precision.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend_cuda.h"
#include "cpu/kernels_cpu.h"
#include "cpu/attention_cpu.h"
#include "cpu/kv_cpu.h"
#include "cpu/thread_pool.h"
#include "kv_policy.h"
#include "buffers.h"
#include "ops_cuda.h"
#include "rope.h"

namespace tova {

namespace {

using cuda::check;
using cuda::DeviceBuffer;

constexpr int kTiledFrom = 32;  // the backend's default (TOVA_CUDA_TILED_FROM)

template <class T>
T* to_device(DeviceBuffer& b, const std::vector<T>& v) {
  return static_cast<T*>(b.upload_now(v.data(), v.size() * sizeof(T), "kernel check"));
}

template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> v(n);
  check(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), "kernel check");
  return v;
}

// Random blocks whose values are finite (a block with a NaN / inf scale is drawn again).
std::vector<uint8_t> random_rows(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng, std::vector<float>& deq) {
  const TypeTraits& tt = type_traits(t);
  const size_t rb = row_bytes(t, cols), bb = tt.type_size;
  std::vector<uint8_t> raw(rb * static_cast<size_t>(rows));
  deq.assign(static_cast<size_t>(rows * cols), 0.0f);
  std::vector<float> blk(static_cast<size_t>(tt.block_size));
  for (size_t b = 0; b < raw.size() / bb; ++b) {
    for (;;) {
      for (size_t i = 0; i < bb; ++i) raw[b * bb + i] = static_cast<uint8_t>(rng());
      if (t == GgmlType::F32)  // moderate floats, not random bit patterns
        for (size_t i = 0; i < bb; i += 4) {
          const float f = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
          std::memcpy(&raw[b * bb + i], &f, 4);
        }
      dequantize_row(t, raw.data() + b * bb, blk.data(), tt.block_size);
      bool ok = true;
      for (float f : blk) ok &= std::isfinite(f) && std::fabs(f) < 1e6f;
      if (ok) break;
    }
    std::memcpy(deq.data() + b * static_cast<size_t>(tt.block_size), blk.data(), blk.size() * sizeof(float));
  }
  return raw;
}

std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> v(n);
  std::uniform_real_distribution<float> u(lo, hi);
  for (float& f : v) f = u(rng);
  return v;
}

void check_matmul(GgmlType t, std::mt19937& rng, std::vector<std::string>& bad) {
  const TypeTraits& tt = type_traits(t);
  const int64_t cols = tt.block_size == 1 ? 131 : tt.block_size * (tt.block_size >= 256 ? 2 : 3);
  const int64_t rows = 37;
  std::vector<float> w;
  const std::vector<uint8_t> raw = random_rows(t, rows, cols, rng, w);
  const std::vector<float> bias = random_floats(static_cast<size_t>(rows), rng);
  DeviceBuffer dw, dx, db, dy[3];
  const auto* w_dev = to_device(dw, raw);
  const float* b_dev = to_device(db, bias);
  // Three targets in one launch: all 37 rows with a bias, the first 20 and the last 9 without.
  const int64_t first[3] = {0, 0, rows - 9}, count[3] = {rows, 20, 9};
  bool ok = true;
  for (int n : {1, 3, 11, 70}) {  // 70: the tiled kernel (two tiles of input rows)
    for (int misaligned = 0; misaligned < 2 && ok; ++misaligned) {
      std::vector<float> x = random_floats(static_cast<size_t>(n * cols + 1), rng);
      const float* x_dev = to_device(dx, x) + misaligned;  // +1 float: the per-element kernel
      cuda::MatTargets ts;
      ts.n = 3;
      for (int j = 0; j < 3; ++j) {
        cuda::MatTarget& tg = ts.t[j];
        tg.w = w_dev + static_cast<size_t>(first[j]) * row_bytes(t, cols);
        tg.row_bytes = row_bytes(t, cols);
        tg.rows = count[j];
        tg.y = static_cast<float*>(dy[j].reserve(static_cast<size_t>(n * count[j]) * sizeof(float), "kernel check"));
        tg.bias = j == 0 ? b_dev : nullptr;
        ts.max_rows = std::max(ts.max_rows, count[j]);
      }
      cuda::matmul(0, t, ts, cols, x_dev, n, kTiledFrom);
      for (int j = 0; j < 3 && ok; ++j) {
        const std::vector<float> y = to_host(ts.t[j].y, static_cast<size_t>(n * count[j]));
        for (int i = 0; i < n && ok; ++i)
          for (int64_t rr = 0; rr < count[j] && ok; ++rr) {
            const int64_t r = first[j] + rr;
            double want = j == 0 ? bias[static_cast<size_t>(r)] : 0.0, mag = std::fabs(want);
            for (int64_t e = 0; e < cols; ++e) {
              const double p = static_cast<double>(w[static_cast<size_t>(r * cols + e)]) *
                               x[static_cast<size_t>(misaligned + i * cols + e)];
              want += p;
              mag += std::fabs(p);
            }
            const double got = y[static_cast<size_t>(i * count[j] + rr)];
            if (!(std::fabs(got - want) <= 1e-5 * mag + 1e-6)) {
              bad.push_back(cat("matmul ", tt.name, n >= kTiledFrom ? " (tiled kernel)" : misaligned ? " (per-element kernel)" : "",
                                " target ", j, " n=", n,
                                " row ", r, " input ", i, ": ", got, " vs ", want));
              ok = false;
            }
          }
      }
    }
  }
  // Embedding rows: exactly the CPU's dequantized values, scaled.
  const std::vector<int32_t> tokens = {36, 0, 5, 5, 17};
  DeviceBuffer dt, de;
  const auto* t_dev = to_device(dt, tokens);
  auto* e_dev = static_cast<float*>(de.reserve(tokens.size() * static_cast<size_t>(cols) * sizeof(float), "kernel check"));
  cuda::embed(0, t, w_dev, row_bytes(t, cols), cols, t_dev, static_cast<int>(tokens.size()), 0.5f, e_dev);
  const std::vector<float> emb = to_host(e_dev, tokens.size() * static_cast<size_t>(cols));
  for (size_t i = 0; i < tokens.size(); ++i)
    for (int64_t e = 0; e < cols; ++e) {
      const float want = w[static_cast<size_t>(tokens[i] * cols + e)] * 0.5f;
      if (emb[i * static_cast<size_t>(cols) + static_cast<size_t>(e)] != want) {
        bad.push_back(cat("embed ", tt.name, " token ", tokens[i], " element ", e));
        return;
      }
    }
}

// y == rms_norm(x) * g (g null: no weight), rows of `width`, within float rounding.
bool norm_matches(const std::vector<float>& x, const std::vector<float>& y, const float* g, int64_t width) {
  for (size_t r0 = 0; r0 < x.size(); r0 += static_cast<size_t>(width)) {
    double ss = 0.0;
    for (int64_t e = 0; e < width; ++e) ss += static_cast<double>(x[r0 + static_cast<size_t>(e)]) * x[r0 + static_cast<size_t>(e)];
    const double s = 1.0 / std::sqrt(ss / static_cast<double>(width) + 1e-6);
    for (int64_t e = 0; e < width; ++e) {
      const double want = x[r0 + static_cast<size_t>(e)] * s * (g ? g[e] : 1.0f);
      if (std::fabs(y[r0 + static_cast<size_t>(e)] - want) > 1e-5 * (1.0 + std::fabs(want))) return false;
    }
  }
  return true;
}

void check_elementwise(std::mt19937& rng, std::vector<std::string>& bad) {
  const int64_t rows = 5, width = 333;
  const size_t count = static_cast<size_t>(rows * width);
  const std::vector<float> x = random_floats(count, rng, -3.0f, 3.0f);
  const std::vector<float> g = random_floats(static_cast<size_t>(width), rng, 0.5f, 1.5f);
  DeviceBuffer dx, dg, dy, du;
  const float* x_dev = to_device(dx, x);
  const float* g_dev = to_device(dg, g);
  auto* y_dev = static_cast<float*>(dy.reserve(count * sizeof(float), "kernel check"));
  for (int weighted = 0; weighted < 2; ++weighted) {
    cuda::rms_norm(0, x_dev, weighted ? g_dev : nullptr, y_dev, rows, width, 1e-6f);
    if (!norm_matches(x, to_host(y_dev, count), weighted ? g.data() : nullptr, width))
      bad.push_back(cat("rms_norm", weighted ? " (weighted)" : ""));
  }
  const std::vector<float> up = random_floats(count, rng, -2.0f, 2.0f);
  const float* up_dev = to_device(du, up);
  for (FfnActivation act : {FfnActivation::SiLU, FfnActivation::GeluTanh}) {
    auto* gate = const_cast<float*>(to_device(dy, x));
    cuda::act_mul(0, act, gate, up_dev, static_cast<int64_t>(count));
    const std::vector<float> got = to_host(gate, count);
    for (size_t i = 0; i < count; ++i) {
      const double v = x[i];
      const double a = act == FfnActivation::SiLU
                           ? v / (1.0 + std::exp(-v))
                           : 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
      const double want = a * up[i];
      if (std::fabs(got[i] - want) > 1e-5 * (1.0 + std::fabs(want))) {
        bad.push_back(cat("act_mul ", act == FfnActivation::SiLU ? "silu" : "gelu", " element ", i));
        return;
      }
    }
  }
  std::vector<float> want(count);
  for (size_t i = 0; i < count; ++i) want[i] = x[i] + up[i];
  auto* sum = const_cast<float*>(to_device(dy, x));
  cuda::add(0, sum, up_dev, static_cast<int64_t>(count));
  if (to_host(sum, count) != want) bad.push_back("add");
  // The residual and the next norm in one kernel: x exactly as add leaves it, the norm of it.
  DeviceBuffer dn;
  auto* xs = const_cast<float*>(to_device(dy, x));
  auto* n_dev = static_cast<float*>(dn.reserve(count * sizeof(float), "kernel check"));
  cuda::add_rms_norm(0, xs, up_dev, g_dev, n_dev, rows, width, 1e-6f);
  if (to_host(xs, count) != want) bad.push_back("add_rms_norm: the sum");
  if (!norm_matches(want, to_host(n_dev, count), g.data(), width)) bad.push_back("add_rms_norm: the norm");
}

// The gated product: gate = act(W_gate x) * (W_up x) in one kernel (or, misaligned input, the
// per-element products and act_mul), against double sums on the CPU.
void check_glu(GgmlType t, std::mt19937& rng, std::vector<std::string>& bad) {
  const TypeTraits& tt = type_traits(t);
  const int64_t cols = tt.block_size == 1 ? 131 : tt.block_size * (tt.block_size >= 256 ? 2 : 3);
  const int64_t rows = 37;
  std::vector<float> wg, wu;
  const std::vector<uint8_t> raw_g = random_rows(t, rows, cols, rng, wg), raw_u = random_rows(t, rows, cols, rng, wu);
  DeviceBuffer dg, du, dx, dy, ds;
  for (FfnActivation act : {FfnActivation::SiLU, FfnActivation::GeluTanh})
    for (int n : {1, 3, 11, 70})
      for (int misaligned = 0; misaligned < 2; ++misaligned) {
        const std::vector<float> x = random_floats(static_cast<size_t>(n * cols + 1), rng, -0.3f, 0.3f);
        const float* x_dev = to_device(dx, x) + misaligned;
        cuda::MatTargets ts;
        ts.n = 2;
        ts.max_rows = rows;
        ts.t[0] = {to_device(dg, raw_g), row_bytes(t, cols), rows,
                   static_cast<float*>(dy.reserve(static_cast<size_t>(n * rows) * sizeof(float), "kernel check")),
                   nullptr};
        ts.t[1] = {to_device(du, raw_u), row_bytes(t, cols), rows,
                   static_cast<float*>(ds.reserve(static_cast<size_t>(n * rows) * sizeof(float), "kernel check")),
                   nullptr};
        cuda::matmul_glu(0, t, ts, act, cols, x_dev, n, kTiledFrom);
        const std::vector<float> y = to_host(ts.t[0].y, static_cast<size_t>(n * rows));
        for (int i = 0; i < n; ++i)
          for (int64_t r = 0; r < rows; ++r) {
            double g = 0, u = 0, mg = 0, mu = 0;
            for (int64_t e = 0; e < cols; ++e) {
              const double xv = x[static_cast<size_t>(misaligned + i * cols + e)];
              g += wg[static_cast<size_t>(r * cols + e)] * xv;
              u += wu[static_cast<size_t>(r * cols + e)] * xv;
              mg += std::fabs(wg[static_cast<size_t>(r * cols + e)] * xv);
              mu += std::fabs(wu[static_cast<size_t>(r * cols + e)] * xv);
            }
            const double a = act == FfnActivation::SiLU
                                 ? g / (1.0 + std::exp(-g))
                                 : 0.5 * g * (1.0 + std::tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
            const double want = a * u, got = y[static_cast<size_t>(i * rows + r)];
            const double tol = 1e-5 * (1.2 * (mg + 1e-3) * std::fabs(u) + (std::fabs(a) + 1e-3) * mu) + 1e-6;
            if (!(std::fabs(got - want) <= tol)) {
              bad.push_back(cat("matmul_glu ", tt.name, act == FfnActivation::SiLU ? " silu" : " gelu",
                                misaligned ? " (per-element kernel)" : "", " n=", n, " row ", r, " input ", i, ": ",
                                got, " vs ", want));
              return;
            }
          }
      }
}

// The head mean and the steps of the built-in policies the device runs (head_mean: tova, h2o,
// tova_ema) against the host's policies (kv_policy.cpp) on the same probabilities, three steps
// in a row (the state carried over): rows of 1 to 600 slots, probabilities drawn from a few
// values (tied keys, broken by position), protected slots, several victims, and more victims
// than candidates (the host's policy fails; the device marks the missing -1).
void check_policy_steps(std::mt19937& rng, std::vector<std::string>& bad) {
  const int n_head = 3;
  const float inv_head = 1.0f / static_cast<float>(n_head);
  struct Case {
    int n_idx, n_evict;
  };
  const Case cases[] = {{1, 1}, {5, 1}, {5, 2}, {130, 1}, {130, 7}, {600, 1}, {600, 40}, {9, 9}, {40, 0}};
  for (const char* name : {"tova", "h2o", "tova_ema"}) {
    PolicyHandle policy = make_builtin_policy(name);
    const BuiltinRule rule = builtin_rule(policy.get());
    std::vector<cuda::AttnDesc> descs;
    std::vector<int32_t> idx_all;
    std::vector<std::vector<int32_t>> pos_of;  // per case: position of each slot, -1 empty
    std::vector<std::vector<uint8_t>> protect_of;
    std::vector<std::vector<float>> state_of;  // the host policy's state
    std::vector<int64_t> state_off;            // where each case's state is on the device
    int64_t n_mean = 0, n_victims = 0, n_state = 0, n_probs = 0;
    for (const Case& c : cases) {
      const int n_slots = c.n_idx + 3;
      std::vector<int32_t> slots(static_cast<size_t>(n_slots));
      for (int i = 0; i < n_slots; ++i) slots[static_cast<size_t>(i)] = i;
      std::shuffle(slots.begin(), slots.end(), rng);
      std::vector<int32_t> pos(static_cast<size_t>(n_slots), -1);
      std::vector<uint8_t> protect(static_cast<size_t>(n_slots), 0);
      cuda::AttnDesc d;
      d.n_slots = n_slots;
      d.n_idx = c.n_idx;
      d.idx_off = static_cast<int64_t>(idx_all.size());
      for (int j = 0; j < c.n_idx; ++j) {
        const size_t sl = static_cast<size_t>(slots[static_cast<size_t>(j)]);
        pos[sl] = 1000 - 7 * j;  // distinct, in no order of the slots
        protect[sl] = (rng() % 5 == 0 || c.n_evict == c.n_idx) ? 1 : 0;
        idx_all.push_back(slots[static_cast<size_t>(j)]);
      }
      // The candidates as kv_attention.cpp marks them: protected ones, and h2o's recent window, out.
      const int32_t capacity = c.n_idx - c.n_evict;
      const int32_t recent = rule == BuiltinRule::H2o ? h2o_recent_start(pos.data(), n_slots, capacity) : INT32_MAX;
      d.sel_off = static_cast<int64_t>(idx_all.size());
      for (int j = 0; j < c.n_idx; ++j) {
        const size_t sl = static_cast<size_t>(slots[static_cast<size_t>(j)]);
        idx_all.push_back(protect[sl] || pos[sl] >= recent ? -1 : pos[sl]);
      }
      d.probs_off = n_probs;
      n_probs += static_cast<int64_t>(n_head) * c.n_idx;
      d.mean_off = n_mean;
      n_mean += c.n_idx;
      d.rule = rule;
      d.new_slot = slots[0];
      d.n_evict = c.n_evict;
      d.victims_off = n_victims;
      n_victims += c.n_evict;
      d.sel_off = c.n_evict > 0 ? d.sel_off : -1;
      state_off.push_back(n_state);
      n_state += n_slots;
      descs.push_back(d);
      pos_of.push_back(std::move(pos));
      protect_of.push_back(std::move(protect));
      state_of.emplace_back(static_cast<size_t>(n_slots), 0.0f);
    }
    DeviceBuffer dd, di, dp, dm, dv, ds;
    auto* d_state = const_cast<float*>(to_device(ds, std::vector<float>(static_cast<size_t>(n_state), 0.0f)));
    for (size_t c = 0; c < descs.size(); ++c) descs[c].state = d_state + state_off[c];
    const auto* d_desc = to_device(dd, descs);
    const auto* d_idx = to_device(di, idx_all);
    auto* d_means = static_cast<float*>(dm.reserve(static_cast<size_t>(n_mean) * sizeof(float), "kernel check"));
    auto* d_victims =
        static_cast<int32_t*>(dv.reserve(static_cast<size_t>(std::max<int64_t>(n_victims, 1)) * sizeof(int32_t), "kernel check"));
    for (int step = 0; step < 3; ++step) {
      std::vector<float> probs(static_cast<size_t>(n_probs));
      for (float& p : probs) p = static_cast<float>(rng() % 4) * 0.125f;
      const float* d_probs = to_device(dp, probs);
      cuda::head_mean(0, d_desc, static_cast<int>(descs.size()), n_head, inv_head, d_probs, d_means, d_idx, d_victims);
      const std::vector<float> means = to_host(d_means, static_cast<size_t>(n_mean));
      const std::vector<int32_t> victims = to_host(d_victims, static_cast<size_t>(n_victims));
      const std::vector<float> states = to_host(d_state, static_cast<size_t>(n_state));
      for (size_t c = 0; c < descs.size(); ++c) {
        const cuda::AttnDesc& d = descs[c];
        const std::string where = cat(name, " step ", step, " case ", c, " (", d.n_idx, " slots, ", d.n_evict, " victims)");
        std::vector<float> mean(static_cast<size_t>(d.n_slots), 0.0f);
        for (int j = 0; j < d.n_idx; ++j) {
          float m = 0.0f;
          for (int h = 0; h < n_head; ++h) m += probs[static_cast<size_t>(d.probs_off + h * d.n_idx + j)];
          mean[static_cast<size_t>(idx_all[static_cast<size_t>(d.idx_off + j)])] = m * inv_head;
          if (means[static_cast<size_t>(d.mean_off + j)] != m * inv_head) {
            bad.push_back(cat("head_mean: ", where, " slot ", j));
            return;
          }
        }
        tova_policy_view v{};
        v.capacity = d.n_idx - d.n_evict;
        v.n_slots = d.n_slots;
        v.n_valid = d.n_idx;
        v.n_evict = d.n_evict;
        v.new_slot = d.new_slot;
        v.pos = pos_of[c].data();
        v.protect = protect_of[c].data();
        v.probs_mean = mean.data();
        v.state = state_of[c].data();
        std::vector<int32_t> want(static_cast<size_t>(std::max(d.n_evict, 1)), -1);
        const bool host_failed = policy->select(policy->user, &v, want.data()) != 0;
        want.resize(static_cast<size_t>(d.n_evict));
        const std::vector<int32_t> got(victims.begin() + d.victims_off, victims.begin() + d.victims_off + d.n_evict);
        const bool device_failed = std::find(got.begin(), got.end(), -1) != got.end();
        if (host_failed != device_failed || (!host_failed && got != want)) {
          bad.push_back(cat("policy step: ", where, host_failed ? ": the host found too few candidates" : ""));
          return;
        }
        const int64_t off = state_off[c];
        for (int sl = 0; sl < d.n_slots; ++sl)
          if (pos_of[c][static_cast<size_t>(sl)] >= 0 &&
              states[static_cast<size_t>(off + sl)] != state_of[c][static_cast<size_t>(sl)]) {
            bad.push_back(cat("policy state: ", where, " slot ", sl));
            return;
          }
      }
    }
  }
}

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
        lo.n_slots = {n_slots};
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
      lo.n_slots = {n_hi + n_lo};
      lo.n_lo = {n_lo};
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
          lo.n_slots = {n_slots};
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
// 1 to 300 slots in a scattered order (for cache_index: ranks in that order), GQA groups of 2, 3
// and 8, head sizes 64 to 256, every kind of key (float, half, quantized: the CPU's integer products) and value, rotated or
// not, two tiers, cache_index. Outputs and probabilities agree to float rounding (sums in another
// order), so a wrong block, scale, rotation or tier shows.
void check_attention(std::mt19937& rng, std::vector<std::string>& bad) {
  struct Case {
    const char* name;
    KvType k, v;
    bool rotate;
    KvType lk, lv;  // the lower tier's, where n_lo > 0
    int n_lo;
    bool by_rank;
  };
  const Case cases[] = {
      {"f32", KvType::F32, KvType::F32, false, KvType::F32, KvType::F32, 0, false},
      {"f16", KvType::F16, KvType::F16, false, KvType::F16, KvType::F16, 0, false},
      {"q8_0/q4_1 rotated", KvType::Q8_0, KvType::Q4_1, true, KvType::F16, KvType::F16, 0, false},
      {"q4_0/q3_0", KvType::Q4_0, KvType::Q3_0, false, KvType::F16, KvType::F16, 0, false},
      {"q5_1/q5_0 rotated", KvType::Q5_1, KvType::Q5_0, true, KvType::F16, KvType::F16, 0, false},
      {"f16 over q4_0/q3_0 rotated", KvType::F16, KvType::F16, true, KvType::Q4_0, KvType::Q3_0, 150, false},
      {"q8_0 over q4_1/q4_0", KvType::Q8_0, KvType::Q8_0, false, KvType::Q4_1, KvType::Q4_0, 150, false},
      {"q8_0/q4_1 over q4_0/q3_0 rotated", KvType::Q8_0, KvType::Q4_1, true, KvType::Q4_0, KvType::Q3_0, 150, false},
      {"q8_0 rotated, by rank", KvType::Q8_0, KvType::F16, true, KvType::F16, KvType::F16, 0, true},
      {"f16, by rank", KvType::F16, KvType::F16, false, KvType::F16, KvType::F16, 0, true},
  };
  struct Shape {
    int n_head, n_head_kv, head_dim;
  };
  const Shape shapes[] = {{9, 3, 64}, {4, 2, 128}, {16, 2, 64}, {8, 1, 256}};  // groups of 3, 2, 8, 8
  ThreadPool pool(1);
  for (const Case& c : cases)
    for (const Shape& sh : shapes) {
      const int n_slots = 320, n_hi = n_slots - c.n_lo, d = sh.head_dim;
      KvLayout lo;
      lo.n_head_kv = sh.n_head_kv;
      lo.head_dim = d;
      lo.n_slots = {n_slots};
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
      const int sizes[] = {1, 5, 40, 300};
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
      int64_t probs_at = 0, ranked_at = 0;
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
      float* probs_dev = to_device(bp, std::vector<float>(static_cast<size_t>(probs_at), 0.0f));
      float* scratch = to_device(bs, std::vector<float>(static_cast<size_t>(n_rows * sh.n_head * max_idx), 0.0f));
      const cuda::AttnDesc* d_dev = to_device(bd, descs);
      const int32_t* i_dev = to_device(bi, idx_all);
      const cuda::KvFormat f = cuda::kv_format(lo), f_lo = cuda::kv_format(lo.lo);
      if (c.by_rank) cuda::rank_keys(0, f, d_dev, n_rows, i_dev, sh.n_head_kv, d, cs_dev, sn_dev);
      cuda::attend(0, f, f_lo, d_dev, n_rows, i_dev, sh.n_head, sh.n_head_kv, d, shape.scale, max_idx, scratch,
                   probs_dev);
      const std::vector<float> out_gpu = to_host(out_dev, q.size());
      const std::vector<float> probs_gpu = to_host(probs_dev, static_cast<size_t>(probs_at));
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
        bad.push_back(cat("attend ", c.name, " heads ", sh.n_head, "/", sh.n_head_kv, " head_dim ", d, ": out off by ",
                          worst_out, ", probabilities by ", worst_p));
    }
}

}  // namespace

std::vector<std::string> cuda_kernel_check() {
  if (cuda_devices() == 0) throw Error("cuda kernel check: no usable CUDA device");
  check(cudaSetDevice(0), "cudaSetDevice");
  std::vector<std::string> bad;
  std::mt19937 rng(20261202u);
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                     GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                     GgmlType::Q6_K})
    check_matmul(t, rng, bad);
  for (GgmlType t : {GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K,
                     GgmlType::Q6_K})
    check_glu(t, rng, bad);
  check_elementwise(rng, bad);
  check_policy_steps(rng, bad);
  check_kv_writes(rng, bad);
  check_kv_demote(rng, bad);
  check_rank_keys(rng, bad);
  check_attention(rng, bad);
  check(cudaDeviceSynchronize(), "kernel check");
  return bad;
}

}  // namespace tova
