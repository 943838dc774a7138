// The CUDA matrix product for the weight types of the real models, decoded chunk by chunk
// (cuda/dequant_chunks.cuh): each output row taken by one warp, or by 2 or 4 warps of a block
// when the product has too few rows to fill the device (a decode step's square and down
// products), each lane decoding a few bytes of the row into runs of four weights with word loads
// and multiplying them by float4 loads of every input row; the warps' sums of a row added in
// shared memory. A chunk is decoded once for up to kRows input rows. The values are those of the
// per-element kernel (ops_cuda.cu) and of the CPU's float path; only the order of the sums
// differs.
#include "cuda_check.h"
#include "dequant_chunks.cuh"
#include "launch.cuh"
#include "matvec_cuda.h"
#include "matvec_rows.cuh"
#include "tail.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kRows = kMvRows;

// glu 0: y_j = W_j x for target j = blockIdx.y. glu 1 / 2: the row of the gate (t[0]) and of
// the up matrix (t[1]) one after the other, and t[0].y = act(gate) * up (SiLU / GELU). Warp w of
// the block takes share w % wpr of the chunks of its row (mv_place).
// kTail: the tail's code compiled in. nvcc then gives the kernel more registers (sm_90: 80-92
// a thread against 56-68, fewer blocks a multiprocessor), so a product without a tail launches
// the kernel without it; TOVA_CUDA_TAILS=0 compares the two on a device.
template <class Ch, bool kTail>
__global__ void matvec_kernel(const MatTargets targets, int64_t cols, const float* x, int n, int glu, int wpr,
                              const Tail tail) {
  const MvPlace p = mv_place(targets, wpr);
  const int64_t chunks = cols / Ch::kBlock * Ch::kChunks;
  mv_rows(targets, n, glu, wpr, p, [&](const MatTarget&, const uint8_t* wr, int i0, int m, float(&acc)[kRows]) {
#pragma unroll 2
    for (int64_t t = p.share * kWarp + p.lane; p.live && t < chunks; t += wpr * kWarp) {
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
  });
  if (kTail) run_tail(tail);
}

template <class Ch>
void launch(Queue s, const MatTargets& targets, int64_t cols, const float* x, int n, int glu, int sm_count,
            const Tail& tail) {
  const MvShape shape = mv_shape(targets, glu, cols / Ch::kBlock * Ch::kChunks, sm_count);
  auto* kernel = tail.kind != Tail::None ? matvec_kernel<Ch, true> : matvec_kernel<Ch, false>;
  TOVA_LAUNCH(kernel, shape.grid, kMvWarps * kWarp, s)(targets, cols, x, n, glu, shape.wpr, tail);
  check_launch(s, "matvec");
}

}  // namespace

bool matvec(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n, int glu,
            int sm_count, const Tail& tail) {
  // float4 loads of x and 2-byte loads of the blocks: otherwise the per-element kernel
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
  for (int j = 0; j < targets.n; ++j)
    if (reinterpret_cast<uintptr_t>(targets.t[j].w) % 2 != 0 || targets.t[j].row_bytes % 2 != 0) return false;
  if (n <= 0 || targets.n <= 0 || targets.max_rows <= 0) {
    tail_apart(s, tail);  // nothing to launch it in
    return true;
  }
  switch (t) {
    case GgmlType::Q4_0: launch<ChQ4_0>(s, targets, cols, x, n, glu, sm_count, tail); return true;
    case GgmlType::Q4_1: launch<ChQ4_1>(s, targets, cols, x, n, glu, sm_count, tail); return true;
    case GgmlType::Q5_0: launch<ChQ5_0>(s, targets, cols, x, n, glu, sm_count, tail); return true;
    case GgmlType::Q8_0: launch<ChQ8_0>(s, targets, cols, x, n, glu, sm_count, tail); return true;
    case GgmlType::Q4_K: launch<ChQ4_K>(s, targets, cols, x, n, glu, sm_count, tail); return true;
    case GgmlType::Q6_K: launch<ChQ6_K>(s, targets, cols, x, n, glu, sm_count, tail); return true;
    default: return false;
  }
}

}  // namespace cuda
}  // namespace tova
