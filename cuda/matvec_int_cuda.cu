// The CUDA matrix product of the CPU backend's default path: input rows quantized to the weight
// type's vec_dot_type (act_quant_cuda.cu), integer products of 4 bytes at a time (__dp4a), each
// weight block's float step as the CPU takes it (int_dot.cuh). Launched as the float kernel of
// matvec_cuda.cu is: one warp per output row, or 2 or 4 when the product has too few rows to
// fill the device; each lane one task (32 weights) of a block at a time; the tasks of a 256-weight
// block (8 lanes of a warp) add their integer sums by shuffles before the block's float step;
// a chunk of weights is unpacked once for up to kRows input rows.
#include "cuda_check.h"
#include "int_dot.cuh"
#include "launch.cuh"
#include "matvec_cuda.h"
#include "matvec_rows.cuh"
#include "tail.cuh"

namespace tova {
namespace cuda {

namespace {

constexpr int kRows = kMvRows;

// The integer sums of the kTasks lanes of a block (aligned groups of lanes), in each of them.
template <int kTasks>
__device__ __forceinline__ IntPart group_sum(IntPart p) {
#pragma unroll
  for (int o = 1; o < kTasks; o *= 2) {
    p.a += __shfl_xor_sync(0xffffffffu, p.a, o);
    p.b += __shfl_xor_sync(0xffffffffu, p.b, o);
  }
  return p;
}

// As matvec_kernel (matvec_cuda.cu): glu 0 the targets' rows, glu 1 / 2 act(gate) * up.
// kTail: as matvec_kernel's.
template <class Id, bool kTail>
__global__ void matvec_int_kernel(const MatTargets targets, const ActRows a, int n, int glu, int wpr, const Tail tail) {
  const MvPlace pl = mv_place(targets, wpr);
  const int64_t blocks = a.cols / Id::kBlock, tasks = blocks * Id::kTasks;
  mv_rows(targets, n, glu, wpr, pl, [&](const MatTarget&, const uint8_t* wr, int i0, int m, float(&acc)[kRows]) {
    // t0 is the same for the whole warp (the group sums' shuffles need every lane); a block's
    // kTasks lanes are all valid or all not (tasks is a multiple of kTasks).
    for (int64_t t0 = pl.share * kWarp; pl.live && t0 < tasks; t0 += wpr * kWarp) {
      const int64_t t = t0 + pl.lane;
      const bool valid = t < tasks;
      const int64_t b = valid ? t / Id::kTasks : 0;
      const int task = static_cast<int>(t % Id::kTasks);
      IntW w = {};
      if (valid) Id::load(wr + b * Id::kBytes, task, w);
#pragma unroll
      for (int k = 0; k < kRows; ++k) {
        if (k >= m) break;  // the same for the whole warp
        const int64_t i = i0 + k;
        ActBlock ab{0.0f, 0.0f, nullptr};
        IntPart p{0, 0};
        if (valid) {
          const int64_t at = i * blocks + b;
          ab = ActBlock{a.d[at], Id::kAct == ActType::Q8_1 ? a.s[at] : 0.0f,
                        a.bsum + i * (a.cols / 16) + b * (Id::kBlock / 16)};
          // The task's 32 quants: 16-byte aligned (rows of whole blocks from an aligned base).
          const int4* xv = reinterpret_cast<const int4*>(a.q + i * a.cols + b * Id::kBlock + 32 * task);
          const int4 x0 = xv[0], x1 = xv[1];
          const int xq[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
          p = Id::part(w, xq, ab, task);
        }
        if (Id::kTasks > 1) p = group_sum<Id::kTasks>(p);
        if (valid && task == 0) acc[k] += Id::finish(w, p, ab);
      }
    }
  });
  if (kTail) run_tail(tail);
}

template <class Id>
void launch(Queue s, const MatTargets& targets, const float* x, int n, int64_t cols, int glu,
            const MatConfig& cfg, const Tail& tail) {
  if (cols % Id::kBlock != 0) throw Error(cat("CUDA integer matvec: ", cols, " columns are not whole blocks"));
  ActState* st = cfg.act_state;
  const bool there = st && st->x == x && st->n == n && st->cols == cols && st->type == Id::kAct;
  const ActRows a = there ? act_rows(Id::kAct, n, cols, cfg.act, cfg.act_bytes)
                          : quantize_act(s, Id::kAct, x, n, cols, cfg.act, cfg.act_bytes);
  if (st) *st = ActState{x, n, cols, Id::kAct};
  const MvShape shape = mv_shape(targets, glu, cols / Id::kBlock * Id::kTasks, cfg.sm_count);
  auto* kernel = tail.kind != Tail::None ? matvec_int_kernel<Id, true> : matvec_int_kernel<Id, false>;
  TOVA_LAUNCH(kernel, shape.grid, kMvWarps * kWarp, s)(targets, a, n, glu, shape.wpr, tail);
  check_launch(s, "integer matvec");
}

}  // namespace

bool matvec_int_supports(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q6_K: return true;
    default: return false;
  }
}

ActType matvec_int_act(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: return IdQ4_0::kAct;
    case GgmlType::Q4_1: return IdQ4_1::kAct;
    case GgmlType::Q5_0: return IdQ5_0::kAct;
    case GgmlType::Q8_0: return IdQ8_0::kAct;
    case GgmlType::Q4_K: return IdQ4_K::kAct;
    case GgmlType::Q6_K: return IdQ6_K::kAct;
    default: throw Error(cat("CUDA integer matvec: no 8-bit product for type ", type_traits(t).name));
  }
}

bool matvec_int(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n, int glu,
                const MatConfig& cfg, const Tail& tail) {
  if (!matvec_int_supports(t) || !cfg.act) return false;
  // 2-byte loads of the blocks (Q4_K: 16-byte loads of its quants)
  const size_t align = t == GgmlType::Q4_K ? 16 : 2;
  for (int j = 0; j < targets.n; ++j)
    if (reinterpret_cast<uintptr_t>(targets.t[j].w) % align != 0 || targets.t[j].row_bytes % align != 0) return false;
  if (n <= 0 || targets.n <= 0 || targets.max_rows <= 0) {
    tail_apart(s, tail);  // nothing to launch it in
    return true;
  }
  switch (t) {
    case GgmlType::Q4_0: launch<IdQ4_0>(s, targets, x, n, cols, glu, cfg, tail); break;
    case GgmlType::Q4_1: launch<IdQ4_1>(s, targets, x, n, cols, glu, cfg, tail); break;
    case GgmlType::Q5_0: launch<IdQ5_0>(s, targets, x, n, cols, glu, cfg, tail); break;
    case GgmlType::Q8_0: launch<IdQ8_0>(s, targets, x, n, cols, glu, cfg, tail); break;
    case GgmlType::Q4_K: launch<IdQ4_K>(s, targets, x, n, cols, glu, cfg, tail); break;
    case GgmlType::Q6_K: launch<IdQ6_K>(s, targets, x, n, cols, glu, cfg, tail); break;
    default: return false;
  }
  return true;
}

}  // namespace cuda
}  // namespace tova
