// Kernels of the CUDA backend's forward-pass operations (not attention): matrix products with
// quantized weights read in place, embedding rows, RMS norm, bias, RoPE, gated activations,
// residual adds (K/V row writes: kv_write_cuda.cu). Plain, correctness-first kernels: one warp per output row
// of a matrix product, weights dequantized element by element (cuda/dequant.cuh) for the types
// the chunked kernel (matvec_cuda.cu) does not handle.
#include <cuda_fp16.h>

#include <cstring>

#include "act_quant.cuh"
#include "activation.cuh"
#include "cuda_check.h"
#include "launch.cuh"
#include "dequant.cuh"
#include "matmul_tiled_cuda.h"
#include "matvec_cuda.h"
#include "ops_cuda.h"
#include "rope_pair.cuh"
#include "tail.cuh"
#include "warp.cuh"
#include "with_type.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kMatWarps = 4;  // output rows per block of the matrix kernel
constexpr int kMatRows = 8;   // input rows per pass over a weight row

template <class Dq>
__global__ void matmul_kernel(const MatTargets targets, int64_t cols, const float* x, int n) {
  const MatTarget& T = targets.t[blockIdx.y];
  const int lane = threadIdx.x % kWarp;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kMatWarps + threadIdx.x / kWarp;
  if (r >= T.rows) return;  // the whole warp
  const uint8_t* wr = T.w + static_cast<size_t>(r) * T.row_bytes;
  for (int i0 = 0; i0 < n; i0 += kMatRows) {
    const int m = min(kMatRows, n - i0);
    float acc[kMatRows];
#pragma unroll
    for (int k = 0; k < kMatRows; ++k) acc[k] = 0.0f;
    for (int64_t e = lane; e < cols; e += kWarp) {
      const float we = Dq::elem(wr, e);
#pragma unroll
      for (int k = 0; k < kMatRows; ++k)
        if (k < m) acc[k] = fmaf(we, x[static_cast<int64_t>(i0 + k) * cols + e], acc[k]);
    }
#pragma unroll
    for (int k = 0; k < kMatRows; ++k) {
      const float s = warp_sum(acc[k]);
      if (lane == 0 && k < m) T.y[static_cast<int64_t>(i0 + k) * T.rows + r] = T.bias ? s + T.bias[r] : s;
    }
  }
}

template <class Dq>
__global__ void embed_kernel(const uint8_t* w, size_t row_bytes, int64_t width, const int32_t* tokens, float scale,
                             float* x) {
  const int i = blockIdx.x;  // rows on x: up to 2^31 - 1 of them (y stops at 65535)
  const uint8_t* wr = w + static_cast<size_t>(tokens[i]) * row_bytes;
  for (int64_t e = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; e < width;
       e += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const float v = Dq::elem(wr, e);
    x[static_cast<int64_t>(i) * width + e] = scale != 1.0f ? v * scale : v;
  }
}

// One block a row (tail.cuh's norm_row): block 0 y alone; 32 or 256: y also quantized into q.
__global__ void rms_norm_kernel(float* x, const float* a, const float* w, float* y, int64_t width, float eps,
                                ActRows q, int block) {
  norm_row(x, a, w, y, width, eps, q, block, blockIdx.x);
}

__global__ void rope_kernel(bool neox, RopeTarget t0, RopeTarget t1, int head_dim, int pairs, const float* cs,
                            const float* sn) {
  const int i = blockIdx.x;  // row
  const RopeTarget tg = blockIdx.y == 0 ? t0 : t1;
  float* x = tg.x;
  const int n_heads = tg.n_heads;
  const float* c = cs + static_cast<int64_t>(i) * pairs;
  const float* s = sn + static_cast<int64_t>(i) * pairs;
  for (int t = threadIdx.x; t < n_heads * pairs; t += blockDim.x) {
    const int h = t / pairs, p = t % pairs;
    float* v = x + (static_cast<int64_t>(i) * n_heads + h) * head_dim;
    rotate_pair(v, p, pairs, neox, c[p], s[p]);
  }
}

__global__ void act_mul_kernel(bool gelu, float* gate, const float* up, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    gate[i] = ffn_act(gelu, gate[i]) * up[i];
  }
}

