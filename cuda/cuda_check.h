// CUDA runtime errors as tova errors naming the operation (host code of cuda/ only).
#pragma once

#include <cuda_runtime.h>

#include "common.h"

namespace tova {
namespace cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cat("CUDA backend: ", what, ": ", cudaGetErrorString(e)));
}

// The last kernel launch's error (launch configuration, or a fault of an earlier kernel).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace cuda
}  // namespace tova
