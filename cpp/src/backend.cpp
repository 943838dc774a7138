#include "backend.h"

#include "common.h"
#include "cpu/backend_cpu.h"
#ifdef TOVA_HAVE_CUDA
#include "backend_cuda.h"  // cuda/
#endif

namespace tova {

size_t buf_width(const HParams& h, Buf b) {
  const size_t E = static_cast<size_t>(h.n_embd), D = static_cast<size_t>(h.head_dim);
  switch (b) {
    case Buf::X: case Buf::XN: case Buf::O: return E;
    case Buf::Q: case Buf::ATT: return static_cast<size_t>(h.n_head) * D;
    case Buf::K: case Buf::V: return static_cast<size_t>(h.n_head_kv) * D;
    case Buf::GATE: case Buf::UP: return static_cast<size_t>(h.n_ff);
    case Buf::kCount: break;
  }
  return 0;
}

int cuda_device_count() {
#ifdef TOVA_HAVE_CUDA
  return cuda_devices();
#else
  return 0;
#endif
}

bool cuda_built() {
#ifdef TOVA_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_simulated() {
#ifdef TOVA_CUDA_SIM
  return true;
#else
  return false;
#endif
}

#ifndef TOVA_HAVE_CUDA
std::vector<std::string> cuda_kernel_check() {
  throw ArgumentError("cuda kernel check: this tova was built without CUDA");
}
#endif

std::unique_ptr<Backend> make_backend(BackendKind kind, const Model& model, int max_rows, int n_threads,
                                      bool float_activations) {
  switch (kind) {
    case BackendKind::Cpu: return std::make_unique<CpuBackend>(model, max_rows, n_threads, float_activations);
    case BackendKind::Cuda:
#ifdef TOVA_HAVE_CUDA
      return make_cuda_backend(model, max_rows, float_activations);
#else
      throw ArgumentError("backend 'cuda': this tova was built without CUDA (rebuild with "
                          "CMAKE_ARGS=-DTOVA_CUDA=ON pip install . on a machine with the CUDA toolkit)");
#endif
  }
  throw ArgumentError(cat("backend '", backend_name(kind), "' is not built into this tova"));
}

}  // namespace tova
