// The CPU simulator behind cuda/sim/cuda_runtime.h: a device whose memory is host memory and
// whose one stream is a queue run when the host waits for it; a grid runs block by block on the
// waiting host thread, each thread of a block a fiber switched at barriers and warp collectives.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "device.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// One host thread at a time runs kernels (the device's lock is held while the queue drains), so
// the simulated device's registers are plain globals, as the one device they describe.
uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *from, and
// resumes the context whose stack pointer is `to`. (MXCSR and the x87 control word are not
// switched: every fiber runs kernel code in the host thread's floating-point environment.)
extern "C" void tova_sim_switch(void** from, void* to);
asm(R"(
  .text
  .globl tova_sim_switch
  .hidden tova_sim_switch
  .type tova_sim_switch, @function
tova_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tova_sim_switch, .-tova_sim_switch
)");
#endif

namespace tova_sim {

namespace {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 * 1024;  // what a simulated thread's calls may use
// Stack tops staggered by thread, 17 cache lines apart over 64 KB: at one offset into stacks
// 256 KB apart the threads' frames would all fall in the same few sets of the caches (of L2 too,
// whose way spans 64 KB or more), and every switch to the next thread would miss. The stagger
// took a simulated run from 5.4 s to 3.7 s.
constexpr size_t kStaggerStep = 17 * 64;
constexpr int kStaggerSteps = 60;
// A stack's mapping: the stack, the stagger, and a guard page (of up to 64 KB) at the low end.
constexpr size_t kMapBytes = kStackBytes + 128 * 1024;
static_assert(kStaggerStep * kStaggerSteps + 64 * 1024 <= 128 * 1024, "the stagger and the guard page");

// A suspended thread (or the scheduler), and the switch from the running one to another.
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;  // its stack pointer, the callee-saved registers on that stack
};
void switch_to(Context& from, const Context& to) { tova_sim_switch(&from.sp, to.sp); }
#else
using Context = ucontext_t;
void switch_to(Context& from, const Context& to) { swapcontext(&from, &to); }
#endif

enum class State { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
  State state = State::Ready;
  uint3 tid;
  char* stack = nullptr;  // kMapBytes, a guard page at the low end
  Context ctx;
  WarpOp op = WarpOp::Sync;
  unsigned mask = 0;
  int arg = 0, width = kWarpSize;
  uint64_t send = 0, recv = 0;
};

// The block being run (by the one host thread draining the queue).
struct BlockRun {
  std::vector<Fiber> fibers;  // the first n are this block's threads (the rest kept for larger blocks)
  int n = 0;
  const std::function<void()>* body = nullptr;
  int current = -1;     // the running fiber
  int place = -1;       // its place in the pass's order
  bool descending = false;
  Context sched;
  std::string fault;  // set when the block cannot go on
  ~BlockRun() {
    for (Fiber& f : fibers)
      if (f.stack) munmap(f.stack, kMapBytes);
  }
};

BlockRun t_run;

// A pass runs every ready fiber once, in the block's order (see run_block), each until it waits or
// ends. The fiber at `place` in that order.
int fiber_at(const BlockRun& r, int place) { return r.descending ? r.n - 1 - place : place; }

// The place of the next ready fiber after `place` in this pass, or -1 (the pass is over). No fiber
// becomes ready during a pass: the scheduler releases collectives and barriers between passes.
int next_ready(const BlockRun& r, int place) {
  for (int p = place + 1; p < r.n; ++p)
    if (r.fibers[static_cast<size_t>(fiber_at(r, p))].state == State::Ready) return p;
  return -1;
}

// Makes the fiber at `place` the running one (for the switch to it that follows) and returns it.
Fiber& enter(BlockRun& r, int place) {
  const int i = fiber_at(r, place);
  Fiber& f = r.fibers[static_cast<size_t>(i)];
  r.place = place;
  r.current = i;
  threadIdx = f.tid;
  return f;
}

// Leaves the running fiber f (its state already set) for the next ready fiber of the pass, or for
// the scheduler when the pass is over. Straight from fiber to fiber, without the scheduler between:
// half the switches, and each returns where the return-address predictor expects (every waiting
// fiber left from the same call).
void leave(BlockRun& r, Fiber& f) {
  const int p = next_ready(r, r.place);
  if (p < 0) {
    switch_to(f.ctx, r.sched);
    return;
  }
  Fiber& g = enter(r, p);
  switch_to(f.ctx, g.ctx);
}

void fiber_main() {
  BlockRun& r = t_run;
  (*r.body)();
  Fiber& f = r.fibers[static_cast<size_t>(r.current)];
  f.state = State::Done;
  leave(r, f);
  std::abort();  // a finished fiber is never resumed
}

extern "C" void tova_sim_entry() { fiber_main(); }

char* new_stack() {
  void* p = mmap(nullptr, kMapBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  mprotect(p, static_cast<size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);  // an overflow faults
  return static_cast<char*>(p);
}

void start_fiber(Fiber& f, int i) {
#if defined(__x86_64__)
  // A frame tova_sim_switch can resume: six registers, then the return address (tova_sim_entry),
  // entered with the stack aligned as after a call.
  char* end = f.stack + kMapBytes - static_cast<size_t>(i % kStaggerSteps) * kStaggerStep;
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(end) & ~uintptr_t{15});
  top[-1] = 0;
  top[-2] = reinterpret_cast<uint64_t>(&tova_sim_entry);
  for (int i = 3; i <= 8; ++i) top[-i] = 0;
  f.ctx.sp = &top[-8];
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack + sysconf(_SC_PAGESIZE);
  f.ctx.uc_stack.ss_size = kMapBytes - static_cast<size_t>(sysconf(_SC_PAGESIZE));
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(&tova_sim_entry), 0);
#endif
}

