// The kernel check's policy steps: the head mean and the built-in policies' state and victims
// on the device (policy_step_cuda.cu) against the host's policies.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernel_check.h"
#include "kv_policy.h"

namespace tova {
namespace kcheck {

// The head mean and the steps of the built-in policies the device runs (head_mean: tova, h2o,
// tova_ema) against the host's policies (kv_policy.cpp) on the same probabilities, three steps
// in a row (the state carried over): rows of 1 to 600 slots, probabilities drawn from a few
// values (tied keys, broken by position), protected slots, several victims, more victims than
// candidates (the host's policy fails; the device marks the missing -1), and tokens written in
// the step beside the new one (a chunk's: the last new_tail of idx; the host hears of them by
// on_insert, as from the store).
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
      d.new_tail = descs.size() % 3 == 1 ? std::min(3, c.n_idx) : 0;
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
        if (policy->on_insert) {
          policy->on_insert(policy->user, &v, d.new_slot);
          for (int j = d.n_idx - d.new_tail; j < d.n_idx; ++j)
            policy->on_insert(policy->user, &v, idx_all[static_cast<size_t>(d.idx_off + j)]);
        }
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

}  // namespace kcheck
}  // namespace tova
