// The fixed-memory KV store of one sequence (spec §2): per layer a pool of slots allocated once,
// each holding K and V for every KV head, its absolute position (-1 = empty), a protection flag
// and the policy's per-slot float. Nothing here grows while generating.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kv_policy.h"
#include "quant.h"

namespace tova {

struct HParams;

enum class KvType { F32, F16, Q8_0 };
KvType parse_kv_type(const std::string& name);  // "f32", "f16", "q8_0"
const char* kv_type_name(KvType t);

struct KvConfig {
  int capacity = 512;      // C for the policy's layers (states kept after each step)
  int max_step = 64;       // U: the most tokens handled in one step (prefill chunk)
  KvType type = KvType::F16;
  int n_sink = 0;          // first positions never evicted
};

// One layer's pool. K and V are stored head-major: [n_head_kv][n_slots][head_dim] elements of
// the KV type, so one head's keys are contiguous.
struct LayerKv {
  int capacity = 0;  // C of this layer
  int n_slots = 0;   // P = C + U
  bool sliding = false;  // a sliding-window layer (window policy, fixed by the model)
  size_t row_bytes = 0;  // bytes of one head_dim vector in the KV type
  std::vector<uint8_t> k, v;
  std::vector<int32_t> pos;       // -1 = empty
  std::vector<uint8_t> protect;   // 1 = never evicted
  std::vector<float> state;       // the policy's per-slot value
  int n_valid = 0;
  int64_t n_evicted = 0;          // total evictions, for stats

  uint8_t* k_row(int head, int slot) { return k.data() + (static_cast<size_t>(head) * n_slots + slot) * row_bytes; }
  uint8_t* v_row(int head, int slot) { return v.data() + (static_cast<size_t>(head) * n_slots + slot) * row_bytes; }
  const uint8_t* k_row(int head, int slot) const { return k.data() + (static_cast<size_t>(head) * n_slots + slot) * row_bytes; }
  const uint8_t* v_row(int head, int slot) const { return v.data() + (static_cast<size_t>(head) * n_slots + slot) * row_bytes; }
  int free_slot() const;  // lowest empty slot, -1 if none
};

class KvStore {
 public:
  // `full` makes every layer a plain cache of `capacity` slots that never evicts.
  KvStore(const HParams& hp, const KvConfig& cfg, bool full);

  int n_layer() const { return static_cast<int>(layers_.size()); }
  LayerKv& layer(int l) { return layers_[static_cast<size_t>(l)]; }
  const LayerKv& layer(int l) const { return layers_[static_cast<size_t>(l)]; }
  const KvConfig& config() const { return cfg_; }
  KvType type() const { return cfg_.type; }
  int head_dim() const { return head_dim_; }
  int n_head_kv() const { return n_head_kv_; }

  // Exact bytes of K/V and the per-slot tables, allocated at construction.
  uint64_t bytes() const { return bytes_; }

  // Empties every slot.
  void clear();

  // Writes one head's K or V vector (float32) into a slot in the store's type.
  void write(std::vector<uint8_t>& dst, size_t offset, const float* x) const;

 private:
  KvConfig cfg_;
  int head_dim_ = 0, n_head_kv_ = 0;
  std::vector<LayerKv> layers_;
  uint64_t bytes_ = 0;
};

}  // namespace tova
