// The CPU backend's K/V payload of one sequence: per layer, K and V head-major
// ([n_head_kv][n_slots][head_dim] elements of the KV type), so one head's keys are contiguous
// and slot s of head h is row h * n_slots + s.
#pragma once

#include <cstdint>
#include <vector>

#include "backend.h"
#include "kernels_cpu.h"

namespace tova {

// x <- H x / sqrt(n) in place, H the Walsh-Hadamard matrix of order n (a power of two): an
// orthonormal, symmetric rotation that is its own inverse.
void hadamard(float* x, int n);

// The CPU decoder of a KV element type: the kernel table's, or Q3_0's own (of the active tier).
DequantizeFn kv_dequantizer(KvType t);

// The rows of one (layer, KV head) in one tier: slot s of the tier (numbered from the tier's
// first slot) at k + s * types.k_row_bytes and v + s * types.v_row_bytes.
struct KvTierRows {
  const KvTierTypes* types = nullptr;
  const uint8_t* k = nullptr;
  const uint8_t* v = nullptr;
};

class CpuKv : public KvPayload {
 public:
  explicit CpuKv(const KvLayout& layout);
  uint64_t bytes() const override { return bytes_; }

  const KvLayout& layout() const { return layout_; }
  // Tier 0: the upper tier (slots [0, n_hi)); tier 1: the lower one (slots n_hi + s).
  KvTierRows tier_rows(int layer, int head, int tier) const;
  uint8_t* k_row(int layer, int head, int slot) { return row(true, layer, head, slot); }
  uint8_t* v_row(int layer, int head, int slot) { return row(false, layer, head, slot); }
  const uint8_t* k_row(int layer, int head, int slot) const {
    return const_cast<CpuKv*>(this)->row(true, layer, head, slot);
  }
  const uint8_t* v_row(int layer, int head, int slot) const {
    return const_cast<CpuKv*>(this)->row(false, layer, head, slot);
  }

  // Write one head_dim vector (float32) into an upper-tier key row / value row in its KV type.
  void store_k(uint8_t* dst, const float* x) const;  // rotated first when layout().hadamard_k
  void store_v(uint8_t* dst, const float* x) const;  // rotated first when layout().hadamard_v
  // Moves upper slot src to lower slot dst, converted to the lower types (Backend::demote_kv).
  void demote(int layer, int src, int dst);

 private:
  void store(KvType type, uint8_t* dst, const float* x, bool rotate) const;
  // One stored row back to float32, unrotated.
  void load(KvType type, const uint8_t* src, float* x, bool rotated) const;
  uint8_t* row(bool key, int layer, int head, int slot);

  KvLayout layout_;
  std::vector<std::vector<uint8_t>> k_, v_;        // per layer, upper tier: [n_head_kv][n_hi] rows
  std::vector<std::vector<uint8_t>> k_lo_, v_lo_;  // per layer, lower tier: [n_head_kv][n_lo] rows
  uint64_t bytes_ = 0;
};

}  // namespace tova