// Runs a pass from the scheduler, starting at the ready fiber at `place`; back when it is over.
void run_pass(BlockRun& r, int place) {
  Fiber& f = enter(r, place);
  switch_to(r.sched, f.ctx);
}

// The running fiber waits in state s (until the scheduler releases it in a later pass).
void wait(State s) {
  BlockRun& r = t_run;
  Fiber& f = r.fibers[static_cast<size_t>(r.current)];
  f.state = s;
  leave(r, f);
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Xor: return "__shfl_xor_sync";
    case WarpOp::Down: return "__shfl_down_sync";
    case WarpOp::Up: return "__shfl_up_sync";
    case WarpOp::Idx: return "__shfl_sync";
    case WarpOp::Ballot: return "__ballot_sync";
    case WarpOp::Sync: return "__syncwarp";
  }
  return "?";
}

std::string where(const Fiber& f) {
  char b[96];
  std::snprintf(b, sizeof b, "block (%u,%u,%u) thread (%u,%u,%u)", blockIdx.x, blockIdx.y, blockIdx.z, f.tid.x,
                f.tid.y, f.tid.z);
  return b;
}

// The common case of release_warps, in two plain passes over the lanes: all 32 lanes of the
// warp at one collective with the full mask and width, none reading outside the warp. False,
// with nothing changed, when the warp is not in that state (the general path then decides).
bool release_whole_warp(BlockRun& r, int w0) {
  Fiber* lane = &r.fibers[static_cast<size_t>(w0)];
  const WarpOp op = lane[0].op;
  unsigned ballot = 0;
  for (int m = 0; m < kWarpSize; ++m) {
    const Fiber& g = lane[m];
    if (g.state != State::AtWarp || g.op != op || g.mask != 0xffffffffu || g.width != kWarpSize) return false;
    if ((op == WarpOp::Xor || op == WarpOp::Down || op == WarpOp::Up) && (g.arg < 0 || g.arg >= kWarpSize)) return false;
    ballot |= (g.send != 0 ? 1u : 0u) << m;
  }
  for (int m = 0; m < kWarpSize; ++m) {
    Fiber& g = lane[m];
    switch (op) {
      case WarpOp::Xor: g.recv = lane[m ^ g.arg].send; break;
      case WarpOp::Down: g.recv = lane[m + g.arg < kWarpSize ? m + g.arg : m].send; break;
      case WarpOp::Up: g.recv = lane[m - g.arg >= 0 ? m - g.arg : m].send; break;
      case WarpOp::Idx: g.recv = lane[((g.arg % kWarpSize) + kWarpSize) % kWarpSize].send; break;
      case WarpOp::Ballot: g.recv = ballot; break;
      case WarpOp::Sync: g.recv = g.send; break;
    }
    g.state = State::Ready;
  }
  return true;
}

