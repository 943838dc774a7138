// The CUDA backend's stream, and its decode steps as CUDA graphs. Every operation of the backend
// goes to one non-blocking stream (work on the legacy default stream, by another engine or a
// library, never waits on it and never breaks its captures). A step of few rows is captured: its
// launches and copies are recorded instead of issued, and at the step's first host wait (the
// logits, probabilities the host needs now, a buffer that must grow) they go to the device as one
// graph. The executable graph of each place in a step is kept and updated with the new step's
// arguments (cudaGraphExecUpdate), instantiated anew only when the step's shape changed. The
// host's work per launch is then a recorded node, and the device runs the step without gaps
// between kernels. TOVA_CUDA_GRAPHS=0 issues every operation directly instead.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tova {
namespace cuda {

class Stream {
 public:
  explicit Stream(bool graphs);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // The stream for the next operation of a step: while the step is captured, the operation is
  // recorded (capture resumes after a submit()).
  cudaStream_t op();
  // The stream for an operation that must be issued now, outside any graph (a copy into pageable
  // host memory): what the step recorded so far is launched first.
  cudaStream_t eager() {
    submit();
    return s_;
  }
  // A new step: its operations are captured when graphs are on and `capture` (a step of few rows).
  void begin_step(bool capture);
  // Launches what the step recorded since its last submit as one graph. Called before the host
  // waits for the stream or allocates or frees memory, which a capture forbids.
  void submit();
  // The step is over: submit() what it recorded, and capture nothing more until the next
  // begin_step() (the next step may run on another thread).
  void end_step() {
    armed_ = false;
    submit();
  }
  // submit(), then waits until the stream has run everything issued to it.
  void sync(const char* what);
  // Ends a capture an error left open: what it recorded is dropped, never run.
  void abandon() noexcept;
  // How many times recorded work was dropped (abandon, or a capture the driver invalidated):
  // uploads the host made in such a capture never happened.
  uint64_t dropped() const { return dropped_; }

  struct Stats {
    uint64_t launched = 0;      // graphs launched
    uint64_t instantiated = 0;  // executable graphs made
    uint64_t updated = 0;       // executable graphs reused with a step's new arguments
    uint64_t nodes = 0;         // operations (kernels, copies) in the graphs launched
  };
  const Stats& stats() const { return stats_; }
  bool graphs() const { return graphs_; }

 private:
  // Steps whose host waits cut them into more graphs than this (an exact prefill walk waits per
  // row) go on without capture: a new graph per row would cost more than its launches.
  static constexpr size_t kMaxSegments = 4;

  cudaStream_t s_ = nullptr;
  bool graphs_ = false;
  bool armed_ = false;      // this step is captured
  bool capturing_ = false;  // a capture is open
  size_t segment_ = 0;      // graphs launched in this step so far
  std::vector<cudaGraphExec_t> execs_;  // by place in the step
  Stats stats_;
  uint64_t dropped_ = 0;
};

}  // namespace cuda
}  // namespace tova
