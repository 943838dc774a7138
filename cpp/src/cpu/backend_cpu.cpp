#include "backend_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common.h"
#include "kernels_cpu.h"
#include "kv_cpu.h"

namespace tova {

namespace {

// Element-wise and per-row work is split over the pool only when there is enough of it to pay
// for waking the workers (a decode step's single row runs on the caller).
constexpr int64_t kMinParallelElems = 16384;

int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(std::min(n, 16u));
}

}  // namespace

CpuBackend::CpuBackend(const Model& model, int max_rows, int n_threads, bool float_activations)
    : m_(model),
      max_rows_(max_rows),
      pool_(n_threads > 0 ? n_threads : default_threads()),
      mm_(float_activations) {
  const char* defer = std::getenv("TOVA_DEFER_POLICY_CALLS");
  defer_ = defer && std::strcmp(defer, "1") == 0;
  const size_t U = static_cast<size_t>(max_rows);
  for (int b = 0; b < static_cast<int>(Buf::kCount); ++b)
    bufs_[b].assign(U * buf_width(m_.hp(), static_cast<Buf>(b)), 0.0f);
}

std::unique_ptr<KvPayload> CpuBackend::new_kv(const KvLayout& layout) {
  return std::make_unique<CpuKv>(layout);
}

void CpuBackend::copy_kv(KvPayload& dst, const KvPayload& src) {
  static_cast<CpuKv&>(dst) = static_cast<const CpuKv&>(src);
}

template <class F>
void CpuBackend::rows(int64_t n_rows, int64_t width, F&& f) {
  if (n_rows * width < kMinParallelElems || n_rows < 2) {
    for (int64_t i = 0; i < n_rows; ++i) f(i);
    return;
  }
  const int64_t min_rows = std::max<int64_t>(1, kMinParallelElems / 4 / std::max<int64_t>(1, width));
  pool_.parallel_for(n_rows, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) f(i);
  }, min_rows);
}

void CpuBackend::embed(const int32_t* tokens, int n, float scale, float* x) {
  const int64_t E = m_.hp().n_embd;
  const DequantizeFn dequantize = cpu_kernels(m_.tok_embd.type).dequantize;
  rows(n, E, [&](int64_t i) {
    float* xi = x + i * E;
    dequantize(m_.tok_embd.row(tokens[i]), xi, E);
    if (scale != 1.0f)
      for (int64_t j = 0; j < E; ++j) xi[j] *= scale;
  });
}

void CpuBackend::rms_norm(const float* x, const Vector& w, float* y, int64_t n_rows, int64_t width, float eps) {
  const float* wp = w.empty() ? nullptr : w.data();
  rows(n_rows, width, [&](int64_t i) { tova::rms_norm(x + i * width, wp, y + i * width, width, eps); });
}

void CpuBackend::matmul(const float* x, int n, const MatJob* jobs, int n_jobs) {
  MatmulJob j[4] = {};
  TOVA_ASSERT(n_jobs <= 4);
  for (int k = 0; k < n_jobs; ++k) j[k] = {jobs[k].w, jobs[k].y};
  mm_.run(pool_, x, n, j, n_jobs);
  for (int k = 0; k < n_jobs; ++k)
    if (jobs[k].bias && !jobs[k].bias->empty()) add_bias(jobs[k].y, *jobs[k].bias, n);
}

void CpuBackend::matmul_to_host(const Matrix& w, const float* x, int n, float* host_y) {
  mm_.run(pool_, w, x, n, host_y);
}

void CpuBackend::add_bias(float* y, const Vector& b, int n) {
  const size_t W = b.size();
  rows(n, static_cast<int64_t>(W), [&](int64_t i) {
    for (size_t j = 0; j < W; ++j) y[static_cast<size_t>(i) * W + j] += b[j];
  });
}

void CpuBackend::rope(const Rope& r, float* x, int n, int n_heads, int head_dim, const int64_t* positions) {
  const size_t stride = static_cast<size_t>(n_heads) * head_dim;
  rows(n, static_cast<int64_t>(stride), [&](int64_t i) { r.apply(x + i * stride, n_heads, head_dim, positions[i]); });
}

// Element-wise work in 4096-element runs (each run computes exactly what the whole loop would).
void CpuBackend::act_mul(FfnActivation act, float* gate, const float* up, int64_t count) {
  constexpr int64_t kRun = 4096;
  rows((count + kRun - 1) / kRun, kRun, [&](int64_t r) {
    const int64_t b = r * kRun, n = std::min(kRun, count - b);
    if (act == FfnActivation::SiLU) silu_mul(gate + b, up + b, n);
    else gelu_tanh_mul(gate + b, up + b, n);
  });
}

void CpuBackend::add(float* x, const float* y, int64_t count) {
  constexpr int64_t kRun = 4096;
  rows((count + kRun - 1) / kRun, kRun, [&](int64_t r) {
    const int64_t b = r * kRun, e = std::min(count, b + kRun);
    for (int64_t j = b; j < e; ++j) x[j] += y[j];
  });
}

void CpuBackend::demote_kv(KvPayload& kv, int layer, int src, int dst) {
  static_cast<CpuKv&>(kv).demote(layer, src, dst);
}

void CpuBackend::write_kv(KvPayload& payload, int layer, const int32_t* slots, int n, const float* k,
                          const float* v) {
  CpuKv& kv = static_cast<CpuKv&>(payload);
  const int d = kv.layout().head_dim, hkv = kv.layout().n_head_kv;
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < hkv; ++h) {
      const size_t off = (static_cast<size_t>(i) * hkv + h) * d;
      kv.store_k(kv.k_row(layer, h, slots[i]), k + off);
      kv.store_v(kv.v_row(layer, h, slots[i]), v + off);
    }
}

void CpuBackend::attend(const AttnShape& shape, const AttnRow* rows, int n_rows) {
  attention_.run(pool_, shape, rows, n_rows);
}

}  // namespace tova
