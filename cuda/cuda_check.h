// CUDA runtime errors as tova errors naming the operation (host code of cuda/ only).
#pragma once

#include <cuda_runtime.h>

#include "common.h"

namespace tova {
namespace cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cat("CUDA backend: ", what, ": ", cudaGetErrorString(e)));
}

}  // namespace cuda
}  // namespace tova
