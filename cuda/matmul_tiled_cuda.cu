// The matrix product for many input rows: a block computes a tile of 64 outputs (weight rows) by
// 64 input rows, stepping over the columns 32 at a time: the weight tile is dequantized once into
// shared memory (cuda/dequant.cuh, the CPU's values) and the input tile loaded beside it, then
// each of the 256 threads adds a 4 x 4 patch of products from them. A weight is thus decoded and
// read once for 64 input rows, and an input value once for 64 weight rows, where the warp-per-row
// kernels (matvec_cuda.cu, ops_cuda.cu) read the whole input once per output row. Sums are float,
// in column order, each product fused into its sum; those kernels sum per lane and then across
// the warp, so the last bits of a product depend on which kernel ran (on the number of input
// rows). The bias is added to the finished sum, as the CPU adds it. The tiles are filled with
// consecutive threads on consecutive columns (coalesced reads of the rows), at the price of
// bank conflicts in the shared stores.
#include "matmul_tiled_cuda.h"

#include "cuda_check.h"
#include "launch.cuh"
#include "with_type.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kTileM = 64;   // weight rows (outputs) of a block
constexpr int kTileN = 64;   // input rows of a block
constexpr int kTileK = 32;   // columns per step
constexpr int kSide = 16;    // threads per side: 16 x 16, each 4 x 4 outputs
constexpr int kThreads = kSide * kSide;
constexpr int kPad = 4;      // keeps the shared rows 16-byte aligned and spreads the banks

template <class Dq>
__global__ void matmul_tiled_kernel(const MatTargets targets, int64_t cols, const float* x, int n) {
  const MatTarget& T = targets.t[blockIdx.z];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  if (r0 >= T.rows) return;  // the whole block: this target has fewer rows
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  __shared__ __align__(16) float ws[kTileK][kTileM + kPad];  // ws[c][r]: column c of weight row r0 + r
  __shared__ __align__(16) float xs[kTileK][kTileN + kPad];  // xs[c][i]: column c of input row i0 + i
  const int tr = threadIdx.x / kSide, ti = threadIdx.x % kSide;  // this thread's rows 4tr.., inputs 4ti..
  float acc[4][4];
#pragma unroll
  for (int p = 0; p < 4; ++p)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[p][q] = 0.0f;
  for (int64_t k0 = 0; k0 < cols; k0 += kTileK) {
    for (int e = threadIdx.x; e < kTileM * kTileK; e += kThreads) {
      const int rr = e / kTileK, c = e % kTileK;
      const int64_t r = r0 + rr, k = k0 + c;
      ws[c][rr] = r < T.rows && k < cols ? Dq::elem(T.w + static_cast<size_t>(r) * T.row_bytes, k) : 0.0f;
    }
    for (int e = threadIdx.x; e < kTileN * kTileK; e += kThreads) {
      const int ii = e / kTileK, c = e % kTileK;
      const int64_t i = i0 + ii, k = k0 + c;
      xs[c][ii] = i < n && k < cols ? x[i * cols + k] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTileK; ++c) {
      const float4 a = *reinterpret_cast<const float4*>(&ws[c][4 * tr]);
      const float4 b = *reinterpret_cast<const float4*>(&xs[c][4 * ti]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[p][q] = fmaf(av[p], bv[q], acc[p][q]);
    }
    __syncthreads();  // the tiles are refilled
  }
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int64_t r = r0 + 4 * tr + p;
    if (r >= T.rows) break;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t i = i0 + 4 * ti + q;
      if (i < n) T.y[i * T.rows + r] = T.bias ? acc[p][q] + T.bias[r] : acc[p][q];
    }
  }
}

}  // namespace

bool matmul_tiled(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n) {
  if (n <= 0 || targets.n <= 0 || targets.max_rows <= 0) return with_type(t, [](auto) {});
  const dim3 grid(static_cast<unsigned>((targets.max_rows + kTileM - 1) / kTileM),
                  static_cast<unsigned>((n + kTileN - 1) / kTileN), static_cast<unsigned>(targets.n));
  const bool ok = with_type(t, [&](auto dq) {
    TOVA_LAUNCH(matmul_tiled_kernel<decltype(dq)>, grid, kThreads, s)(targets, cols, x, n);
  });
  if (ok) check_launch(s, "matmul_tiled");
  return ok;
}

}  // namespace cuda
}  // namespace tova
