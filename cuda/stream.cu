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

Stream::Stream(bool graphs) : graphs_(graphs) {
  check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "stream creation");
}

Stream::~Stream() {
  abandon();
  cudaStreamSynchronize(s_);
  for (cudaGraphExec_t x : execs_)
    if (x) cudaGraphExecDestroy(x);
  cudaStreamDestroy(s_);
}

cudaStream_t Stream::op() {
  if (armed_ && !capturing_) {
    // Thread-local: only this thread's calls that allocate, free or wait break the capture; other
    // engines on other threads go on.
    check(cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal), "graph capture");
    capturing_ = true;
  }
  return s_;
}

void Stream::begin_step(bool capture) {
  submit();
  armed_ = graphs_ && capture;
  segment_ = 0;
}

void Stream::submit() {
  if (!capturing_) return;
  capturing_ = false;
  GraphOwner g;
  const cudaError_t e = cudaStreamEndCapture(s_, &g.g);
  if (e != cudaSuccess || !g.g) {
    cudaGetLastError();  // not sticky: the next launch's check must not see it
    ++dropped_;
    armed_ = false;
    check(e != cudaSuccess ? e : cudaErrorUnknown, "graph capture");
  }
  size_t n_nodes = 0;
  if (cudaGraphGetNodes(g.g, nullptr, &n_nodes) != cudaSuccess) cudaGetLastError();  // a count for reports only
  if (segment_ >= execs_.size()) execs_.push_back(nullptr);
  cudaGraphExec_t& x = execs_[segment_++];
  if (x) {
    cudaGraphExecUpdateResultInfo info;
    if (cudaGraphExecUpdate(x, g.g, &info) == cudaSuccess) {
      ++stats_.updated;
    } else {  // another shape of step: a new executable graph
      cudaGetLastError();
      cudaGraphExecDestroy(x);
      x = nullptr;
    }
  }
  if (!x) {
    const cudaError_t ie = cudaGraphInstantiate(&x, g.g, 0);
    if (ie != cudaSuccess) {
      x = nullptr;
      ++dropped_;
      armed_ = false;
      check(ie, "graph instantiation");
    }
    ++stats_.instantiated;
  }
  check(cudaGraphLaunch(x, s_), "graph launch");
  ++stats_.launched;
  stats_.nodes += n_nodes;
  if (segment_ >= kMaxSegments) armed_ = false;
}

void Stream::sync(const char* what) {
  submit();
  check(cudaStreamSynchronize(s_), what);
}

void Stream::abandon() noexcept {
  armed_ = false;
  if (!capturing_) return;
  capturing_ = false;
  GraphOwner g;
  cudaStreamEndCapture(s_, &g.g);
  cudaGetLastError();
  ++dropped_;
}

}  // namespace cuda
}  // namespace tova
