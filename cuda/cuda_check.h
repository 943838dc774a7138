// CUDA runtime errors as tova errors naming the operation (host code of cuda/ only).
#pragma once

#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "common.h"

namespace tova {
namespace cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cat("CUDA backend: ", what, ": ", cudaGetErrorString(e)));
}

// The last kernel launch's error (launch configuration, or a fault of an earlier kernel).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Device memory owned by one object; grows (never shrinks) on demand.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  void* reserve(size_t bytes, const char* what) {
    shadow_.clear();  // the caller is about to write: the device bytes are no longer known
    if (bytes <= size_) return p_;
    // Kernels queued earlier may still read the old memory: wait for them (cudaFree would too,
    // but only by accident of the legacy default stream).
    if (p_) check(cudaDeviceSynchronize(), what);
    if (p_) check(cudaFree(p_), what);
    p_ = nullptr;
    size_ = 0;
    check(cudaMalloc(&p_, bytes), what);
    size_ = bytes;
    return p_;
  }
  // Copies host bytes in (growing first); returns the device pointer.
  void* upload(const void* host, size_t bytes, const char* what) {
    void* d = reserve(bytes, what);
    if (bytes) check(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), what);
    return d;
  }
  // As upload, but skips the copy (and its wait for the device) when the bytes are the ones
  // uploaded last time: a step's positions and slots are the same for every layer.
  void* upload_if_changed(const void* host, size_t bytes, const char* what) {
    if (bytes == shadow_.size() && p_ && std::memcmp(shadow_.data(), host, bytes) == 0) return p_;
    void* d = upload(host, bytes, what);
    shadow_.assign(static_cast<const uint8_t*>(host), static_cast<const uint8_t*>(host) + bytes);
    return d;
  }
  void* get() const { return p_; }
  size_t size() const { return size_; }

 private:
  void* p_ = nullptr;
  size_t size_ = 0;
  std::vector<uint8_t> shadow_;  // what upload_if_changed copied last
};

}  // namespace cuda
}  // namespace tova