__global__ void add_kernel(float* x, const float* y, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

float eps_of(const Tail& t) {
  float eps;
  std::memcpy(&eps, &t.eps_bits, sizeof eps);
  return eps;
}

unsigned grid_for(int64_t count, int threads) {
  const int64_t g = (count + threads - 1) / threads;
  return static_cast<unsigned>(g < 65535 ? (g < 1 ? 1 : g) : 65535);
}

// rms_norm_kernel over `rows` rows, as every norm below launches it (quant_block 0: y alone).
void launch_norm(Queue s, float* x, const float* a, const float* w, float* y, int64_t rows, int64_t width, float eps,
                 const ActRows& q, int quant_block, const char* what) {
  if (rows <= 0) return;
  TOVA_LAUNCH(rms_norm_kernel, static_cast<unsigned>(rows), kNormThreads, s)(x, a, w, y, width, eps, q, quant_block);
  check_launch(s, what);
}

}  // namespace

bool matmul_supports(GgmlType t) {
  return with_type(t, [](auto) {});
}

void matmul(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n,
            const MatConfig& cfg, const Tail& tail) {
  if (targets.n < 1 || targets.n > kMaxTargets) throw Error(cat("CUDA matmul: ", targets.n, " targets"));
  const bool tiled = cfg.tiled_from > 0 && n >= cfg.tiled_from;
  if (tiled && matmul_tiled(s, t, targets, cols, x, n)) return tail_apart(s, tail);  // matmul_tiled_cuda.cu
  if (!tiled && matvec_int(s, t, targets, cols, x, n, 0, cfg, tail)) return;  // 8-bit activations: matvec_int_cuda.cu
  if (matvec(s, t, targets, cols, x, n, 0, cfg.sm_count, tail)) return;  // the real models' types: matvec_cuda.cu
  if (n <= 0 || targets.max_rows <= 0) return tail_apart(s, tail);
  const dim3 grid(static_cast<unsigned>((targets.max_rows + kMatWarps - 1) / kMatWarps),
                  static_cast<unsigned>(targets.n));
  const bool ok = with_type(t, [&](auto dq) {
    TOVA_LAUNCH(matmul_kernel<decltype(dq)>, grid, kMatWarps * kWarp, s)(targets, cols, x, n);
  });
  if (!ok) throw Error(cat("CUDA backend: no matrix kernel for type ", type_traits(t).name));
  check_launch(s, "matmul");
  tail_apart(s, tail);
}

void matmul_glu(Queue s, GgmlType t, const MatTargets& targets, FfnActivation act, int64_t cols,
                const float* x, int n, const MatConfig& cfg, const Tail& tail) {
  if (targets.n != 2 || targets.t[0].rows != targets.t[1].rows)
    throw Error("CUDA matmul_glu: a gate and an up matrix of the same shape");
  const bool tiled = cfg.tiled_from > 0 && n >= cfg.tiled_from;  // then the two products, and act_mul
  const int glu = act == FfnActivation::GeluTanh ? 2 : 1;
  if (!tiled && matvec_int(s, t, targets, cols, x, n, glu, cfg, tail)) return;
  if (!tiled && matvec(s, t, targets, cols, x, n, glu, cfg.sm_count, tail)) return;
  matmul(s, t, targets, cols, x, n, cfg);
  act_mul(s, act, targets.t[0].y, targets.t[1].y, static_cast<int64_t>(n) * targets.t[0].rows);
  tail_apart(s, tail);
}

void embed(Queue s, GgmlType t, const uint8_t* w, size_t row_bytes, int64_t width, const int32_t* tokens, int n, float scale,
           float* x) {
  if (n <= 0) return;
  const dim3 grid(static_cast<unsigned>(n), grid_for(width, 256));
  const bool ok = with_type(t, [&](auto dq) {
    TOVA_LAUNCH(embed_kernel<decltype(dq)>, grid, 256, s)(w, row_bytes, width, tokens, scale, x);
  });
  if (!ok) throw Error(cat("CUDA backend: no embedding kernel for type ", type_traits(t).name));
  check_launch(s, "embed");
}

void rms_norm(Queue s, const float* x, const float* w, float* y, int64_t rows, int64_t width, float eps) {
  // x is only read without an addend
  launch_norm(s, const_cast<float*>(x), nullptr, w, y, rows, width, eps, ActRows{}, 0, "rms_norm");
}

