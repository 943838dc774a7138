// The CUDA matrix product for the weight types of the real models, decoded chunk by chunk
// (cuda/dequant_chunks.cuh): each output row taken by one warp, or by 2 or 4 warps of a block
// when the product has too few rows to fill the device (a decode step's square and down
// products), each lane decoding a few bytes of the row into runs of four weights with word loads
// and multiplying them by float4 loads of every input row; the warps' sums of a row added in
// shared memory. A chunk is decoded once for up to kRows input rows. The values are those of the
// per-element kernel (ops_cuda.cu) and of the CPU's float path; only the order of the sums
// differs.
#include "activation.cuh"
#include "cuda_check.h"
#include "launch.cuh"
#include "dequant_chunks.cuh"
#include "matvec_cuda.h"
#include "warp.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kWarps = 4;  // output rows per block
constexpr int kRows = 8;   // input rows per pass over a weight row

// glu 0: y_j = W_j x for target j = blockIdx.y. glu 1 / 2: the row of the gate (t[0]) and of
// the up matrix (t[1]) one after the other, and t[0].y = act(gate) * up (SiLU / GELU). Warp w of
// the block takes share w % wpr of the chunks of row blockIdx.x * (kWarps / wpr) + w / wpr.
template <class Ch>
__global__ void matvec_kernel(const MatTargets targets, int64_t cols, const float* x, int n, int glu, int wpr) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int share = warp % wpr;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kWarps / wpr) + warp / wpr;
  // Past the last row a warp has nothing to add but still meets its block's barriers.
  const bool live = r < targets.t[blockIdx.y].rows;  // the same for the whole warp
  const int64_t chunks = cols / Ch::kBlock * Ch::kChunks;
  __shared__ float sums[kWarps][kRows];
  for (int i0 = 0; i0 < n; i0 += kRows) {
    const int m = min(kRows, n - i0);
    float gate[kRows];
    for (int j = 0; j < (glu ? 2 : 1); ++j) {
      const MatTarget& T = targets.t[glu ? j : static_cast<int>(blockIdx.y)];
      const uint8_t* wr = T.w + static_cast<size_t>(live ? r : 0) * T.row_bytes;
      float acc[kRows];
#pragma unroll
      for (int k = 0; k < kRows; ++k) acc[k] = 0.0f;
#pragma unroll 2
      for (int64_t t = share * kWarp + lane; live && t < chunks; t += wpr * kWarp) {
        const int64_t b = t / Ch::kChunks;
        float wv[4 * Ch::kRuns];
        int start[Ch::kRuns];
        Ch::decode(wr + b * Ch::kBytes, static_cast<int>(t % Ch::kChunks), wv, start);
        const float* xb = x + static_cast<int64_t>(i0) * cols + b * Ch::kBlock;
#pragma unroll
        for (int k = 0; k < kRows; ++k) {
          if (k >= m) break;
#pragma unroll
          for (int run = 0; run < Ch::kRuns; ++run) {
            const float4 xv = *reinterpret_cast<const float4*>(xb + static_cast<int64_t>(k) * cols + start[run]);
            float a = acc[k];
            a = fmaf(wv[4 * run + 0], xv.x, a);
            a = fmaf(wv[4 * run + 1], xv.y, a);
            a = fmaf(wv[4 * run + 2], xv.z, a);
            a = fmaf(wv[4 * run + 3], xv.w, a);
            acc[k] = a;
          }
        }
      }
#pragma unroll
      for (int k = 0; k < kRows; ++k) acc[k] = warp_sum(acc[k]);
      if (wpr > 1) {  // the same for the whole block: the row's warps' sums added in share order
        if (lane == 0)
          for (int k = 0; k < kRows; ++k) sums[warp][k] = acc[k];
        __syncthreads();
        if (share == 0)
          for (int k = 0; k < kRows; ++k) {
            float v = sums[warp][k];
            for (int o = 1; o < wpr; ++o) v += sums[warp + o][k];
            acc[k] = v;
          }
        __syncthreads();  // sums is rewritten by the next product
      }
      if (!live || share != 0) continue;
#pragma unroll
      for (int k = 0; k < kRows; ++k) {
        float v = acc[k];
        if (T.bias) v += T.bias[r];
        if (glu && j == 0) {
          gate[k] = v;
        } else if (lane == 0 && k < m) {
          const MatTarget& Y = glu ? targets.t[0] : T;  // the gate's rows take act(gate) * up
          Y.y[static_cast<int64_t>(i0 + k) * Y.rows + r] = glu ? ffn_act(glu == 2, gate[k]) * v : v;
        }
      }
    }
  }
}

template <class Ch>
void launch(cudaStream_t s, const MatTargets& targets, int64_t cols, const float* x, int n, int glu, int sm_count) {
  int64_t rows = targets.t[0].rows;  // a warp takes a row of each of the two GLU targets
  for (int j = 1; j < (glu ? 1 : targets.n); ++j) rows += targets.t[j].rows;
  const int wpr = warps_per_row(rows, cols / Ch::kBlock * Ch::kChunks, sm_count);
  const int rows_per_block = kWarps / wpr;
  const dim3 grid(static_cast<unsigned>((targets.max_rows + rows_per_block - 1) / rows_per_block),
                  static_cast<unsigned>(glu ? 1 : targets.n));
  TOVA_LAUNCH(matvec_kernel<Ch>, grid, kWarps * kWarp, s)(targets, cols, x, n, glu, wpr);
  check_launch("matvec");
}

}  // namespace

int warps_per_row(int64_t rows, int64_t chunks, int sm_count) {
  constexpr int kFillWarps = 32;
  int w = 1;
  while (w < kWarps && rows * w < static_cast<int64_t>(sm_count) * kFillWarps && chunks >= 2 * w * kWarp) w *= 2;
  return w;
}

bool matvec(cudaStream_t s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n, int glu,
            int sm_count) {
  // float4 loads of x and 2-byte loads of the blocks: otherwise the per-element kernel
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
  for (int j = 0; j < targets.n; ++j)
    if (reinterpret_cast<uintptr_t>(targets.t[j].w) % 2 != 0 || targets.t[j].row_bytes % 2 != 0) return false;
  if (n <= 0 || targets.n <= 0 || targets.max_rows <= 0) return true;
  switch (t) {
    case GgmlType::Q4_0: launch<ChQ4_0>(s, targets, cols, x, n, glu, sm_count); return true;
    case GgmlType::Q4_1: launch<ChQ4_1>(s, targets, cols, x, n, glu, sm_count); return true;
    case GgmlType::Q5_0: launch<ChQ5_0>(s, targets, cols, x, n, glu, sm_count); return true;
    case GgmlType::Q8_0: launch<ChQ8_0>(s, targets, cols, x, n, glu, sm_count); return true;
    case GgmlType::Q4_K: launch<ChQ4_K>(s, targets, cols, x, n, glu, sm_count); return true;
    case GgmlType::Q6_K: launch<ChQ6_K>(s, targets, cols, x, n, glu, sm_count); return true;
    default: return false;
  }
}

}  // namespace cuda
}  // namespace tova
