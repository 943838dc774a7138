// Where an operation of the CUDA backend goes (Queue), and a decode step's operations recorded
// (Recorder) so that a step equal to the last one relaunches its CUDA graph without capturing it
// again (host code of cuda/ only).
//
// A captured step costs the host a captured launch per operation and an update of the
// executable graph (stream.h); a model of 28 layers has ~400 of them a token, which at 1000
// tokens/s is most of the millisecond a token has. Once a sequence's cache is full (kv_size
// slots, the fixed memory tova runs in), every decode step issues the same kernels with the same
// arguments: what changes from token to token (the token, its angles, the slot it is written to,
// the slots attended) travels in uploaded bytes, read by the device when it gets there. So each
// operation is first recorded as a key (a kernel: its address, launch shape and argument bytes; a
// copy: its addresses, size and direction) compared with the one at its place in the last
// recording; only a changed operation keeps a closure to issue it. At the step's first host
// wait, an unchanged recording relaunches the executable graph made from it; a changed one is
// issued into a capture and the graph updated, as before.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "cuda_check.h"

namespace tova {
namespace cuda {

class Recorder;

// A stream, and the recorder of the step when the stream's step is recorded (else null: the
// operation is issued now). A bare stream converts to one (kernel checks issue on stream 0).
struct Queue {
  Queue(cudaStream_t s) : stream(s) {}  // NOLINT: implicit on purpose
  Queue(cudaStream_t s, Recorder* r) : stream(s), rec(r) {}
  cudaStream_t stream = nullptr;
  Recorder* rec = nullptr;
};

class Recorder {
 public:
  // An operation issued on a stream: the runtime's answer.
  using Issue = std::function<cudaError_t(cudaStream_t)>;

  void begin() {
    at_ = 0;
    changed_ = false;
    head_ = Head{};
  }
  // Uploads of the step (Staging::put): the host bytes at src go to dst, both ranges growing with
  // each upload (pieces of one arena, in order); issued as one copy before every operation of
  // the recording (each upload's device bytes are its own: no earlier operation reads them).
  void head(void* dst, const void* src, size_t bytes) {
    auto* d = static_cast<uint8_t*>(dst);
    const auto* h = static_cast<const uint8_t*>(src);
    if (!head_.bytes) {
      head_ = Head{d, h, bytes};
      return;
    }
    if (h < head_.src || h - head_.src != d - head_.dst)
      throw Error("CUDA backend: a step's uploads are not pieces of one staging arena in order");
    head_.bytes = std::max(head_.bytes, static_cast<size_t>(h - head_.src) + bytes);
  }
  // The key of the next operation, built by the caller with add() before matches() or put().
  void new_key() { key_.clear(); }
  // Appends a value's bytes to the key: scalars, or structs without padding (padding bytes are
  // not the value's, and would make equal operations look different).
  template <class T>
  void add(const T& v) {
    static_assert(std::is_trivially_copyable<T>::value, "a recorded argument is copied as bytes");
    static_assert(std::is_scalar<T>::value || std::has_unique_object_representations<T>::value,
                  "a recorded argument of struct type has no padding (its bytes are its value)");
    const size_t at = key_.size();
    key_.resize(at + sizeof(T));
    std::memcpy(key_.data() + at, &v, sizeof(T));
  }
  // Whether the key equals the last recording's at this place (then the operation is taken as
  // recorded, its closure kept).
  bool matches() {
    if (at_ >= ops_.size() || ops_[at_].key != key_) return false;
    ++at_;
    return true;
  }
  // The operation at this place changed (or is new): the key and how to issue it.
  void put(Issue issue) {
    if (at_ == ops_.size()) ops_.emplace_back();
    Op& op = ops_[at_++];
    op.key = key_;
    op.issue = std::move(issue);
    op.what = "an operation";
    changed_ = true;
  }
  // Names the operation recorded last, for the error should issuing it fail.
  void name(const char* what) {
    if (at_ > 0) ops_[at_ - 1].what = what;
  }
  // Ends a recording: true when it is the last one unchanged.
  bool end() {
    const bool same = !changed_ && !forgotten_ && at_ == ops_.size() && head_ == last_head_;
    ops_.resize(at_);
    last_head_ = head_;
    forgotten_ = false;
    return same;
  }
  // Issues the recorded operations on s in order (the uploads' copy first); an error names the
  // operation.
  void issue(cudaStream_t s) const {
    if (last_head_.bytes)
      check(cudaMemcpyAsync(last_head_.dst, last_head_.src, last_head_.bytes, cudaMemcpyHostToDevice, s), "uploads");
    for (const Op& op : ops_) check(op.issue(s), op.what);
  }
  // Forgets the recording (it never ran, or not as the graph made from it): the next one is new
  // however it looks.
  void forget() {
    ops_.clear();
    forgotten_ = true;
  }
  // Operations recorded (the uploads' copy counted).
  size_t size() const { return ops_.size() + (last_head_.bytes ? 1 : 0); }

 private:
  struct Op {
    std::vector<uint8_t> key;
    Issue issue;
    const char* what = "an operation";
  };
  struct Head {
    uint8_t* dst = nullptr;
    const uint8_t* src = nullptr;
    size_t bytes = 0;
    bool operator==(const Head& o) const { return dst == o.dst && src == o.src && bytes == o.bytes; }
  };
  std::vector<Op> ops_;
  Head head_, last_head_;  // this recording's uploads, and the last finished recording's
  std::vector<uint8_t> key_;
  size_t at_ = 0;
  bool changed_ = false;
  bool forgotten_ = false;
};

// cudaMemcpyAsync on q: recorded in a recorded step (src or dst is then pinned host memory or
// the device's), issued now otherwise.
inline void copy_async(const Queue& q, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                       const char* what) {
  if (!q.rec) {
    check(cudaMemcpyAsync(dst, src, bytes, kind, q.stream), what);
    return;
  }
  Recorder& r = *q.rec;
  r.new_key();
  r.add(uint8_t{'C'});
  r.add(dst);
  r.add(src);
  r.add(bytes);
  r.add(kind);
  if (!r.matches())
    r.put([dst, src, bytes, kind](cudaStream_t s) { return cudaMemcpyAsync(dst, src, bytes, kind, s); });
  r.name(what);
}

// The last kernel launch's error (launch configuration, or a fault of an earlier kernel); a
// recorded launch is checked when it is issued, under this name.
inline void check_launch(const Queue& q, const char* kernel) {
  if (q.rec)
    q.rec->name(kernel);
  else
    check(cudaGetLastError(), kernel);
}

}  // namespace cuda
}  // namespace tova
