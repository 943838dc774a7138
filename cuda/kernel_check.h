// The kernel check's shared helpers (kernel_check_cuda.cu) and its parts: the matrix products
// and element-wise kernels (kernel_check_ops.cu), the products' tails (kernel_check_tails.cu),
// the policies' steps (kernel_check_policy.cu), the K/V writes, demotions, rank rotation and the
// attention (kernel_check_kv.cu). Each part
// appends a message to `bad` for each kernel that differs from its CPU twin.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "buffers.h"
#include "cuda_check.h"
#include "ops_cuda.h"
#include "quant.h"

namespace tova {
namespace kcheck {

using cuda::check;
using cuda::DeviceBuffer;
using Bad = std::vector<std::string>;

constexpr int kTiledFrom = 32;  // the backend's default (TOVA_CUDA_TILED_FROM)

template <class T>
T* to_device(DeviceBuffer& b, const std::vector<T>& v) {
  return static_cast<T*>(b.upload_now(v.data(), v.size() * sizeof(T), "kernel check"));
}

template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> v(n);
  check(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), "kernel check");
  return v;
}

// Random blocks of type t whose values are finite (deq: their values).
std::vector<uint8_t> random_rows(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng, std::vector<float>& deq);
std::vector<float> random_floats(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f);

void check_matmul(GgmlType t, std::mt19937& rng, Bad& bad);
void check_glu(GgmlType t, std::mt19937& rng, Bad& bad);
void check_matmul_int(GgmlType t, std::mt19937& rng, Bad& bad);
void check_elementwise(std::mt19937& rng, Bad& bad);
void check_norm_act(std::mt19937& rng, Bad& bad);
void check_tails(std::mt19937& rng, Bad& bad);
void check_store_tail(std::mt19937& rng, Bad& bad);
void check_policy_steps(std::mt19937& rng, Bad& bad);
void check_kv_writes(std::mt19937& rng, Bad& bad);
void check_kv_demote(std::mt19937& rng, Bad& bad);
void check_rank_keys(std::mt19937& rng, Bad& bad);
void check_attention(std::mt19937& rng, Bad& bad);

}  // namespace kcheck
}  // namespace tova
