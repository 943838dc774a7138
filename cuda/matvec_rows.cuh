// What the two matrix-vector kernels share (matvec_cuda.cu: float activations; matvec_int_cuda.cu:
// 8-bit activations): blocks of kMvWarps warps, each output row taken by `wpr` of them (1, 2 or
// 4: mv_shape), up to kMvRows input rows a pass over the weights; the end of a product (the
// warps' sums added, the bias, y or act(gate) * up written).
#pragma once

#include <cstdint>

#include "activation.cuh"
#include "ops_cuda.h"
#include "tail.cuh"
#include "warp.cuh"

namespace tova {
namespace cuda {

constexpr int kMvWarps = 4;  // warps per block
constexpr int kMvRows = 8;   // input rows per pass over a weight row
static_assert(kMvWarps * kWarp == kNormThreads, "a tail norms as the norm's own kernel does (tail.cuh)");

// Warps per output row: 1, or 2 or 4 while the product's rows (all targets') give fewer than 32
// warps a multiprocessor (sm_count of them; 0: never split) and each warp still has a unit of
// work (`units` a row: chunks or tasks) a lane.
inline int warps_per_row(int64_t rows, int64_t units, int sm_count) {
  constexpr int kFillWarps = 32;
  int w = 1;
  while (w < kMvWarps && rows * w < static_cast<int64_t>(sm_count) * kFillWarps && units >= 2 * w * kWarp) w *= 2;
  return w;
}

// The launch: warps per row, and the grid (blocks of rows, targets; one target pair with glu).
struct MvShape {
  dim3 grid;
  int wpr;
};

inline MvShape mv_shape(const MatTargets& targets, int glu, int64_t units, int sm_count) {
  int64_t rows = targets.t[0].rows;  // a warp takes a row of each of the two GLU targets
  for (int j = 1; j < (glu ? 1 : targets.n); ++j) rows += targets.t[j].rows;
  const int wpr = warps_per_row(rows, units, sm_count);
  const int rows_per_block = kMvWarps / wpr;
  return {dim3(static_cast<unsigned>((targets.max_rows + rows_per_block - 1) / rows_per_block),
               static_cast<unsigned>(glu ? 1 : targets.n)),
          wpr};
}

// A thread's place: warp `warp` takes share `share` of row r's work (of target blockIdx.y);
// past the last row (live false) it has nothing to add but still meets its block's barriers.
struct MvPlace {
  int lane, warp, share;
  int64_t r;
  bool live;  // the same for the whole warp
};

__device__ __forceinline__ MvPlace mv_place(const MatTargets& targets, int wpr) {
  MvPlace p;
  p.lane = static_cast<int>(threadIdx.x) % kWarp;
  p.warp = static_cast<int>(threadIdx.x) / kWarp;
  p.share = p.warp % wpr;
  p.r = static_cast<int64_t>(blockIdx.x) * (kMvWarps / wpr) + p.warp / wpr;
  p.live = p.r < targets.t[blockIdx.y].rows;
  return p;
}

// The end of product j (of 1, or 2 with glu) of a pass over input rows i0 .. i0 + m: each
// lane's partial sums acc summed over the warp, then over the row's warps in share order
// (through `sums`), the bias added; glu's first product (the gate) kept in `gate`, the others
// written to y (act(gate) * up for glu). Every thread of the block calls it.
__device__ __forceinline__ void mv_finish(float (&acc)[kMvRows], float (&sums)[kMvWarps][kMvRows],
                                          float (&gate)[kMvRows], const MvPlace& p, const MatTargets& targets,
                                          const MatTarget& T, int wpr, int glu, int j, int i0, int m) {
#pragma unroll
  for (int k = 0; k < kMvRows; ++k) acc[k] = warp_sum(acc[k]);
  if (wpr > 1) {  // the same for the whole block
    if (p.lane == 0)
      for (int k = 0; k < kMvRows; ++k) sums[p.warp][k] = acc[k];
    __syncthreads();
    if (p.share == 0)
      for (int k = 0; k < kMvRows; ++k) {
        float v = sums[p.warp][k];
        for (int o = 1; o < wpr; ++o) v += sums[p.warp + o][k];
        acc[k] = v;
      }
    __syncthreads();  // sums is rewritten by the next product
  }
  if (!p.live || p.share != 0) return;
#pragma unroll
  for (int k = 0; k < kMvRows; ++k) {
    float v = acc[k];
    if (T.bias) v += T.bias[p.r];
    if (glu && j == 0) {
      gate[k] = v;
    } else if (p.lane == 0 && k < m) {
      const MatTarget& Y = glu ? targets.t[0] : T;  // the gate's rows take act(gate) * up
      Y.y[static_cast<int64_t>(i0 + k) * Y.rows + p.r] = glu ? ffn_act(glu == 2, gate[k]) * v : v;
    }
  }
}

// A kernel's loop: for each pass over up to kMvRows input rows (i0 .. i0 + m) and each product
// (one, or glu's gate then up), body(T, wr, i0, m, acc) adds this thread's partial sums of row
// p.r of target T (weights at wr) to acc; then mv_finish. Every thread of the block calls it.
template <class Body>
__device__ __forceinline__ void mv_rows(const MatTargets& targets, int n, int glu, int wpr, const MvPlace& p,
                                        Body&& body) {
  __shared__ float sums[kMvWarps][kMvRows];
  for (int i0 = 0; i0 < n; i0 += kMvRows) {
    const int m = min(kMvRows, n - i0);
    float gate[kMvRows];
    for (int j = 0; j < (glu ? 2 : 1); ++j) {
      const MatTarget& T = targets.t[glu ? j : static_cast<int>(blockIdx.y)];
      const uint8_t* wr = T.w + static_cast<size_t>(p.live ? p.r : 0) * T.row_bytes;
      float acc[kMvRows];
#pragma unroll
      for (int k = 0; k < kMvRows; ++k) acc[k] = 0.0f;
      body(T, wr, i0, m, acc);
      mv_finish(acc, sums, gate, p, targets, T, wpr, glu, j, i0, m);
    }
  }
}

}  // namespace cuda
}  // namespace tova
