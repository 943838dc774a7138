// Device memory and pinned staging of the CUDA backend (host code of cuda/ only). Both take the
// backend's Stream where they copy or must wait: a wait first launches what a recorded step
// recorded (stream.h), and uploads are issued, or recorded, on that stream.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include "cuda_check.h"
#include "stream.h"

namespace tova {
namespace cuda {

// Waits for everything that may read memory about to be freed: the stream's work (recorded work
// launched first), or the legacy stream's where there is no stream (kernel checks issue there).
// Never the whole device: a device-wide wait has been seen to break another thread's capture.
inline void wait_for(Stream* s, const char* what) {
  if (s)
    s->sync(what);
  else
    check(cudaStreamSynchronize(nullptr), what);
}

// A host range of an upload (upload_parts, Staging::put: ranges laid end to end).
struct Part {
  const void* p;
  size_t bytes;
};

class DeviceBuffer;

// Pinned host memory for asynchronous uploads (and copies back) on one stream, handed out in
// order. A piece stays untouched until the device has run the copy that reads it: the arena
// starts over only at a point where the stream is idle (reset(), after a wait) or after waiting.
// With a device twin (uploads), put() lands host bytes at the same offset of device memory of
// the arena's size: in a recorded step by one copy of everything the step put (the recording's
// head, recorder.h) instead of a copy each.
class Staging {
 public:
  explicit Staging(Stream* stream = nullptr, bool twin = false);
  ~Staging();
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  Stream* stream() const { return stream_; }
  Queue op() const { return stream_ ? stream_->op() : Queue(nullptr); }
  void* take(size_t bytes, const char* what) {
    bytes = (bytes + 255) & ~static_cast<size_t>(255);
    if (used_ + bytes > cap_) {
      if (before_restart_) before_restart_();  // what waits to be issued with pieces of the arena
      wait_for(stream_, what);  // every copy reading the arena has run
      // Grow when one piece does not fit, or when a step's uploads filled it (else every later
      // layer of such steps would wait for the device again).
      const size_t n = 2 * cap_ > (1u << 20) ? 2 * cap_ : (1u << 20);
      used_ = 0;
      ++generation_;
      grow(n < bytes ? bytes : n, what);
    }
    void* r = static_cast<uint8_t*>(p_) + used_;
    used_ += bytes;
    return r;
  }
  void reset() {  // only when the stream has finished every queued copy
    used_ = 0;
    ++generation_;
  }
  // Changes whenever the arena starts over: what put() returned before is no longer there.
  uint64_t generation() const { return generation_; }
  // Called when a take() must start the arena over (before it waits for the device and grows):
  // an owner holding operations not issued yet that read pieces of the arena issues them there.
  // It must not take from the arena itself.
  void on_restart(std::function<void()> f) { before_restart_ = std::move(f); }
  // Host bytes to the twin (a Staging made with one): see the class. Returns their device address.
  const void* put(std::initializer_list<Part> parts, const char* what);
  // Whether take(bytes) would be served without waiting for the device (or growing).
  bool fits(size_t bytes) const { return used_ + ((bytes + 255) & ~static_cast<size_t>(255)) <= cap_; }
  size_t used() const { return used_; }
  // At least `bytes` of capacity; only when nothing of the arena is in use (after reset()).
  void grow(size_t bytes, const char* what);

