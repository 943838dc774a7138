// Each CUDA kernel against its CPU twin on random inputs (tests/test_cuda.py calls it through
// tova._core._cuda_kernel_check on a GPU machine, tests/cuda_sim.sh on the simulator): the
// parts in kernel_check_ops.cu, kernel_check_policy.cu and kernel_check_kv.cu, and the helpers
// they share.
#include <cmath>
#include <cstring>

#include "backend_cuda.h"
#include "cpu/kernels_cpu.h"
#include "kernel_check.h"

namespace tova {
namespace kcheck {

// Random blocks whose values are finite (a block with a NaN / inf scale is drawn again).
std::vector<uint8_t> random_rows(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng, std::vector<float>& deq) {
  const TypeTraits& tt = type_traits(t);
  const size_t rb = row_bytes(t, cols), bb = tt.type_size;
  std::vector<uint8_t> raw(rb * static_cast<size_t>(rows));
  deq.assign(static_cast<size_t>(rows * cols), 0.0f);
  std::vector<float> blk(static_cast<size_t>(tt.block_size));
  for (size_t b = 0; b < raw.size() / bb; ++b) {
    for (;;) {
      for (size_t i = 0; i < bb; ++i) raw[b * bb + i] = static_cast<uint8_t>(rng());
      if (t == GgmlType::F32)  // moderate floats, not random bit patterns
        for (size_t i = 0; i < bb; i += 4) {
          const float f = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
          std::memcpy(&raw[b * bb + i], &f, 4);
        }
      dequantize_row(t, raw.data() + b * bb, blk.data(), tt.block_size);
      bool ok = true;
      for (float f : blk) ok &= std::isfinite(f) && std::fabs(f) < 1e6f;
      if (ok) break;
    }
    std::memcpy(deq.data() + b * static_cast<size_t>(tt.block_size), blk.data(), blk.size() * sizeof(float));
  }
  return raw;
}

std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo, float hi) {
  std::vector<float> v(n);
  std::uniform_real_distribution<float> u(lo, hi);
  for (float& f : v) f = u(rng);
  return v;
}

}  // namespace kcheck

std::vector<std::string> cuda_kernel_check() {
  using namespace kcheck;
  if (cuda_devices() == 0) throw Error("cuda kernel check: no usable CUDA device");
  check(cudaSetDevice(0), "cudaSetDevice");
  std::vector<std::string> bad;
  std::mt19937 rng(20261202u);
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                     GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                     GgmlType::Q6_K})
    check_matmul(t, rng, bad);
  for (GgmlType t : {GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K,
                     GgmlType::Q6_K})
    check_glu(t, rng, bad);
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K})
    check_matmul_int(t, rng, bad);
  check_elementwise(rng, bad);
  check_norm_act(rng, bad);
  check_tails(rng, bad);
  check_store_tail(rng, bad);
  check_policy_steps(rng, bad);
  check_kv_writes(rng, bad);
  check_kv_demote(rng, bad);
  check_rank_keys(rng, bad);
  check_attention(rng, bad);
  check(cudaStreamSynchronize(nullptr), "kernel check");  // the checks issue on the legacy stream
  return bad;
}

}  // namespace tova
