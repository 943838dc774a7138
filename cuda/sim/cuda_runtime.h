// The CUDA runtime and kernel language as the simulator provides them (the TOVA_CUDA_SIM build
// only): the sources of cuda/ compile as plain C++ against this header and run on the CPU, each
// thread of a block a fiber that switches at __syncthreads and at warp collectives. It stands in
// for a GPU in CI, which has none: kernels, launches and the backend's host code (staging, stream
// order, copies back) run as they are written. It cannot show speed, the device's memory model
// beyond barriers, or the device's own math library (expf etc. are the host's).
//
// What it checks beyond a plain run: launch configurations as the hardware limits them; a barrier
// or warp collective that not every thread reaches (a deadlock, reported as a launch failure); a
// full-mask warp collective after some lanes exited; copies that read or write outside a device
// allocation; device memory read before it was written (new allocations hold NaN bytes); a
// kernel that assumes its blocks run in some order (a grid's blocks run in an order of their
// own for each launch, as a GPU may run them). Work is
// queued in stream order and runs when the host waits for the device (a synchronizing call), so
// host memory read or rewritten too early shows up as wrong values, as it would on a GPU.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_fp16.h"

// --- the kernel language ---------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time, its threads fibers of the host thread draining the stream: a
// block-shared variable is a static (it keeps the last block's values: a kernel must not read
// what its own block has not written).
#define __shared__ static

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

// The device's integer and float min / max overloads.
#define TOVA_SIM_MINMAX(T)                          \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
TOVA_SIM_MINMAX(int)
TOVA_SIM_MINMAX(unsigned)
TOVA_SIM_MINMAX(long)
TOVA_SIM_MINMAX(unsigned long)
TOVA_SIM_MINMAX(long long)
TOVA_SIM_MINMAX(unsigned long long)
#undef TOVA_SIM_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Rounded products and sums that the device never fuses into a multiply-add (nor does this
// library: it is built with -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
// Four signed bytes of a times those of b, summed onto c; bytes subtracted one by one (each
// wrapping to its byte).
inline int __dp4a(int a, int b, int c) {
  for (int k = 0; k < 4; ++k)
    c += static_cast<int>(static_cast<int8_t>(a >> (8 * k))) * static_cast<int>(static_cast<int8_t>(b >> (8 * k)));
  return c;
}
inline unsigned __vsub4(unsigned a, unsigned b) {
  unsigned r = 0;
  for (int k = 0; k < 4; ++k) r |= ((((a >> (8 * k)) & 0xFFu) - ((b >> (8 * k)) & 0xFFu)) & 0xFFu) << (8 * k);
  return r;
}

namespace tova_sim {

enum class WarpOp { Xor, Down, Up, Idx, Ballot, Sync };
// Blocks the calling fiber until every lane of `mask` in its warp reaches the same collective,
// then returns what this lane receives (the value of the lane it reads; for a ballot, the mask).
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width);
void block_barrier();

template <class T>
T shuffle(WarpOp op, unsigned mask, T v, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a value over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_collective(op, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace tova_sim

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return tova_sim::shuffle(tova_sim::WarpOp::Xor, mask, v, lane_mask, width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return tova_sim::shuffle(tova_sim::WarpOp::Down, mask, v, static_cast<int>(delta), width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return tova_sim::shuffle(tova_sim::WarpOp::Up, mask, v, static_cast<int>(delta), width);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return tova_sim::shuffle(tova_sim::WarpOp::Idx, mask, v, src_lane, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(tova_sim::warp_collective(tova_sim::WarpOp::Ballot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) { return (__ballot_sync(mask, pred) & mask) != 0; }
inline int __all_sync(unsigned mask, int pred) { return (__ballot_sync(mask, pred) & mask) == mask; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { tova_sim::warp_collective(tova_sim::WarpOp::Sync, mask, 0, 0, 32); }
inline void __syncthreads() { tova_sim::block_barrier(); }
// Blocks run one at a time, each to its end: every write is seen by every later block.
inline void __threadfence() {}

// Fibers of one host thread never run at the same time: a read-modify-write is atomic.
template <class T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}

// --- the runtime API (the subset cuda/ uses) ---------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
  cudaErrorUnknown = 999,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureImplicit = 906,
  cudaErrorStreamCaptureWrongThread = 908,
  cudaErrorGraphExecUpdateFailure = 910,
};
using cudaError = cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
using cudaStream_t = struct tova_sim_stream*;

const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int device);
// The one attribute cuda/ asks for; the simulated device reports an edge GPU's 16
// multiprocessors (Jetson AGX Orin's): launch shapes planned for a large GPU (rows split among
// warps) multiply the simulator's fibers, so the tests ask for them where they check them
// (TOVA_CUDA_ROW_SPLIT=132, and the kernel check).
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

// Streams, stream capture and graphs (graph.cpp): a capture records the stream's operations
// instead of running them; a launched graph queues them again; an update keeps an instantiated
// graph when the new one has the same nodes (kinds and kernels) in the same order.
constexpr unsigned cudaStreamDefault = 0;
constexpr unsigned cudaStreamNonBlocking = 1;
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
using cudaGraph_t = struct tova_sim_graph*;
using cudaGraphExec_t = struct tova_sim_graph_exec*;
using cudaGraphNode_t = struct tova_sim_graph_node*;
enum cudaGraphExecUpdateResult {
  cudaGraphExecUpdateSuccess = 0,
  cudaGraphExecUpdateError = 1,
  cudaGraphExecUpdateErrorTopologyChanged = 2,
  cudaGraphExecUpdateErrorNodeTypeChanged = 3,
  cudaGraphExecUpdateErrorFunctionChanged = 4,
};
struct cudaGraphExecUpdateResultInfo {
  cudaGraphExecUpdateResult result = cudaGraphExecUpdateSuccess;
  cudaGraphNode_t errorNode = nullptr;
  cudaGraphNode_t errorFromNode = nullptr;
};
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo* info);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count);  // count only (nodes null)
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

template <class T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
template <class T>
cudaError_t cudaMallocHost(T** p, size_t bytes) {
  return cudaMallocHost(reinterpret_cast<void**>(p), bytes);
}

namespace tova_sim {

// Queues a kernel's grid in stream order, or records it in the stream's capture (false: a
// configuration the hardware refuses, or a capture it breaks; cudaGetLastError then reports it).
bool enqueue_kernel(dim3 grid, dim3 block, cudaStream_t stream, const void* kernel, std::function<void()> thread_body);

// What the device has run since the process started (tests read them: tova._core._cuda_sim_counters).
struct Counters {
  uint64_t kernels = 0;            // grids queued outside a capture
  uint64_t graph_launches = 0;
  uint64_t graph_instantiations = 0;
  uint64_t graph_updates = 0;      // successful cudaGraphExecUpdate calls
  uint64_t graph_nodes = 0;        // operations queued by graph launches
};
Counters counters();

// kernel<<<grid, block, 0, stream>>>(args...) is written TOVA_LAUNCH(kernel, grid, block, stream)(args...)
// (cuda/launch.cuh): here the arguments are converted to the kernel's parameter types and kept
// by value until the grid runs, as the driver keeps them.
template <class... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  cudaStream_t stream;
  template <class... A>
  void operator()(A&&... a) const {
    std::tuple<std::decay_t<P>...> args(static_cast<std::decay_t<P>>(std::forward<A>(a))...);
    auto k = kernel;
    enqueue_kernel(grid, block, stream, reinterpret_cast<const void*>(k), [k, args]() { std::apply(k, args); });
  }
};
template <class... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t stream) {
  return {kernel, grid, block, stream};
}

}  // namespace tova_sim
