// The gated feed-forward's activations on the device: act(g), then times up (the CPU's order of
// operations; ops_cuda.cu's act_mul and matvec_cuda.cu's fused product share them).
#pragma once

namespace tova {
namespace cuda {

__device__ __forceinline__ float ffn_act(bool gelu, float g) {
  if (gelu) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
  }
  return g / (1.0f + expf(-g));
}

}  // namespace cuda
}  // namespace tova
