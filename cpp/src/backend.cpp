#include "backend.h"

#include "common.h"
#include "cpu/backend_cpu.h"

namespace tova {

std::unique_ptr<Backend> make_backend(BackendKind kind, const Model& model, int max_rows, int n_threads,
                                      bool float_activations) {
  switch (kind) {
    case BackendKind::Cpu: return std::make_unique<CpuBackend>(model, max_rows, n_threads, float_activations);
  }
  throw ArgumentError(cat("backend '", backend_name(kind), "' is not built into this tova"));
}

}  // namespace tova
