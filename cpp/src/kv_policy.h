// Eviction policies behind the C ABI of <tova/policy_plugin.h>: the built-ins (full, window,
// sink, h2o, tova, and tova_ema beyond the paper: docs/policies.md), policies loaded from
// shared libraries, and an owning handle the KV store uses.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tova/policy_plugin.h"

namespace tova {

// Owns a tova_policy (calls its destroy callback) and, for plugins, the library it came from.
class PolicyHandle {
 public:
  PolicyHandle() = default;
  PolicyHandle(tova_policy* p, std::shared_ptr<void> library, std::string origin);
  ~PolicyHandle();
  PolicyHandle(PolicyHandle&& o) noexcept;
  PolicyHandle& operator=(PolicyHandle&& o) noexcept;
  PolicyHandle(const PolicyHandle&) = delete;
  PolicyHandle& operator=(const PolicyHandle&) = delete;

  tova_policy* get() const { return p_; }
  tova_policy* operator->() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }
  const std::string& origin() const { return origin_; }

 private:
  tova_policy* p_ = nullptr;
  std::shared_ptr<void> library_;  // dlclose'd after the policy is destroyed
  std::string origin_;
};

// tova_ema's decay per step (tuned on one text, reported on another: bench/RESULTS.md, "Quality
// per KV byte").
constexpr float kTovaEmaDecay = 0.95f;
// tova_ema's state of a token written and not yet seen by a select() (on_insert sets it).
constexpr float kTovaEmaUnseen = -1.0f;

// Names of the built-in policies, in the order `tova --help` lists them.
const std::vector<std::string>& builtin_policy_names();
bool is_builtin_policy(const std::string& name);

// A new instance of a built-in policy; ArgumentError listing the names for an unknown one.
// "full" has no eviction callback use: the store never evicts with it.
PolicyHandle make_builtin_policy(const std::string& name);

// Loads `tova_policy_create` from a shared library and calls it with `args`; Error naming the
// library on failure (not found, missing symbol, NULL result, ABI version mismatch).
PolicyHandle load_policy_plugin(const std::string& path, const std::string& args);

// Checks a policy object's ABI fields (version, size, required callbacks).
void check_policy_abi(const tova_policy* p, const std::string& origin);

// The built-in policies whose every step a backend may run itself (Backend::selects_victims),
// keeping their per-slot state on its side: each evicts the valid unprotected slots with the
// lowest (key, position), the key being
//   Tova:    the current query's head-mean probability;
//   H2o:     the state, += head mean every step; the positions at or above h2o_recent_start()
//            are not candidates;
//   TovaEma: the state, = kTovaEmaDecay * state + (1 - kTovaEmaDecay) * head mean every step
//            (the head mean itself for the tokens written in this step: the new one, or a
//            chunk's in chunked prefill).
// None for every other policy (plugins included).
enum class BuiltinRule { None, Tova, H2o, TovaEma };
BuiltinRule builtin_rule(const tova_policy* p);

// H2O's recent window: the smallest position among the capacity / 2 most recent valid slots
// (pos[s] >= 0); INT32_MAX when there are none.
int32_t h2o_recent_start(const int32_t* pos, int32_t n_slots, int32_t capacity);

// Default number of protected first tokens for a policy name ("sink": 4, others 0).
int default_n_sink(const std::string& policy);

}  // namespace tova
