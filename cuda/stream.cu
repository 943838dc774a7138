#include "stream.h"

#include "cuda_check.h"

namespace tova {
namespace cuda {

namespace {

// Destroys a captured graph when it goes out of scope (the executable graph keeps what it needs).
struct GraphOwner {
  cudaGraph_t g = nullptr;
  ~GraphOwner() {
    if (g) cudaGraphDestroy(g);
  }
};

}  // namespace

Stream::Stream(bool graphs, bool replay) : graphs_(graphs), replay_(replay) {
  check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "stream creation");
}

Stream::~Stream() {
  abandon();
  cudaStreamSynchronize(s_);
  for (const auto& seg : segs_)
    if (seg->exec) cudaGraphExecDestroy(seg->exec);
  cudaStreamDestroy(s_);
}

Queue Stream::op() {
  if (!armed_) return Queue(s_);
  if (segment_ >= segs_.size()) segs_.emplace_back(new Segment);
  Segment& seg = *segs_[segment_];
  if (!recording_) {
    seg.rec.begin();
    recording_ = true;
  }
  return Queue(s_, &seg.rec);
}

void Stream::begin_step(bool capture) {
  submit();
  armed_ = graphs_ && capture;
  segment_ = 0;
}

void Stream::drop(Segment& seg) noexcept {
  seg.rec.forget();
  ++dropped_;
  armed_ = false;
}

bool Stream::capture(Segment& seg) {
  // Thread-local: only this thread's calls that allocate, free or wait would break the capture;
  // other engines on other threads go on. Yet the driver has been seen to invalidate a capture
  // for another thread's call (a device-wide wait, a free): a capture that fails is not an error
  // of the step, whose recording is complete. It is issued directly instead (below).
  if (cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  GraphOwner g;
  bool issued = true;
  try {
    seg.rec.issue(s_);
  } catch (...) {
    issued = false;  // an operation refused: the capture's, or its own (issued directly, it says which)
  }
  const cudaError_t e = cudaStreamEndCapture(s_, &g.g);
  if (!issued || e != cudaSuccess || !g.g) {
    cudaGetLastError();  // not sticky: the next launch's check must not see it
    return false;
  }
  if (seg.exec) {
    cudaGraphExecUpdateResultInfo info;
    if (cudaGraphExecUpdate(seg.exec, g.g, &info) == cudaSuccess) {
      ++stats_.updated;
      return true;
    }
    cudaGetLastError();  // another shape of step: a new executable graph
    cudaGraphExecDestroy(seg.exec);
    seg.exec = nullptr;
  }
  if (cudaGraphInstantiate(&seg.exec, g.g, 0) != cudaSuccess) {
    cudaGetLastError();
    seg.exec = nullptr;
    return false;
  }
  ++stats_.instantiated;
  return true;
}

void Stream::issue_uncaptured(Segment& seg) {
  try {
    seg.rec.issue(s_);
  } catch (...) {
    drop(seg);  // the next step records anew
    throw;
  }
  // It ran, but not as the segment's graph: the next recording is captured (and the graph
  // updated) however alike it looks.
  seg.rec.forget();
  ++stats_.uncaptured;
}

void Stream::submit() {
  if (!recording_) return;
  recording_ = false;
  Segment& seg = *segs_[segment_++];
  const bool same = seg.rec.end();
  if (segment_ >= kMaxSegments) armed_ = false;
  if (same && replay_ && seg.exec) {
    ++stats_.replayed;
  } else if (!capture(seg)) {
    issue_uncaptured(seg);
    return;
  }
  const cudaError_t e = cudaGraphLaunch(seg.exec, s_);
  if (e != cudaSuccess) {
    cudaGetLastError();
    drop(seg);  // the next step captures anew
    check(e, "graph launch");
  }
  ++stats_.launched;
  stats_.nodes += seg.rec.size();
}

void Stream::sync(const char* what) {
  submit();
  check(cudaStreamSynchronize(s_), what);
}

void Stream::abandon() noexcept {
  if (recording_) {
    recording_ = false;
    drop(*segs_[segment_]);
  }
  armed_ = false;
}

}  // namespace cuda
}  // namespace tova
