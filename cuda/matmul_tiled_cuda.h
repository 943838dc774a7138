// The tiled matrix product for many input rows (prefill chunks, large batches): see
// matmul_tiled_cuda.cu.
#pragma once

#include <cstdint>

#include "ops_cuda.h"
#include "quant.h"

namespace tova {
namespace cuda {

// The product of cuda::matmul, for any weight type with a per-element dequantizer (false,
// nothing launched, for another).
bool matmul_tiled(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n);

}  // namespace cuda
}  // namespace tova
