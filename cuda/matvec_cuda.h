// The chunk-decoding matrix product (matvec_cuda.cu) for the weight types of the real models.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops_cuda.h"
#include "quant.h"

namespace tova {
namespace cuda {

// The product of cuda::matmul. False (nothing launched) when the type has no chunk decoder or
// x / W are not aligned for its vector loads: the caller then uses the per-element kernel.
// glu 1 (SiLU) or 2 (GELU): the product of cuda::matmul_glu instead (two targets, gate and up).
bool matvec(cudaStream_t s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n, int glu = 0);

}  // namespace cuda
}  // namespace tova
