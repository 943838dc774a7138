#include "kv_cpu.h"

#include <cmath>
#include <cstring>

#include "arch.h"
#include "kernels_cpu.h"
#include "quant.h"

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

CpuKv::CpuKv(const KvLayout& layout) : layout_(layout) {
  for (int n : layout_.n_slots) {
    const size_t rows = static_cast<size_t>(layout_.n_head_kv) * static_cast<size_t>(n);
    k_.emplace_back(rows * layout_.k_row_bytes, 0);
    v_.emplace_back(rows * layout_.v_row_bytes, 0);
  }
  bytes_ = layout_.payload_bytes();
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
  }
}

void CpuKv::store_k(uint8_t* dst, const float* x) const { store(layout_.type_k, dst, x, layout_.hadamard_k); }
void CpuKv::store_v(uint8_t* dst, const float* x) const { store(layout_.type_v, dst, x, layout_.hadamard_v); }

}  // namespace tova
