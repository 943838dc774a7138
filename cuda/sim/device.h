// The simulated device's state, shared by sim.cpp (memory, copies, kernels) and graph.cpp
// (streams, stream capture, graphs). Internal to the simulator.
#pragma once

#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_runtime.h"

namespace tova_sim {

// One operation of a stream, as a graph node too: what it is (a graph update keeps kinds and
// kernels in place), and what it does when the stream gets there.
struct Node {
  enum Kind { Kernel, Copy, Memset } kind = Kernel;
  const void* kernel = nullptr;  // the kernel's function, for Kernel
  std::function<void()> run;
};

// Where an injected fault breaks a capture (Device::break_for_capture).
enum class Break { None, AtFirst, AtEnd };

}  // namespace tova_sim

// A created stream: its flags and, while capturing, the operations recorded instead of run.
struct tova_sim_stream {
  bool nonblocking = false;
  bool capturing = false;
  bool invalidated = false;       // an operation the capture forbids happened: EndCapture fails
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;         // the thread that began the capture
  tova_sim::Break breaks = tova_sim::Break::None;  // an injected fault still to come
  std::vector<tova_sim::Node> nodes;
};
struct tova_sim_graph {
  std::vector<tova_sim::Node> nodes;
};
struct tova_sim_graph_exec {
  std::vector<tova_sim::Node> nodes;
};

namespace tova_sim {

// The one simulated device: its allocations, its queue (every stream's work in the order it was
// issued, a valid order of the real device's), its sticky fault, its captures.
struct Device {
  std::recursive_mutex m;
  std::map<uintptr_t, size_t> device_allocs, host_allocs;  // start -> bytes
  std::deque<std::function<void()>> queue;
  std::set<tova_sim_stream*> streams, capturing;
  std::set<tova_sim_graph*> graphs;
  std::set<tova_sim_graph_exec*> execs;
  Counters counters;
  uint64_t launches = 0;  // grids run so far: each takes its blocks in an order of its own
  cudaError_t sticky = cudaSuccess;
  // The last launch or call error of the calling host thread, until read: per thread, as the
  // runtime keeps it (one thread's failed call is never another's error).
  static cudaError_t& last() {
    thread_local cudaError_t e = cudaSuccess;
    return e;
  }
  std::string fault;               // what the sticky error was

  static Device& get() {
    // The machine's one device, as the driver's context; never destroyed, so that memory freed
    // by objects that outlive main (an engine freed at interpreter exit) still finds it.
    static Device* d = new Device;
    return *d;
  }

  bool inside(const std::map<uintptr_t, size_t>& allocs, const void* p, size_t bytes) const {
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin()) return false;
    --it;
    return a + bytes <= it->first + it->second;
  }
  bool is_device(const void* p, size_t bytes) const { return inside(device_allocs, p, bytes); }

  cudaError_t fail(cudaError_t e, std::string what) {
    if (sticky == cudaSuccess) {
      sticky = e;
      fault = std::move(what);
    }
    return e;
  }
  cudaError_t error(cudaError_t e) {
    last() = e;
    return e;
  }

  cudaError_t drain() {
    while (!queue.empty() && sticky == cudaSuccess) {
      std::function<void()> job = std::move(queue.front());
      queue.pop_front();
      job();
    }
    queue.clear();  // after a fault the rest never runs
    return sticky;
  }

  // A call that may not happen during a capture (it allocates, frees or waits, which a graph
  // would not replay): as the driver, it fails and invalidates the capture when the calling
  // thread captures (modes global and thread-local) or another thread captures in mode global.
  cudaError_t unsafe_during_capture() {
    bool hit = false;
    for (tova_sim_stream* s : capturing) {
      const bool mine = s->thread == std::this_thread::get_id();
      if (s->mode == cudaStreamCaptureModeRelaxed || (!mine && s->mode != cudaStreamCaptureModeGlobal)) continue;
      s->invalidated = true;
      hit = true;
    }
    return hit ? error(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
  }

  // A call that waits for the whole device, or frees memory (which waits for it): pessimistic
  // where the driver's documentation is silent, as drivers have been seen to behave, it also
  // invalidates every other thread's capture, whatever its mode but relaxed (the call itself then
  // goes on, but a device-wide wait fails: `fails`). Else as unsafe_during_capture.
  cudaError_t waits_for_device(bool fails) {
    if (const cudaError_t e = unsafe_during_capture()) return e;
    bool hit = false;
    for (tova_sim_stream* s : capturing)
      if (s->mode != cudaStreamCaptureModeRelaxed) hit = s->invalidated = true;
    return hit && fails ? error(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
  }

  // Fault injection for tests of what a broken capture does (env TOVA_SIM_BREAK_CAPTURES=N): every
  // N-th capture from when the variable took its value is invalidated as another thread's call
  // would, the 1st, 3rd, ... of them at its first operation (which fails), the others at its end.
  std::string break_env;
  uint64_t captures_begun = 0;
  Break break_for_capture() {
    const char* env = std::getenv("TOVA_SIM_BREAK_CAPTURES");
    if (break_env != (env ? env : "")) {
      break_env = env ? env : "";
      captures_begun = 0;
    }
    ++captures_begun;
    const long n = env ? std::strtol(env, nullptr, 10) : 0;
    if (n <= 0 || captures_begun % static_cast<uint64_t>(n) != 0) return Break::None;
    return (captures_begun / static_cast<uint64_t>(n)) % 2 == 1 ? Break::AtFirst : Break::AtEnd;
  }

  // An operation issued to a stream: recorded when it captures, else queued. Work on the legacy
  // default stream (0) waits for every blocking stream, which a capturing one cannot do: that
  // invalidates its capture (cudaErrorStreamCaptureImplicit).
  cudaError_t issue(cudaStream_t s, Node n) {
    if (s == nullptr) {
      bool hit = false;
      for (tova_sim_stream* c : capturing)
        if (!c->nonblocking) hit = c->invalidated = true;
      if (hit) return error(cudaErrorStreamCaptureImplicit);
    } else if (!streams.count(s)) {
      return error(cudaErrorInvalidResourceHandle);
    } else if (s->capturing) {
      if (s->breaks == Break::AtFirst) {
        s->breaks = Break::None;
        s->invalidated = true;
      }
      // As the driver: an invalidated capture refuses the operations that follow.
      if (s->invalidated) return error(cudaErrorStreamCaptureInvalidated);
      s->nodes.push_back(std::move(n));
      return cudaSuccess;
    }
    if (n.kind == Node::Kernel) ++counters.kernels;
    queue.push_back(std::move(n.run));
    return cudaSuccess;
  }
};

}  // namespace tova_sim