// Releases the warp collectives whose every lane has arrived; true when one was released. A
// lane of the mask that exited, or lanes of one mask waiting at different collectives, is a
// fault (on a GPU: undefined behaviour, usually a hang).
bool release_warps(BlockRun& r) {
  bool any = false;
  const int n = r.n;
  for (int w0 = 0; w0 < n; w0 += kWarpSize) {
    const int lanes = std::min(kWarpSize, n - w0);
    if (lanes == kWarpSize && release_whole_warp(r, w0)) {
      any = true;
      continue;
    }
    for (int l = 0; l < lanes; ++l) {
      Fiber& f = r.fibers[static_cast<size_t>(w0 + l)];
      if (f.state != State::AtWarp) continue;
      if (!(f.mask >> l & 1u)) {
        r.fault = where(f) + ": " + op_name(f.op) + " with a mask that leaves out the calling lane";
        return false;
      }
      bool complete = true;
      for (int m = 0; m < kWarpSize && complete; ++m) {
        if (!(f.mask >> m & 1u)) continue;
        if (m >= lanes) {
          r.fault = where(f) + ": " + op_name(f.op) + " names lane " + std::to_string(m) + ", which this block lacks";
          return false;
        }
        const Fiber& g = r.fibers[static_cast<size_t>(w0 + m)];
        if (g.state == State::Done) {
          r.fault = where(f) + ": " + op_name(f.op) + " waits for lane " + std::to_string(m) + ", which has exited";
          return false;
        }
        if (g.state != State::AtWarp) complete = false;
        else if (g.op != f.op || g.mask != f.mask) {
          r.fault = where(f) + ": lanes of one warp at different collectives (" + op_name(f.op) + ", " +
                    op_name(g.op) + ")";
          return false;
        }
      }
      if (!complete) continue;
      // Everyone in the mask is here: compute what each lane receives, then let them go.
      const unsigned mask = f.mask;
      unsigned ballot = 0;
      for (int m = 0; m < kWarpSize; ++m)
        if (mask >> m & 1u && r.fibers[static_cast<size_t>(w0 + m)].send) ballot |= 1u << m;
      for (int m = 0; m < kWarpSize; ++m) {
        if (!(mask >> m & 1u)) continue;
        Fiber& g = r.fibers[static_cast<size_t>(w0 + m)];
        const int width = g.width, base = m - m % width, in = m % width;
        int src = m;
        switch (g.op) {
          case WarpOp::Xor: src = base + ((in ^ g.arg) < width ? (in ^ g.arg) : in); break;
          case WarpOp::Down: src = in + g.arg < width ? m + g.arg : m; break;
          case WarpOp::Up: src = in - g.arg >= 0 ? m - g.arg : m; break;
          case WarpOp::Idx: src = base + ((g.arg % width) + width) % width; break;
          case WarpOp::Ballot: case WarpOp::Sync: break;
        }
        if (g.op == WarpOp::Ballot) g.recv = ballot;
        else if (!(mask >> src & 1u)) {
          r.fault = where(g) + ": " + op_name(g.op) + " reads lane " + std::to_string(src) + ", outside the mask";
          return false;
        } else {
          g.recv = r.fibers[static_cast<size_t>(w0 + src)].send;
        }
      }
      for (int m = 0; m < kWarpSize; ++m)
        if (mask >> m & 1u) r.fibers[static_cast<size_t>(w0 + m)].state = State::Ready;
      any = true;
    }
  }
  return any;
}

bool release_barrier(BlockRun& r) {
  bool waiting = false;
  for (int i = 0; i < r.n; ++i) {
    const Fiber& f = r.fibers[static_cast<size_t>(i)];
    if (f.state == State::Done) continue;
    if (f.state != State::AtBarrier) return false;
    waiting = true;
  }
  if (!waiting) return false;
  for (int i = 0; i < r.n; ++i)
    if (r.fibers[static_cast<size_t>(i)].state == State::AtBarrier) r.fibers[static_cast<size_t>(i)].state = State::Ready;
  return true;
}

