// The CPU backend: activations in host memory, quantized weights used in place from the mapped
// file, one thread pool for every parallel operation.
#pragma once

#include <memory>
#include <vector>

#include "attention_cpu.h"
#include "backend.h"
#include "ops_cpu.h"
#include "thread_pool.h"

namespace tova {

class CpuBackend : public Backend {
 public:
  CpuBackend(const Model& model, int max_rows, int n_threads, bool float_activations);

  const char* name() const override { return "cpu"; }
  int n_threads() const override { return pool_.size(); }
  int max_rows() const override { return max_rows_; }

  std::unique_ptr<KvPayload> new_kv(const KvLayout& layout) override;
  void copy_kv(KvPayload& dst, const KvPayload& src) override;
  void demote_kv(KvPayload& kv, int layer, int src, int dst) override;
  float* buf(Buf b) override { return bufs_[static_cast<size_t>(b)].data(); }

  void embed(const int32_t* tokens, int n, float scale, float* x) override;
  void rms_norm(const float* x, const Vector& w, float* y, int64_t rows, int64_t width, float eps) override;
  void matmul(const float* x, int n, const MatJob* jobs, int n_jobs) override;
  void matmul_to_host(const Matrix& w, const float* x, int n, float* host_y) override;
  void rope(const Rope& r, float* x, int n, int n_heads, int head_dim, const int64_t* positions) override;
  void act_mul(FfnActivation act, float* gate, const float* up, int64_t count) override;
  void add(float* x, const float* y, int64_t count) override;
  void write_kv(KvPayload& kv, int layer, const int32_t* slots, int n, const float* k, const float* v) override;
  void attend(const AttnShape& shape, const AttnRow* rows, int n_rows) override;
  bool defer_policy_calls() const override { return defer_; }
  bool cancels_mid_step() const override { return true; }

 private:
  // f(i) for rows [0, n_rows) of `width` elements: on the caller for small work, else over the pool.
  template <class F>
  void rows(int64_t n_rows, int64_t width, F&& f);
  // y[i] += b for n rows of b.size() (a MatJob's bias)
  void add_bias(float* y, const Vector& b, int n);

  const Model& m_;
  int max_rows_;
  ThreadPool pool_;
  Matmul mm_;
  AttentionCpu attention_;
  std::vector<float> bufs_[static_cast<size_t>(Buf::kCount)];
  bool defer_ = false;  // TOVA_DEFER_POLICY_CALLS=1 (tests)
};

}  // namespace tova