 private:
  Stream* stream_ = nullptr;
  void* p_ = nullptr;
  size_t cap_ = 0, used_ = 0;
  uint64_t generation_ = 0;
  std::unique_ptr<DeviceBuffer> twin_;  // null: no twin
  std::function<void()> before_restart_;
};

// Device memory owned by one object; grows (never shrinks) on demand.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    // cudaFree waits for the device's work first (it synchronizes implicitly): kernels queued
    // earlier may still use the memory. (No device-wide wait of our own: see wait_for.)
    if (p_) cudaFree(p_);
  }
  // At least `bytes`; growing waits for `stream` first (its kernels may still read the old memory).
  void* reserve(size_t bytes, const char* what, Stream* stream = nullptr) {
    shadow_.clear();  // the caller is about to write: the device bytes are no longer known
    if (bytes <= size_) return p_;
    if (stream) stream->submit();  // what the step recorded goes first (it may read this memory)
    if (p_) {
      wait_for(stream, what);
      check(cudaFree(p_), what);
    }
    p_ = nullptr;
    // Half again as much as asked while the buffer is still growing (attention scratch grows with
    // the cache until it is full): fewer waits and reallocations, and fewer recorded steps cut
    // in two; at most 64 MiB more than asked.
    const size_t want = size_ == 0 ? bytes : std::max(bytes, std::min(size_ + size_ / 2, bytes + (size_t{64} << 20)));
    size_ = 0;
    check(cudaMalloc(&p_, want), what);
    size_ = want;
    return p_;
  }
  // Copies host bytes in (growing first) and waits for the copy; returns the device pointer.
  void* upload_now(const void* host, size_t bytes, const char* what, Stream* stream = nullptr) {
    void* d = reserve(bytes, what, stream);
    if (!bytes) return d;
    if (stream) {
      check(cudaMemcpyAsync(d, host, bytes, cudaMemcpyHostToDevice, stream->eager()), what);
      stream->sync(what);
    } else {
      check(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), what);
    }
    return d;
  }
  // Copies host bytes in, in stream order, through pinned staging (the host does not wait for
  // the device); the host bytes may change as soon as it returns.
  void* upload(const void* host, size_t bytes, Staging& staging, const char* what) {
    return upload_parts({{host, bytes}}, staging, what);
  }
  // As upload, for host ranges laid end to end in one copy (each at the sum of the sizes before it).
  void* upload_parts(std::initializer_list<Part> parts, Staging& staging, const char* what) {
    size_t bytes = 0;
    for (const Part& p : parts) bytes += p.bytes;
    void* d = reserve(bytes, what, staging.stream());
    if (bytes) {
      auto* s = static_cast<uint8_t*>(staging.take(bytes, what));
      size_t at = 0;
      for (const Part& p : parts) {
        if (p.bytes) std::memcpy(s + at, p.p, p.bytes);
        at += p.bytes;
      }
      copy_async(staging.op(), d, s, bytes, cudaMemcpyHostToDevice, what);
    }
    return d;
  }
  // As upload, but skips the copy when the bytes are the ones uploaded last time: a step's
  // positions and slots are the same for every layer. (Not when recorded work was dropped since:
  // that upload may never have run.)
  void* upload_if_changed(const void* host, size_t bytes, Staging& staging, const char* what) {
    const uint64_t dropped = staging.stream() ? staging.stream()->dropped() : 0;
    if (bytes == shadow_.size() && p_ && dropped == shadow_dropped_ && std::memcmp(shadow_.data(), host, bytes) == 0)
      return p_;
    void* d = upload(host, bytes, staging, what);
    shadow_.assign(static_cast<const uint8_t*>(host), static_cast<const uint8_t*>(host) + bytes);
    shadow_dropped_ = dropped;
    return d;
  }
  void* get() const { return p_; }
  size_t size() const { return size_; }

 private:
  void* p_ = nullptr;
  size_t size_ = 0;
  std::vector<uint8_t> shadow_;  // what upload_if_changed copied last
  uint64_t shadow_dropped_ = 0;  // Stream::dropped() then
};

inline Staging::Staging(Stream* stream, bool twin) : stream_(stream) {
  if (twin) twin_.reset(new DeviceBuffer);
}

inline Staging::~Staging() {
  if (p_) cudaFreeHost(p_);
}

inline void Staging::grow(size_t bytes, const char* what) {
  if (bytes <= cap_) return;
  if (stream_) stream_->submit();  // what the step recorded goes first (it may read the arena)
  void* old = p_;
  p_ = nullptr;
  cap_ = 0;
  ++generation_;
  if (old) check(cudaFreeHost(old), what);
  check(cudaMallocHost(&p_, bytes), what);
  if (twin_) twin_->reserve(bytes, what, stream_);
  cap_ = bytes;
}

inline const void* Staging::put(std::initializer_list<Part> parts, const char* what) {
  if (!twin_) throw Error(cat("CUDA backend: ", what, ": an upload through a staging arena without a device twin"));
  size_t bytes = 0;
  for (const Part& p : parts) bytes += p.bytes;
  if (!bytes) return nullptr;
  auto* s = static_cast<uint8_t*>(take(bytes, what));
  size_t at = 0;
  for (const Part& p : parts) {
    if (p.bytes) std::memcpy(s + at, p.p, p.bytes);
    at += p.bytes;
  }
  auto* d = static_cast<uint8_t*>(twin_->get()) + (s - static_cast<uint8_t*>(p_));
  const Queue q = op();
  if (q.rec)
    q.rec->head(d, s, bytes);
  else
    copy_async(q, d, s, bytes, cudaMemcpyHostToDevice, what);
  return d;
}

}  // namespace cuda
}  // namespace tova