// Runs one block; false (with r.fault) when its threads cannot all finish.
bool run_block(BlockRun& r, int n_threads, const std::function<void()>& body) {
  r.body = &body;
  r.fault.clear();
  if (static_cast<int>(r.fibers.size()) < n_threads) r.fibers.resize(static_cast<size_t>(n_threads));
  for (int i = 0; i < n_threads; ++i) {
    Fiber& f = r.fibers[static_cast<size_t>(i)];
    if (!f.stack && !(f.stack = new_stack())) {
      r.fault = "no memory for the simulated threads' stacks";
      return false;
    }
  }
  r.n = n_threads;
  const unsigned bx = blockDim.x, by = blockDim.y;
  for (int i = 0; i < n_threads; ++i) {
    Fiber& f = r.fibers[static_cast<size_t>(i)];
    f.state = State::Ready;
    f.tid = uint3{static_cast<unsigned>(i) % bx, static_cast<unsigned>(i) / bx % by,
                  static_cast<unsigned>(i) / (bx * by)};
    start_fiber(f, i);
  }
  // Threads run in ascending order in even blocks and descending in odd ones, so that a read of
  // another thread's write without a barrier between sees the old value in one of them.
  r.descending = (blockIdx.x + blockIdx.y + blockIdx.z) % 2 == 1;
  bool ok = true;
  for (;;) {
    const int first = next_ready(r, -1);
    if (first >= 0) run_pass(r, first);
    bool alive = false;
    for (int i = 0; i < n_threads && !alive; ++i) alive = r.fibers[static_cast<size_t>(i)].state != State::Done;
    if (!alive) break;
    const bool warps = release_warps(r);
    if (!r.fault.empty()) {
      ok = false;
      break;
    }
    if (warps || release_barrier(r)) continue;
    // Nothing can move: threads wait at collectives that the others never reach.
    std::string states;
    for (int i = 0; i < n_threads && states.size() < 400; ++i) {
      const Fiber& f = r.fibers[static_cast<size_t>(i)];
      if (f.state == State::AtWarp && (i == 0 || r.fibers[static_cast<size_t>(i - 1)].state != State::AtWarp))
        states += " thread " + std::to_string(i) + " at " + op_name(f.op) + ";";
      if (f.state == State::AtBarrier && (i == 0 || r.fibers[static_cast<size_t>(i - 1)].state != State::AtBarrier))
        states += " thread " + std::to_string(i) + " at __syncthreads;";
    }
    r.fault = "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
              std::to_string(blockIdx.z) + ") deadlocks:" + states + " the other threads exited or wait elsewhere";
    ok = false;
    break;
  }
  // A fiber abandoned mid-kernel holds nothing but its stack, which the next block reuses.
  return ok;
}

// Exactly `bytes` (256-byte aligned, as cudaMalloc): under AddressSanitizer a kernel's read or
// write past an allocation is reported, as compute-sanitizer would on a GPU.
void* alloc(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes == 0 ? 1 : bytes) != 0) return nullptr;
  std::memset(p, 0xff, bytes);  // NaN floats: memory read before it was written shows
  return p;
}

const char* kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost: return "host to host";
    case cudaMemcpyHostToDevice: return "host to device";
    case cudaMemcpyDeviceToHost: return "device to host";
    case cudaMemcpyDeviceToDevice: return "device to device";
    case cudaMemcpyDefault: return "default";
  }
  return "?";
}

// Checks a copy's device sides lie inside device allocations.
bool copy_ok(Device& d, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_dev && !d.is_device(dst, bytes)) || (src_dev && !d.is_device(src, bytes))) {
    char b[160];
    std::snprintf(b, sizeof b, "cudaMemcpy %s of %zu bytes outside a device allocation (%s %p)", kind_name(kind),
                  bytes, dst_dev && !d.is_device(dst, bytes) ? "destination" : "source",
                  dst_dev && !d.is_device(dst, bytes) ? dst : src);
    d.fail(cudaErrorInvalidValue, b);
    return false;
  }
  return true;
}

}  // namespace

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
  BlockRun& r = t_run;
  Fiber& f = r.fibers[static_cast<size_t>(r.current)];
  f.op = op;
  f.mask = mask;
  f.send = value;
  f.arg = arg;
  f.width = width > 0 && width <= kWarpSize && (width & (width - 1)) == 0 ? width : kWarpSize;
  wait(State::AtWarp);
  return r.fibers[static_cast<size_t>(r.current)].recv;
}

void block_barrier() { wait(State::AtBarrier); }

bool enqueue_kernel(dim3 grid, dim3 block, cudaStream_t stream, const void* kernel, std::function<void()> body) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    d.error(cudaErrorInvalidConfiguration);
    return false;
  }
  Node n;
  n.kind = Node::Kernel;
  n.kernel = kernel;
  n.run = [grid, block, threads, body = std::move(body)]() {
    Device& dev = Device::get();
    BlockRun& r = t_run;
    gridDim = grid;
    blockDim = block;
    // A GPU runs a grid's blocks in no promised order (a kernel that counts its finished blocks
    // must not assume the last is the highest): each launch takes its blocks in an order of its
    // own, a walk of the grid by a stride coprime to its size from a varying start.
    const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
    const uint64_t launch = dev.launches++;
    uint64_t stride = blocks > 1 ? 1 + (launch * 0x9E3779B97F4A7C15ull >> 40) % (blocks - 1) : 1;
    while (std::gcd(stride, blocks) != 1) ++stride;
    const uint64_t start = blocks > 1 ? (launch * 0xD1B54A32D192ED03ull >> 33) % blocks : 0;
    for (uint64_t k = 0; k < blocks; ++k) {
      const uint64_t b = (start + k * stride) % blocks;
      blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                       static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
      if (!run_block(r, static_cast<int>(threads), body)) {
        dev.fail(cudaErrorLaunchFailure, "kernel fault: " + r.fault);
        return;
      }
    }
  };
  return d.issue(stream, std::move(n)) == cudaSuccess;
}