void add_rms_norm(Queue s, float* x, const float* a, const float* w, float* y, int64_t rows, int64_t width, float eps) {
  launch_norm(s, x, a, w, y, rows, width, eps, ActRows{}, 0, "add_rms_norm");
}

void rms_norm_act(Queue s, float* x, const float* a, const float* w, float* y, int64_t rows, int64_t width, float eps,
                  ActType t, const MatConfig& cfg) {
  if (!cfg.act || !cfg.act_state) throw Error("CUDA rms_norm_act: no 8-bit buffer");
  const ActRows q = act_rows(t, static_cast<int>(rows), width, cfg.act, cfg.act_bytes);
  if (rows <= 0) return;
  launch_norm(s, x, a, w, y, rows, width, eps, q, act_block(t), "rms_norm (quantized)");
  *cfg.act_state = ActState{y, static_cast<int>(rows), width, t};
}

void rope(Queue s, RopeStyle style, const RopeTarget* targets, int n_targets, int n, int head_dim, int pairs,
          const float* cs, const float* sn) {
  if (n <= 0 || pairs <= 0 || n_targets <= 0) return;
  if (n_targets > 2) throw Error(cat("CUDA rope: ", n_targets, " targets (at most 2)"));
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(n_targets));
  TOVA_LAUNCH(rope_kernel, grid, 256, s)(style == RopeStyle::NeoX, targets[0], targets[n_targets - 1], head_dim, pairs,
                                         cs, sn);
  check_launch(s, "rope");
}

void act_mul(Queue s, FfnActivation act, float* gate, const float* up, int64_t count) {
  if (count <= 0) return;
  TOVA_LAUNCH(act_mul_kernel, grid_for(count, 256), 256, s)(act == FfnActivation::GeluTanh, gate, up, count);
  check_launch(s, "act_mul");
}

void add(Queue s, float* x, const float* y, int64_t count) {
  if (count <= 0) return;
  TOVA_LAUNCH(add_kernel, grid_for(count, 256), 256, s)(x, y, count);
  check_launch(s, "add");
}

void tail_apart(Queue s, const Tail& t) {
  if (t.kind == Tail::None || (t.kind != Tail::Store && t.rows <= 0)) return;
  if (t.kind == Tail::Quant) return quantize_rows(s, t.x, t.rows, t.q, t.quant_block);
  if (t.kind == Tail::Store) return write_kv(s, t.kv, t.writes, t.n_writes, t.n_head_kv, t.head_dim, t.rope);
  launch_norm(s, t.x, t.a, t.w, t.y, t.rows, t.width, eps_of(t), t.q, t.quant_block, "rms_norm");
}

Tail norm_tail(unsigned* counter, float* x, const float* a, const float* w, float* y, int rows, int64_t width,
               float eps) {
  Tail t;
  t.counter = counter;
  t.kind = Tail::Norm;
  t.x = x;
  t.a = a;
  t.w = w;
  t.y = y;
  t.rows = rows;
  t.width = width;
  std::memcpy(&t.eps_bits, &eps, sizeof eps);
  return t;
}

Tail quant_tail(unsigned* counter, const float* x, int rows, int64_t cols, ActType type, const MatConfig& cfg) {
  Tail t;
  t.counter = counter;
  t.kind = Tail::Quant;
  t.x = const_cast<float*>(x);  // read only
  t.rows = rows;
  t.width = cols;
  quantize_output(t, type, cfg);
  return t;
}

Tail store_tail(unsigned* counter, const KvFormat& f, const KvWrite* writes, int n, int n_head_kv, int head_dim,
                const WriteRope& rope) {
  check_write_kv(f, head_dim);
  Tail t;
  t.counter = counter;
  t.kind = Tail::Store;
  t.kv = f;
  t.writes = writes;
  t.n_writes = n;
  t.n_head_kv = n_head_kv;
  t.head_dim = head_dim;
  t.rope = rope;
  return t;
}

void quantize_output(Tail& t, ActType type, const MatConfig& cfg) {
  if (!cfg.act) throw Error("CUDA tail: no 8-bit buffer");
  t.q = act_rows(type, t.rows, t.width, cfg.act, cfg.act_bytes);
  t.quant_block = act_block(type);
}

}  // namespace cuda
}  // namespace tova
