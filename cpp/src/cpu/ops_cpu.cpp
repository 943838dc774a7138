#include "ops_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "kernels_cpu.h"

namespace tova {

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  if (w) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale;
  }
}

void Matmul::run(ThreadPool& pool, const float* x, int64_t n, const MatmulJob* jobs, int n_jobs) {
  TOVA_ASSERT(n_jobs >= 1 && n_jobs <= 4);
  const int64_t cols = jobs[0].w->cols;
  // Tasks are blocks of rows across all jobs; each block runs over every input row so the
  // weight rows stay in cache. Blocks are contiguous runs of rows, about kTasksPerThread per
  // thread in all: long enough that each core streams its rows in order (the hardware
  // prefetcher's case) and claims few tasks from the shared counter, enough of them that a
  // core slowed by another process hands its share to the others. starts[j]: the first task
  // of job j. With several input rows the block's weights are read once per group of rows, so
  // a block is also kept small enough to stay in a core's L2 cache (kBlockBytes).
  constexpr int64_t kTasksPerThread = 4;
  constexpr size_t kBlockBytes = 256 * 1024;
  int64_t total_rows = 0;
  size_t widest = 1;
  for (int j = 0; j < n_jobs; ++j) {
    total_rows += jobs[j].w->rows;
    widest = std::max(widest, jobs[j].w->row_bytes);
  }
  const int64_t want = std::max<int64_t>(1, kTasksPerThread * pool.size());
  int64_t rows_per_task = total_rows / want;
  if (n > 1) rows_per_task = std::min<int64_t>(rows_per_task, static_cast<int64_t>(kBlockBytes / widest));
  const int64_t kBlock = std::max<int64_t>(16, (rows_per_task + 15) / 16 * 16);
  int64_t starts[5] = {0};
  for (int j = 0; j < n_jobs; ++j) starts[j + 1] = starts[j] + (jobs[j].w->rows + kBlock - 1) / kBlock;
  auto job_of = [&](int64_t task, int64_t& r0, int64_t& r1) {
    int j = 0;
    while (task >= starts[j + 1]) ++j;
    r0 = (task - starts[j]) * kBlock;
    r1 = std::min(r0 + kBlock, jobs[j].w->rows);
    return j;
  };
  if (float_activations_) {
    // A quantized weight row is decoded to float32 once, into this thread's row of deq_, and
    // multiplied by every input row with the float dot product (each output computed the same
    // way whatever n is: a prompt's rows equal the decode steps'). Float weights (F32, F16,
    // BF16 ...), and the types this tier has a SIMD float-activation kernel for (Q4_0, Q8_0 on
    // x86), take that kernel for every input row instead.
    const size_t need = static_cast<size_t>(pool.size()) * static_cast<size_t>(cols);
    if (deq_.size() < need) deq_.resize(need);
    pool.run(starts[n_jobs], [&](int64_t task, int thread) {
      int64_t r0, r1;
      const int j = job_of(task, r0, r1);
      const Matrix& w = *jobs[j].w;
      const CpuKernels& k = cpu_kernels(w.type);
      float* y = jobs[j].y;
      const CpuKernels& portable = tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(w.type));
      if (!w.traits->is_quantized || k.vec_dot_f32 != portable.vec_dot_f32) {
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = r0; r < r1; ++r) y[i * w.rows + r] = k.vec_dot_f32(cols, w.row(r), x + i * cols);
        return;
      }
      float* row = deq_.data() + static_cast<size_t>(thread) * static_cast<size_t>(cols);
      for (int64_t r = r0; r < r1; ++r) {
        k.dequantize(w.row(r), row, cols);
        for (int64_t i = 0; i < n; ++i) y[i * w.rows + r] = dot_f32(row, x + i * cols, cols);
      }
    });
    return;
  }
  // Quantize the activations once per distinct vec_dot_type.
  GgmlType vt[3];
  int n_vt = 0;
  int which[4];
  for (int j = 0; j < n_jobs; ++j) {
    TOVA_ASSERT(jobs[j].w->cols == cols);
    GgmlType t = jobs[j].w->traits->vec_dot_type;
    int k = 0;
    while (k < n_vt && vt[k] != t) ++k;
    if (k == n_vt) {
      TOVA_ASSERT(n_vt < 3);
      vt[n_vt++] = t;
    }
    which[j] = k;
  }
  size_t xrow[3];
  for (int k = 0; k < n_vt; ++k) {
    const QuantizeFn quantize = cpu_kernels(vt[k]).quantize;
    xrow[k] = row_bytes(vt[k], cols);
    size_t need = xrow[k] * static_cast<size_t>(n);
    if (xq_[k].size() < need) xq_[k].resize(need);
    uint8_t* dst = xq_[k].data();
    if (vt[k] == GgmlType::F32) {
      std::memcpy(dst, x, need);
    } else {
      pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) quantize(x + i * cols, dst + i * xrow[k], cols);
      });
    }
  }
  pool.run(starts[n_jobs], [&](int64_t task, int) {
    int64_t r0, r1;
    const int j = job_of(task, r0, r1);
    const Matrix& w = *jobs[j].w;
    // All input rows against the block's weight rows: the kernel tiles them (each weight block
    // decoded once for several input rows), the block of weights staying in this core's cache.
    cpu_kernels(w.type).gemm(cols, w.row(r0), w.row_bytes, r1 - r0, xq_[which[j]].data(), xrow[which[j]], n,
                             jobs[j].y + r0, static_cast<size_t>(w.rows));
  });
}

}  // namespace tova
