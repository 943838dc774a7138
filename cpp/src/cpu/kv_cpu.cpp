#include "kv_cpu.h"

#include <cstring>

#include "kernels_cpu.h"
#include "quant.h"

namespace tova {

CpuKv::CpuKv(const KvLayout& layout) : layout_(layout) {
  for (int n : layout_.n_slots) {
    const size_t rows = static_cast<size_t>(layout_.n_head_kv) * static_cast<size_t>(n);
    k_.emplace_back(rows * layout_.k_row_bytes, 0);
    v_.emplace_back(rows * layout_.v_row_bytes, 0);
  }
  bytes_ = layout_.payload_bytes();
}

void CpuKv::store(KvType type, uint8_t* p, const float* x) const {
  const int d = layout_.head_dim;
  switch (type) {
    case KvType::F32: std::memcpy(p, x, sizeof(float) * static_cast<size_t>(d)); break;
    case KvType::F16: {
      auto* h = reinterpret_cast<uint16_t*>(p);
      for (int i = 0; i < d; ++i) h[i] = fp32_to_fp16(x[i]);
      break;
    }
    case KvType::Q8_0:
    case KvType::Q4_0:
    case KvType::Q4_1: cpu_kernels(kv_ggml_type(type)).quantize(x, p, d); break;
  }
}

}  // namespace tova
