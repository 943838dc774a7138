#include "kv_store.h"

#include <cstring>

#include "arch.h"
#include "common.h"

namespace tova {

KvType parse_kv_type(const std::string& name) {
  if (name == "f16") return KvType::F16;
  if (name == "f32") return KvType::F32;
  if (name == "q8_0") return KvType::Q8_0;
  throw ArgumentError(cat("unknown kv_type '", name, "' (known: f16, f32, q8_0)"));
}

const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::F32: return "f32";
    case KvType::F16: return "f16";
    case KvType::Q8_0: return "q8_0";
  }
  return "?";
}

static GgmlType ggml_type_of(KvType t) {
  switch (t) {
    case KvType::F32: return GgmlType::F32;
    case KvType::F16: return GgmlType::F16;
    case KvType::Q8_0: return GgmlType::Q8_0;
  }
  return GgmlType::F32;
}

int LayerKv::free_slot() const {
  for (int s = 0; s < n_slots; ++s)
    if (pos[static_cast<size_t>(s)] < 0) return s;
  return -1;
}

KvStore::KvStore(const HParams& hp, const KvConfig& cfg, bool full)
    : cfg_(cfg), head_dim_(hp.head_dim), n_head_kv_(hp.n_head_kv) {
  if (cfg.capacity < 1) throw ArgumentError(cat("kv_size must be at least 1, got ", cfg.capacity));
  if (cfg.max_step < 1) throw ArgumentError(cat("chunk size must be at least 1, got ", cfg.max_step));
  const GgmlType gt = ggml_type_of(cfg.type);
  const TypeTraits& tr = type_traits(gt);
  if (head_dim_ % tr.block_size != 0)
    throw ArgumentError(cat("kv_type ", kv_type_name(cfg.type), " needs a head size that is a multiple of ",
                            tr.block_size, ", the model's is ", head_dim_));
  const size_t rb = row_bytes(gt, head_dim_);
  layers_.resize(static_cast<size_t>(hp.n_layer));
  for (int l = 0; l < hp.n_layer; ++l) {
    LayerKv& L = layers_[static_cast<size_t>(l)];
    L.sliding = hp.is_swa_layer(l);
    // A sliding window of n_swa lets a query see n_swa keys, itself included: C = n_swa - 1.
    // With a full cache the window is still applied, but the layer never needs more.
    // Sliding layers keep their whole window whatever kv_size is (spec §6: the policy and C
    // apply to the global layers); a full cache smaller than the window bounds them too.
    L.capacity = L.sliding ? (full ? std::min(hp.n_swa - 1, cfg.capacity) : hp.n_swa - 1)
                           : cfg.capacity;
    L.n_slots = full && !L.sliding ? cfg.capacity : L.capacity + cfg.max_step;
    L.row_bytes = rb;
    const size_t kv_bytes = static_cast<size_t>(n_head_kv_) * L.n_slots * rb;
    L.k.assign(kv_bytes, 0);
    L.v.assign(kv_bytes, 0);
    L.pos.assign(static_cast<size_t>(L.n_slots), -1);
    L.protect.assign(static_cast<size_t>(L.n_slots), 0);
    L.state.assign(static_cast<size_t>(L.n_slots), 0.0f);
    bytes_ += 2 * kv_bytes + static_cast<uint64_t>(L.n_slots) * (sizeof(int32_t) + 1 + sizeof(float));
  }
}

void KvStore::clear() {
  for (LayerKv& L : layers_) {
    std::fill(L.pos.begin(), L.pos.end(), -1);
    std::fill(L.protect.begin(), L.protect.end(), 0);
    std::fill(L.state.begin(), L.state.end(), 0.0f);
    L.n_valid = 0;
    L.n_evicted = 0;
  }
}

void KvStore::write(std::vector<uint8_t>& dst, size_t offset, const float* x) const {
  uint8_t* p = dst.data() + offset;
  switch (cfg_.type) {
    case KvType::F32: std::memcpy(p, x, sizeof(float) * static_cast<size_t>(head_dim_)); break;
    case KvType::F16: {
      auto* h = reinterpret_cast<uint16_t*>(p);
      for (int i = 0; i < head_dim_; ++i) h[i] = fp32_to_fp16(x[i]);
      break;
    }
    case KvType::Q8_0: type_traits(GgmlType::Q8_0).quantize(x, p, head_dim_); break;
  }
}

}  // namespace tova
