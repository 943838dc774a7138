// One RoPE pair rotated on the device, Rope::rotate's arithmetic (rope.cpp): the pair (2p, 2p + 1),
// or with NeoX (p, p + pairs), of vector v by the angle whose cosine and sine are c and s. Shared
// by the rotation of a step's rows (ops_cuda.cu; or in the K/V write: kv_write_cuda.cu) and the
// rotation by rank (attention_cuda.cu).
#pragma once

namespace tova {
namespace cuda {

__device__ __forceinline__ void rotate_pair(float* v, int p, int pairs, bool neox, float c, float s) {
  const int a_at = neox ? p : 2 * p, b_at = neox ? p + pairs : 2 * p + 1;
  const float a = v[a_at], b = v[b_at];
  v[a_at] = a * c - b * s;
  v[b_at] = a * s + b * c;
}

}  // namespace cuda
}  // namespace tova
