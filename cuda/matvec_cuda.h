// The chunk-decoding matrix product (matvec_cuda.cu) for the weight types of the real models.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant.h"

namespace tova {
namespace cuda {

// y[i * rows + r] = W_r . x[i * cols ...] for i < n, as cuda::matmul. False (nothing launched)
// when the type has no chunk decoder or x / W are not aligned for its vector loads: the caller
// then uses the per-element kernel.
bool matvec(GgmlType t, const uint8_t* w, size_t row_bytes, int64_t cols, int64_t rows, const float* x, int n,
            float* y);

}  // namespace cuda
}  // namespace tova