Counters counters() {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  return d.counters;
}

}  // namespace tova_sim

using tova_sim::Device;

const char* cudaGetErrorString(cudaError_t e) {
  Device& d = Device::get();
  if (e != cudaSuccess && e == d.sticky && !d.fault.empty()) return d.fault.c_str();  // (simulator) + what
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorUnknown: return "unknown error";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    case cudaErrorGraphExecUpdateFailure: return "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (d.sticky != cudaSuccess) return d.sticky;
  const cudaError_t e = Device::last();
  Device::last() = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  return d.sticky != cudaSuccess ? d.sticky : Device::last();
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : Device::get().error(cudaErrorInvalidDevice);
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return Device::get().error(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMultiProcessorCount) return Device::get().error(cudaErrorInvalidValue);
  *value = 16;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (const cudaError_t e = d.unsafe_during_capture()) return e;
  if (d.sticky) return d.sticky;
  *p = tova_sim::alloc(bytes);
  if (!*p) return d.error(cudaErrorMemoryAllocation);
  d.device_allocs[reinterpret_cast<uintptr_t>(*p)] = bytes;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (const cudaError_t e = d.waits_for_device(false)) return e;
  d.drain();  // as the driver: freeing waits for the device
  if (!p) return cudaSuccess;
  auto it = d.device_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == d.device_allocs.end()) return d.error(cudaErrorInvalidValue);
  d.device_allocs.erase(it);
  std::free(p);
  return d.sticky;
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (const cudaError_t e = d.unsafe_during_capture()) return e;
  *p = tova_sim::alloc(bytes);
  if (!*p) return d.error(cudaErrorMemoryAllocation);
  d.host_allocs[reinterpret_cast<uintptr_t>(*p)] = bytes;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* p) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (const cudaError_t e = d.waits_for_device(false)) return e;
  d.drain();
  if (!p) return cudaSuccess;
  auto it = d.host_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == d.host_allocs.end()) return d.error(cudaErrorInvalidValue);
  d.host_allocs.erase(it);
  std::free(p);
  return d.sticky;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (const cudaError_t e = d.waits_for_device(false)) return e;
  if (d.drain()) return d.sticky;
  if (bytes == 0) return cudaSuccess;
  if (!tova_sim::copy_ok(d, dst, src, bytes, kind)) return d.sticky;
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (d.sticky) return d.sticky;
  if (bytes == 0) return cudaSuccess;
  if (!tova_sim::copy_ok(d, dst, src, bytes, kind)) return d.sticky;
  tova_sim::Node n;  // runs when the stream gets there
  n.kind = tova_sim::Node::Copy;
  n.run = [dst, src, bytes]() { std::memcpy(dst, src, bytes); };
  return d.issue(stream, std::move(n));
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (d.sticky) return d.sticky;
  if (!d.is_device(p, bytes)) return d.fail(cudaErrorInvalidValue, "cudaMemset outside a device allocation");
  tova_sim::Node n;
  n.kind = tova_sim::Node::Memset;
  n.run = [p, value, bytes]() { std::memset(p, value, bytes); };
  return d.issue(stream, std::move(n));
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, 0); }

cudaError_t cudaDeviceSynchronize() {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (const cudaError_t e = d.waits_for_device(true)) return e;
  return d.drain();
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  Device& d = Device::get();
  std::lock_guard<std::recursive_mutex> lock(d.m);
  if (s && !d.streams.count(s)) return d.error(cudaErrorInvalidResourceHandle);
  if (s && s->capturing) {  // waiting for a stream that records instead of running
    s->invalidated = true;
    return d.error(cudaErrorStreamCaptureUnsupported);
  }
  if (const cudaError_t e = d.unsafe_during_capture()) return e;
  return d.drain();  // the whole queue: a valid order of the device's (no wait of another stream's capture)
}
