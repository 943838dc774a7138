// Streams, stream capture and graphs on the simulated device. A capture records what its stream
// is given (kernels with their arguments, copies, memsets) instead of queueing it; a launched
// graph queues the recorded operations again, reading host memory when the device gets there
// (as a memcpy node from pinned memory does). The driver's rules that a captured program can
// break are enforced: a call that allocates, frees or waits from the capturing thread, or work
// on the legacy stream while a blocking stream captures, invalidates the capture and fails (and
// so do the operations after it); ending it from another thread fails; an update with other
// nodes fails. Pessimistic where the driver's rules are unwritten: a device-wide wait or a free
// on any thread invalidates every capture (device.h, waits_for_device).
#include "device.h"

using tova_sim::Device;
using tova_sim::Node;

namespace {

bool same_nodes(const std::vector<Node>& a, const std::vector<Node>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].kind != b[i].kind || a[i].kernel != b[i].kernel) return false;
  return true;
}

}  // namespace

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (const cudaError_t e = d.unsafe_during_capture()) return e;
  *s = new tova_sim_stream;
  (*s)->nonblocking = (flags & cudaStreamNonBlocking) != 0;
  d.streams.insert(*s);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (!s || !d.streams.count(s)) return d.error(cudaErrorInvalidResourceHandle);
  if (s->capturing) return d.error(cudaErrorStreamCaptureUnsupported);
  d.drain();  // its work completes first, as the driver lets it
  d.streams.erase(s);
  delete s;
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (!s) return d.error(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot be captured
  if (!d.streams.count(s)) return d.error(cudaErrorInvalidResourceHandle);
  if (s->capturing) return d.error(cudaErrorIllegalState);
  s->capturing = true;
  s->invalidated = false;
  s->mode = mode;
  s->thread = std::this_thread::get_id();
  s->breaks = d.break_for_capture();
  s->nodes.clear();
  d.capturing.insert(s);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  *graph = nullptr;
  if (!s || !d.streams.count(s)) return d.error(cudaErrorInvalidResourceHandle);
  if (!s->capturing) return d.error(cudaErrorIllegalState);
  if (s->mode != cudaStreamCaptureModeRelaxed && s->thread != std::this_thread::get_id())
    return d.error(cudaErrorStreamCaptureWrongThread);
  s->capturing = false;
  d.capturing.erase(s);
  std::vector<Node> nodes = std::move(s->nodes);
  s->nodes.clear();
  if (s->breaks == tova_sim::Break::AtEnd) s->invalidated = true;
  s->breaks = tova_sim::Break::None;
  if (s->invalidated) return d.error(cudaErrorStreamCaptureInvalidated);
  *graph = new tova_sim_graph{std::move(nodes)};
  d.graphs.insert(*graph);
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (s && !d.streams.count(s)) return d.error(cudaErrorInvalidResourceHandle);
  *status = !s || !s->capturing ? cudaStreamCaptureStatusNone
            : s->invalidated    ? cudaStreamCaptureStatusInvalidated
                                : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  *exec = nullptr;
  if (!graph || !d.graphs.count(graph)) return d.error(cudaErrorInvalidValue);
  *exec = new tova_sim_graph_exec{graph->nodes};
  d.execs.insert(*exec);
  ++d.counters.graph_instantiations;
  return cudaSuccess;
}

cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo* info) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (!exec || !d.execs.count(exec) || !graph || !d.graphs.count(graph)) return d.error(cudaErrorInvalidValue);
  if (!same_nodes(exec->nodes, graph->nodes)) {
    if (info) info->result = exec->nodes.size() != graph->nodes.size() ? cudaGraphExecUpdateErrorTopologyChanged
                                                                       : cudaGraphExecUpdateErrorFunctionChanged;
    return d.error(cudaErrorGraphExecUpdateFailure);
  }
  exec->nodes = graph->nodes;  // the new parameters (kernel arguments, copy addresses)
  if (info) info->result = cudaGraphExecUpdateSuccess;
  ++d.counters.graph_updates;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (d.sticky) return d.sticky;
  if (!exec || !d.execs.count(exec)) return d.error(cudaErrorInvalidValue);
  if (s && !d.streams.count(s)) return d.error(cudaErrorInvalidResourceHandle);
  if (s && s->capturing) return d.error(cudaErrorStreamCaptureUnsupported);  // not needed by tova: refused
  ++d.counters.graph_launches;
  d.counters.graph_nodes += exec->nodes.size();
  for (const Node& n : exec->nodes) d.queue.push_back(n.run);
  return cudaSuccess;
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (!graph || !d.graphs.count(graph) || nodes || !count) return d.error(cudaErrorInvalidValue);
  *count = graph->nodes.size();
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (!graph || !d.graphs.erase(graph)) return d.error(cudaErrorInvalidValue);
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (!exec || !d.execs.erase(exec)) return d.error(cudaErrorInvalidValue);
  delete exec;
  return cudaSuccess;
}
