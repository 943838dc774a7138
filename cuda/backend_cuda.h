// The CUDA backend (cuda/backend_cuda.cu), seen from the core: a plain C++ header, so that no
// file outside cuda/ includes a CUDA header. Built only with TOVA_CUDA (the core then defines
// TOVA_HAVE_CUDA and backend.cpp offers BackendKind::Cuda).
#pragma once

#include <memory>

#include "backend.h"

namespace tova {

// The whole model on CUDA device 0: weights uploaded once in their quantized form, activations
// and every sequence's K/V in device memory. float_activations: float inputs to the matrix
// products, else 8-bit ones and integer products where the weight type has them (the CPU
// backend's two paths). Error when there is no usable device.
std::unique_ptr<Backend> make_cuda_backend(const Model& model, int max_rows, bool float_activations);

// Usable CUDA devices (0 without a driver or a GPU; never throws).
int cuda_devices();

}  // namespace tova
