// The CUDA backend's stream, and its decode steps as CUDA graphs. Every operation of the backend
// goes to one non-blocking stream (work on the legacy default stream, by another engine or a
// library, never waits on it and never breaks its captures). A step of few rows is recorded
// (recorder.h): its launches and copies are kept instead of issued, and at the step's first host
// wait (the logits, probabilities the host needs now, a buffer that must grow) they go to the
// device as one graph. The executable graph of each place in a step is kept: a recording equal
// to the last one at its place (a decode step once the cache is full) relaunches it as it is; a
// changed one is issued into a stream capture and the graph updated with the new arguments
// (cudaGraphExecUpdate), instantiated anew only when the step's shape changed. The host's work
// per operation is then a key compared, and the device runs the step without gaps between
// kernels. TOVA_CUDA_GRAPHS=0 issues every operation directly instead; TOVA_CUDA_REPLAY=0 captures
// every recorded step (no relaunch as it is).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "recorder.h"

namespace tova {
namespace cuda {

class Stream {
 public:
  // replay: an unchanged step relaunches its graph without a capture (false: every recorded step
  // is captured and its graph updated, for comparing the two).
  explicit Stream(bool graphs, bool replay = true);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Where the next operation of a step goes: the step's recorder while it is recorded (recording
  // resumes after a submit()), else the stream.
  Queue op();
  // The stream for an operation that must be issued now, outside any graph (a copy into pageable
  // host memory): what the step recorded so far is launched first.
  cudaStream_t eager() {
    submit();
    return s_;
  }
  // A new step: its operations are recorded when graphs are on and `capture` (a step of few rows).
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
  // Ends a recording an error left open: what it recorded is dropped, never run.
  void abandon() noexcept;
  // How many times recorded work was dropped (abandon, or an operation that failed):
  // uploads the host made in such a capture never happened.
  uint64_t dropped() const { return dropped_; }

  struct Stats {
    uint64_t launched = 0;      // graphs launched
    uint64_t instantiated = 0;  // executable graphs made
    uint64_t updated = 0;       // executable graphs reused with a step's new arguments
    uint64_t replayed = 0;      // executable graphs relaunched as they were (the step unchanged)
    uint64_t nodes = 0;         // operations (kernels, copies) in the graphs launched
    uint64_t uncaptured = 0;    // recordings issued directly: their capture failed
  };
  const Stats& stats() const { return stats_; }
  bool graphs() const { return graphs_; }

 private:
  // Steps whose host waits cut them into more graphs than this (an exact prefill walk waits per
  // row) go on without capture: a new graph per row would cost more than its launches.
  static constexpr size_t kMaxSegments = 4;

  cudaStream_t s_ = nullptr;
  bool graphs_ = false;
  bool replay_ = true;
  // A place in a step (what it records until a host wait): its last recording and the
  // executable graph made from it.
  struct Segment {
    Recorder rec;
    cudaGraphExec_t exec = nullptr;
  };
  // Captures what seg recorded and updates (or makes) its executable graph from it; false when
  // the capture, update or instantiation failed (nothing of the recording ran).
  bool capture(Segment& seg);
  // Issues what seg recorded on the stream, outside any graph (after a failed capture).
  void issue_uncaptured(Segment& seg);
  // After an error: what was recorded is dropped, and this step records nothing more.
  void drop(Segment& seg) noexcept;

  bool armed_ = false;      // this step is recorded
  bool recording_ = false;  // the current segment has begun recording
  size_t segment_ = 0;      // graphs launched in this step so far
  std::vector<std::unique_ptr<Segment>> segs_;  // by place in the step
  Stats stats_;
  uint64_t dropped_ = 0;
};

}  // namespace cuda
}  // namespace tova
