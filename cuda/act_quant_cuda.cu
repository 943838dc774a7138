// The input rows of a matrix product in 8-bit blocks on the device, as the CPU backend quantizes
// its activations (cpu/quant_legacy.cpp quantize_q8_0 / quantize_q8_1, cpu/quant_kquants.cpp
// quantize_q8_K): the same quants and scales. A warp per block: 32-element blocks one element a
// lane, 256-element blocks eight a lane.
#include "act_quant_cuda.h"

#include "act_quant.cuh"
#include "cuda_check.h"
#include "launch.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kWarps = 4;  // blocks per thread block

__global__ void quantize_kernel(const float* x, int n, ActRows a, int block) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  const int64_t i = blockIdx.y;
  if (b >= a.cols / block) return;  // the whole warp
  const float* row = x + i * a.cols;
  if (block == kQK)
    quantize_q8_32(row, a, i, b, lane);
  else
    quantize_q8_256(row, a, i, b, lane);
}

}  // namespace

size_t act_rows_bytes(int64_t cols, int n) {
  const int64_t per_row = cols + 4 * (cols / kQK) * 2 + 4 * (cols / 16);  // quants, d and s, sums of 16
  return static_cast<size_t>(per_row * n) + 64;
}

int act_block(ActType t) { return t == ActType::Q8_K ? kQK_K : kQK; }

ActRows act_rows(ActType t, int n, int64_t cols, void* buf, size_t bytes) {
  const int block = act_block(t);
  if (cols % block != 0) throw Error(cat("CUDA quantize_act: ", cols, " columns are not whole blocks of ", block));
  if (bytes < act_rows_bytes(cols, n)) throw Error(cat("CUDA quantize_act: ", bytes, " bytes for ", n, " rows of ", cols));
  ActRows a;
  a.cols = cols;
  // Quants first (16-byte aligned rows where cols is a multiple of 16), then the floats and sums.
  a.q = static_cast<int8_t*>(buf);
  auto* f = reinterpret_cast<float*>(static_cast<uint8_t*>(buf) + ((cols * n + 15) / 16) * 16);
  a.d = f;
  a.s = f + (cols / kQK) * n;
  a.bsum = reinterpret_cast<int*>(a.s + (cols / kQK) * n);
  return a;
}

ActRows quantize_act(Queue s, ActType t, const float* x, int n, int64_t cols, void* buf, size_t bytes) {
  const ActRows a = act_rows(t, n, cols, buf, bytes);
  quantize_rows(s, x, n, a, act_block(t));
  return a;
}

void quantize_rows(Queue s, const float* x, int n, const ActRows& a, int block) {
  if (n <= 0) return;
  const dim3 grid(static_cast<unsigned>((a.cols / block + kWarps - 1) / kWarps), static_cast<unsigned>(n));
  TOVA_LAUNCH(quantize_kernel, grid, kWarps * kWarp, s)(x, n, a, block);
  check_launch(s, "quantize_act");
}

}  // namespace cuda
}  // namespace tova
