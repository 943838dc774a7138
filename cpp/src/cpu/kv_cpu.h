// The CPU backend's K/V payload of one sequence: per layer, K and V head-major
// ([n_head_kv][n_slots][head_dim] elements of the KV type), so one head's keys are contiguous
// and slot s of head h is row h * n_slots + s.
#pragma once

#include <cstdint>
#include <vector>

#include "backend.h"

namespace tova {

// x <- H x / sqrt(n) in place, H the Walsh-Hadamard matrix of order n (a power of two): an
// orthonormal, symmetric rotation that is its own inverse.
void hadamard(float* x, int n);

class CpuKv : public KvPayload {
 public:
  explicit CpuKv(const KvLayout& layout);
  uint64_t bytes() const override { return bytes_; }

  const KvLayout& layout() const { return layout_; }
  uint8_t* k_row(int layer, int head, int slot) { return row(k_, layout_.k_row_bytes, layer, head, slot); }
  uint8_t* v_row(int layer, int head, int slot) { return row(v_, layout_.v_row_bytes, layer, head, slot); }
  const uint8_t* k_row(int layer, int head, int slot) const {
    return row(k_, layout_.k_row_bytes, layer, head, slot);
  }
  const uint8_t* v_row(int layer, int head, int slot) const {
    return row(v_, layout_.v_row_bytes, layer, head, slot);
  }

  // Write one head_dim vector (float32) into a key row / value row in its KV type.
  void store_k(uint8_t* dst, const float* x) const;  // rotated first when layout().hadamard_k
  void store_v(uint8_t* dst, const float* x) const;  // rotated first when layout().hadamard_v

 private:
  void store(KvType type, uint8_t* dst, const float* x, bool rotate) const;
  uint8_t* row(std::vector<std::vector<uint8_t>>& m, size_t row_bytes, int layer, int head, int slot) {
    const size_t n = static_cast<size_t>(layout_.n_slots[static_cast<size_t>(layer)]);
    return m[static_cast<size_t>(layer)].data() + (static_cast<size_t>(head) * n + slot) * row_bytes;
  }
  const uint8_t* row(const std::vector<std::vector<uint8_t>>& m, size_t row_bytes, int layer, int head,
                     int slot) const {
    const size_t n = static_cast<size_t>(layout_.n_slots[static_cast<size_t>(layer)]);
    return m[static_cast<size_t>(layer)].data() + (static_cast<size_t>(head) * n + slot) * row_bytes;
  }

  KvLayout layout_;
  std::vector<std::vector<uint8_t>> k_, v_;  // per layer
  uint64_t bytes_ = 0;
};

}  // namespace tova
