#include "kv_cpu.h"

#include <cmath>
#include <cstring>

#include "arch.h"
#include "kernels_cpu.h"
#include "quant.h"
#include "quant_kernels.h"

namespace tova {

void hadamard(float* x, int n) {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const float s = 1.0f / std::sqrt(static_cast<float>(n));
  for (int i = 0; i < n; ++i) x[i] *= s;
}

DequantizeFn kv_dequantizer(KvType t) {
  if (t != KvType::Q3_0) return cpu_kernels(kv_ggml_type(t)).dequantize;
#if defined(TOVA_X86)
  if (active_tier() != CpuTier::Scalar) return avx2::dequantize_q3_0;
#endif
  return scalar::dequantize_q3_0;
}

CpuKv::CpuKv(const KvLayout& layout) : layout_(layout) {
  const size_t hkv = static_cast<size_t>(layout_.n_head_kv);
  for (size_t l = 0; l < layout_.n_slots.size(); ++l) {
    const size_t hi = static_cast<size_t>(layout_.n_hi(static_cast<int>(l)));
    const size_t lo = static_cast<size_t>(layout_.n_lo_of(static_cast<int>(l)));
    k_.emplace_back(hkv * hi * layout_.k_row_bytes, 0);
    v_.emplace_back(hkv * hi * layout_.v_row_bytes, 0);
    k_lo_.emplace_back(hkv * lo * layout_.lo.k_row_bytes, 0);
    v_lo_.emplace_back(hkv * lo * layout_.lo.v_row_bytes, 0);
  }
  bytes_ = layout_.payload_bytes();
}

uint8_t* CpuKv::row(bool key, int layer, int head, int slot) {
  const size_t l = static_cast<size_t>(layer);
  const int n_hi = layout_.n_hi(layer);
  const bool lower = slot >= n_hi;
  const KvTierTypes& t = lower ? layout_.lo : layout_;
  const size_t n = static_cast<size_t>(lower ? layout_.n_lo_of(layer) : n_hi);
  const size_t s = static_cast<size_t>(lower ? slot - n_hi : slot);
  std::vector<uint8_t>& m = lower ? (key ? k_lo_[l] : v_lo_[l]) : (key ? k_[l] : v_[l]);
  return m.data() + (static_cast<size_t>(head) * n + s) * (key ? t.k_row_bytes : t.v_row_bytes);
}

KvTierRows CpuKv::tier_rows(int layer, int head, int tier) const {
  KvTierRows r;
  r.types = tier == 0 ? static_cast<const KvTierTypes*>(&layout_) : &layout_.lo;
  const int first = tier == 0 ? 0 : layout_.n_hi(layer);
  r.k = k_row(layer, head, first);
  r.v = v_row(layer, head, first);
  return r;
}

void CpuKv::load(KvType type, const uint8_t* src, float* x, bool rotated) const {
  kv_dequantizer(type)(src, x, layout_.head_dim);
  if (rotated) hadamard(x, layout_.head_dim);  // its own inverse
}

void CpuKv::demote(int layer, int src, int dst) {
  float x[HParamLimits::kHeadDim];
  const KvTierTypes& hi = layout_;
  const KvTierTypes& lo = layout_.lo;
  // Rows rotated in both tiers stay rotated (no round trip through the rotation).
  const bool kk = hi.hadamard_k && lo.hadamard_k, vv = hi.hadamard_v && lo.hadamard_v;
  for (int h = 0; h < layout_.n_head_kv; ++h) {
    load(hi.type_k, k_row(layer, h, src), x, hi.hadamard_k && !kk);
    store(lo.type_k, k_row(layer, h, dst), x, lo.hadamard_k && !kk);
    load(hi.type_v, v_row(layer, h, src), x, hi.hadamard_v && !vv);
    store(lo.type_v, v_row(layer, h, dst), x, lo.hadamard_v && !vv);
  }
}

void CpuKv::store(KvType type, uint8_t* p, const float* x, bool rotate) const {
  const int d = layout_.head_dim;
  float r[HParamLimits::kHeadDim];  // head_dim is bounded by it (arch.cpp)
  if (rotate) {
    std::memcpy(r, x, sizeof(float) * static_cast<size_t>(d));
    hadamard(r, d);
    x = r;
  }
  switch (type) {
    case KvType::F32: std::memcpy(p, x, sizeof(float) * static_cast<size_t>(d)); break;
    case KvType::F16: {
      auto* h = reinterpret_cast<uint16_t*>(p);
      for (int i = 0; i < d; ++i) h[i] = fp32_to_fp16(x[i]);
      break;
    }
    case KvType::Q8_0:
    case KvType::Q4_0:
    case KvType::Q4_1:
    case KvType::Q5_0:
    case KvType::Q5_1: cpu_kernels(kv_ggml_type(type)).quantize(x, p, d); break;
    case KvType::Q3_0: scalar::quantize_q3_0(x, p, d); break;
  }
}

void CpuKv::store_k(uint8_t* dst, const float* x) const { store(layout_.type_k, dst, x, layout_.hadamard_k); }
void CpuKv::store_v(uint8_t* dst, const float* x) const { store(layout_.type_v, dst, x, layout_.hadamard_v); }

}  // namespace tova
