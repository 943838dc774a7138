// Plain CPU operations of the forward pass: norms, activations, and matrix products that
// use quantized weights in place (activations quantized once per row to the weight's
// vec_dot_type, then one vec_dot per weight row, rows spread over the thread pool).
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"
#include "thread_pool.h"

namespace tova {

// y = x / rms(x) * w   (w may be empty: no scale)
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);

// The gated activations (silu_mul, gelu_tanh_mul) are in the kernel table (kernels_cpu.h).

// Products y[i, r] = W[r, :] · x[i, :] for several weights sharing one input (q/k/v, gate/up),
// in one parallel region. x is [n, cols]; each y is [n, rows of its W].
struct MatmulJob {
  const Matrix* w;
  float* y;
};
class Matmul {
 public:
  // float_activations: multiply by the float32 activations directly (quantized weight rows
  // decoded to float32), skipping the 8-bit quantization llama.cpp applies: slower, closer to
  // exact, for evaluation.
  explicit Matmul(bool float_activations = false) : float_activations_(float_activations) {}
  void run(ThreadPool& pool, const float* x, int64_t n, const MatmulJob* jobs, int n_jobs);
  void run(ThreadPool& pool, const Matrix& w, const float* x, int64_t n, float* y) {
    MatmulJob j{&w, y};
    run(pool, x, n, &j, 1);
  }

 private:
  bool float_activations_;
  std::vector<uint8_t> xq_[3];  // activations quantized per distinct vec_dot_type (reused)
  std::vector<float> deq_;      // float_activations: one decoded weight row per thread (reused)
};

}  // namespace tova
