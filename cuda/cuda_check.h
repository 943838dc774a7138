// CUDA runtime errors as tova errors naming the operation (host code of cuda/ only).
#pragma once

#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "common.h"

// Every upload, kernel and copy of the backend relies on the legacy default stream's ordering
// (an engine's steps may run on different host threads).
#ifdef CUDA_API_PER_THREAD_DEFAULT_STREAM
#error "cuda/ relies on the legacy default stream: do not build it with --default-stream per-thread"
#endif

namespace tova {
namespace cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cat("CUDA backend: ", what, ": ", cudaGetErrorString(e)));
}

// The last kernel launch's error (launch configuration, or a fault of an earlier kernel).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Pinned host memory for asynchronous uploads (and copies back), handed out in order. A piece stays untouched until
// the device has run the copy that reads it: the arena starts over only at a point where the
// device is idle (reset(), after a synchronous copy back) or after waiting for it.
class Staging {
 public:
  Staging() = default;
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {
    if (p_) cudaFreeHost(p_);
  }
  void* take(size_t bytes, const char* what) {
    bytes = (bytes + 255) & ~static_cast<size_t>(255);
    if (used_ + bytes > cap_) {
      check(cudaDeviceSynchronize(), what);  // every copy reading the arena has run
      // Grow when one piece does not fit, or when a step's uploads filled it (else every later
      // layer of such steps would wait for the device again).
      const size_t n = 2 * cap_ > (1u << 20) ? 2 * cap_ : (1u << 20);
      used_ = 0;
      grow(n < bytes ? bytes : n, what);
    }
    void* r = static_cast<uint8_t*>(p_) + used_;
    used_ += bytes;
    return r;
  }
  void reset() { used_ = 0; }  // only when the device has finished every queued copy
  // Whether take(bytes) would be served without waiting for the device (or growing).
  bool fits(size_t bytes) const { return used_ + ((bytes + 255) & ~static_cast<size_t>(255)) <= cap_; }
  size_t used() const { return used_; }
  // At least `bytes` of capacity; only when nothing of the arena is in use (after reset()).
  void grow(size_t bytes, const char* what) {
    if (bytes <= cap_) return;
    void* old = p_;
    p_ = nullptr;
    cap_ = 0;
    if (old) check(cudaFreeHost(old), what);
    check(cudaMallocHost(&p_, bytes), what);
    cap_ = bytes;
  }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0, used_ = 0;
};

// Device memory owned by one object; grows (never shrinks) on demand.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (!p_) return;
    cudaDeviceSynchronize();  // kernels queued earlier may still use it
    cudaFree(p_);
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
  // Copies host bytes in, synchronously (growing first); returns the device pointer.
  void* upload_now(const void* host, size_t bytes, const char* what) {
    void* d = reserve(bytes, what);
    if (bytes) check(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), what);
    return d;
  }
  // Copies host bytes in, in stream order, through pinned staging (the host does not wait for
  // the device); the host bytes may change as soon as it returns.
  void* upload(const void* host, size_t bytes, Staging& staging, const char* what) {
    return upload_two(host, bytes, nullptr, 0, staging, what);
  }
  // As upload, for two host ranges laid end to end in one copy (b starts at offset a_bytes).
  void* upload_two(const void* a, size_t a_bytes, const void* b, size_t b_bytes, Staging& staging,
                   const char* what) {
    const size_t bytes = a_bytes + b_bytes;
    void* d = reserve(bytes, what);
    if (bytes) {
      auto* s = static_cast<uint8_t*>(staging.take(bytes, what));
      if (a_bytes) std::memcpy(s, a, a_bytes);
      if (b_bytes) std::memcpy(s + a_bytes, b, b_bytes);
      check(cudaMemcpyAsync(d, s, bytes, cudaMemcpyHostToDevice, 0), what);
    }
    return d;
  }
  // As upload, but skips the copy when the bytes are the ones uploaded last time: a step's
  // positions and slots are the same for every layer.
  void* upload_if_changed(const void* host, size_t bytes, Staging& staging, const char* what) {
    if (bytes == shadow_.size() && p_ && std::memcmp(shadow_.data(), host, bytes) == 0) return p_;
    void* d = upload(host, bytes, staging, what);
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
