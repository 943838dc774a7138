// The CUDA simulator (cuda/sim/) checked on kernels written to pass and kernels written to fail:
// that it runs block reductions right, and that it reports what a GPU would do wrong or refuse
// (a collective some lanes never reach, a launch the hardware refuses, a copy outside device
// memory, memory read before the host waited for it; a stream capture broken by a call that
// waits or allocates, by the legacy stream, or by another thread's device-wide wait or free).
// Built in the TOVA_CUDA_SIM build only;
// tests/test_cuda_sim.py runs it. Prints "N passed, M failed".
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "launch.cuh"

namespace {

int passed = 0, failed = 0;

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

// Sum of in[0..n) per block: warp sums by shuffles, then the warps' sums through shared memory.
__global__ void block_sum(const float* in, int n, float* out) {
  __shared__ float part[32];
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += in[i];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) t += part[w];
    out[blockIdx.x] = t;
  }
}

// Every lane reads its right neighbour (down), its mirror (xor 31) and lane 5 (idx), and a ballot.
__global__ void warp_ops(int* out) {
  const int lane = threadIdx.x % 32;
  out[4 * threadIdx.x + 0] = __shfl_down_sync(0xffffffffu, lane * 10, 1);
  out[4 * threadIdx.x + 1] = __shfl_xor_sync(0xffffffffu, lane, 31);
  out[4 * threadIdx.x + 2] = __shfl_sync(0xffffffffu, lane + 100, 5);
  out[4 * threadIdx.x + 3] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 2));
}

// Lanes 16..31 exit while lanes 0..15 wait for them in a full-mask shuffle.
__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Half a warp at a shuffle, the other half at a block barrier: neither can finish.
__global__ void divergent_collectives(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  else __syncthreads();
}

// Thread i reads what thread i + 1 wrote without a barrier between: a race, which the simulator
// shows by running the threads of odd blocks in descending order.
__global__ void racy_neighbour(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  out[blockIdx.x * 64 + threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

// out[i] = in[i] * k for i < n (one block).
__global__ void scale(const float* in, float k, float* out, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = in[i] * k;
}
__global__ void add_one(float* x, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] += 1.0f;
}

// One float past the end of out: on a GPU compute-sanitizer reports it; here AddressSanitizer does.
__global__ void write_past(float* out, int n) {
  if (threadIdx.x == 0) out[n] = 1.0f;
}

template <class T>
T* dev(size_t n) {
  T* p = nullptr;
  expect(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess, "cudaMalloc");
  return p;
}

}  // namespace

int main() {
  {  // a reduction over 3 blocks of 256 threads
    std::vector<float> h(1000);
    for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<float>(i % 7);
    float* in = dev<float>(h.size());
    float* out = dev<float>(3);
    cudaMemcpy(in, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
    TOVA_LAUNCH(block_sum, 3, 256, 0)(in, static_cast<int>(h.size()), out);
    expect(cudaGetLastError() == cudaSuccess, "block_sum launches");
    float got[3] = {0, 0, 0};
    expect(cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost) == cudaSuccess, "block_sum runs");
    float want = 0;
    for (float f : h) want += f;
    expect(got[0] == want && got[1] == want && got[2] == want, "block_sum: " + std::to_string(got[0]) + " want " +
                                                                   std::to_string(want));
    cudaFree(in);
    cudaFree(out);
  }
  {  // shuffles and a ballot, two warps
    int* out = dev<int>(4 * 64);
    TOVA_LAUNCH(warp_ops, 1, 64, 0)(out);
    std::vector<int> h(4 * 64);
    expect(cudaMemcpy(h.data(), out, h.size() * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess, "warp_ops runs");
    bool ok = true;
    for (int t = 0; t < 64; ++t) {
      const int lane = t % 32;
      ok &= h[4 * t] == (lane < 31 ? (lane + 1) * 10 : lane * 10);
      ok &= h[4 * t + 1] == (lane ^ 31);
      ok &= h[4 * t + 2] == 105;
      ok &= static_cast<unsigned>(h[4 * t + 3]) == 0xaaaaaaaau;
    }
    expect(ok, "warp_ops: down / xor / idx shuffles and the ballot");
    cudaFree(out);
  }
  {  // a race between threads shows as a difference between blocks
    int* out = dev<int>(2 * 64);
    TOVA_LAUNCH(racy_neighbour, 2, 64, 0)(out);
    std::vector<int> h(2 * 64);
    cudaMemcpy(h.data(), out, h.size() * sizeof(int), cudaMemcpyDeviceToHost);
    bool differs = false;
    for (int t = 0; t < 64; ++t) differs |= h[t] != h[64 + t];
    expect(differs, "a missing barrier makes blocks disagree");
    cudaFree(out);
  }
  {  // stream order: a copy back is there only once the host has waited
    float* d = dev<float>(4);
    float* pinned = nullptr;
    cudaMallocHost(&pinned, 4 * sizeof(float));
    const float v[4] = {1, 2, 3, 4};
    cudaMemcpy(d, v, sizeof v, cudaMemcpyHostToDevice);
    pinned[0] = -1.0f;
    cudaMemcpyAsync(pinned, d, sizeof v, cudaMemcpyDeviceToHost, 0);
    expect(pinned[0] == -1.0f, "an asynchronous copy has not run before the host waits");
    cudaStreamSynchronize(0);
    expect(pinned[0] == 1.0f && pinned[3] == 4.0f, "an asynchronous copy has run after the wait");
    float* fresh = dev<float>(2);
    float r[2] = {0, 0};
    cudaMemcpy(r, fresh, sizeof r, cudaMemcpyDeviceToHost);
    expect(r[0] != r[0] && r[1] != r[1], "new device memory reads as NaN");
    cudaFreeHost(pinned);
    cudaFree(d);
    cudaFree(fresh);
  }
  {  // a launch the hardware refuses
    float* out = dev<float>(1);
    TOVA_LAUNCH(block_sum, 1, 2048, 0)(out, 1, out);
    const cudaError_t e = cudaGetLastError();
    expect(e == cudaErrorInvalidConfiguration, "2048 threads per block are refused");
    expect(cudaGetLastError() == cudaSuccess, "a launch error is cleared once read");
    TOVA_LAUNCH(block_sum, dim3(1, 70000), 32, 0)(out, 1, out);
    expect(cudaGetLastError() == cudaErrorInvalidConfiguration, "grid.y over 65535 is refused");
    cudaFree(out);
  }
  {  // stream capture and graphs: recorded, not run; run per launch with the arguments of the
     // capture and the host bytes of the launch; updated in place when the nodes match
    cudaStream_t s = nullptr;
    expect(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream creation");
    float* pinned = nullptr;
    cudaMallocHost(&pinned, 8 * sizeof(float));
    float* d_in = dev<float>(8);
    float* d_out = dev<float>(8);
    float* back = nullptr;
    cudaMallocHost(&back, 8 * sizeof(float));
    for (int i = 0; i < 8; ++i) pinned[i] = static_cast<float>(i);
    expect(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "capture begins");
    cudaMemcpyAsync(d_in, pinned, 8 * sizeof(float), cudaMemcpyHostToDevice, s);
    TOVA_LAUNCH(scale, 1, 32, s)(d_in, 2.0f, d_out, 8);
    cudaMemcpyAsync(back, d_out, 8 * sizeof(float), cudaMemcpyDeviceToHost, s);
    cudaGraph_t g = nullptr;
    expect(cudaStreamEndCapture(s, &g) == cudaSuccess && g, "capture ends with a graph");
    cudaStreamSynchronize(s);
    back[3] = -1.0f;
    cudaDeviceSynchronize();
    expect(back[3] == -1.0f, "captured work does not run before its graph is launched");
    cudaGraphExec_t x = nullptr;
    expect(cudaGraphInstantiate(&x, g, 0) == cudaSuccess, "graph instantiation");
    cudaGraphLaunch(x, s);
    cudaStreamSynchronize(s);
    expect(back[3] == 6.0f, "a launched graph runs its copies and kernel");
    pinned[3] = 10.0f;
    cudaGraphLaunch(x, s);
    cudaStreamSynchronize(s);
    expect(back[3] == 20.0f, "a memcpy node reads the host bytes of its launch");
    // the same nodes, other arguments: updated in place
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    cudaMemcpyAsync(d_in, pinned, 8 * sizeof(float), cudaMemcpyHostToDevice, s);
    TOVA_LAUNCH(scale, 1, 32, s)(d_in, 3.0f, d_out, 8);
    cudaMemcpyAsync(back, d_out, 8 * sizeof(float), cudaMemcpyDeviceToHost, s);
    cudaGraph_t g2 = nullptr;
    cudaStreamEndCapture(s, &g2);
    cudaGraphExecUpdateResultInfo info;
    expect(cudaGraphExecUpdate(x, g2, &info) == cudaSuccess, "an update with the same nodes succeeds");
    cudaGraphLaunch(x, s);
    cudaStreamSynchronize(s);
    expect(back[3] == 30.0f, "an updated graph runs with the new kernel arguments");
    // another kernel: the update fails (and says so), the graph is unchanged
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    TOVA_LAUNCH(add_one, 1, 32, s)(d_out, 8);
    TOVA_LAUNCH(add_one, 1, 32, s)(d_out, 8);
    cudaMemcpyAsync(back, d_out, 8 * sizeof(float), cudaMemcpyDeviceToHost, s);
    cudaGraph_t g3 = nullptr;
    cudaStreamEndCapture(s, &g3);
    expect(cudaGraphExecUpdate(x, g3, &info) == cudaErrorGraphExecUpdateFailure &&
               info.result == cudaGraphExecUpdateErrorFunctionChanged,
           "an update with another kernel fails");
    expect(cudaGetLastError() == cudaErrorGraphExecUpdateFailure, "a failed update is the last error until read");
    cudaGraphDestroy(g);
    cudaGraphDestroy(g2);
    cudaGraphDestroy(g3);
    cudaGraphExecDestroy(x);
    // calls a capture forbids: each fails and invalidates it
    const char* names[3] = {"cudaMalloc", "cudaStreamSynchronize", "cudaMemcpy"};
    for (int k = 0; k < 3; ++k) {
      cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
      TOVA_LAUNCH(add_one, 1, 32, s)(d_out, 8);
      float* extra = nullptr;
      const cudaError_t e = k == 0   ? cudaMalloc(&extra, 16)
                            : k == 1 ? cudaStreamSynchronize(s)
                                     : cudaMemcpy(back, d_out, 4, cudaMemcpyDeviceToHost);
      cudaGraph_t bad = nullptr;
      const cudaError_t end = cudaStreamEndCapture(s, &bad);
      expect(e == cudaErrorStreamCaptureUnsupported && end == cudaErrorStreamCaptureInvalidated && !bad,
             std::string(names[k]) + " during a capture fails and invalidates it");
      cudaGetLastError();
    }
    // the legacy stream while a blocking stream captures: invalidated; while a non-blocking one does: fine
    cudaStream_t blocking = nullptr;
    cudaStreamCreateWithFlags(&blocking, cudaStreamDefault);
    for (cudaStream_t c : {blocking, s}) {
      cudaStreamBeginCapture(c, cudaStreamCaptureModeThreadLocal);
      TOVA_LAUNCH(add_one, 1, 32, c)(d_out, 8);
      const cudaError_t e = cudaMemsetAsync(d_in, 0, 4, 0);
      cudaGraph_t gg = nullptr;
      const cudaError_t end = cudaStreamEndCapture(c, &gg);
      if (c == blocking)
        expect(e == cudaErrorStreamCaptureImplicit && end == cudaErrorStreamCaptureInvalidated,
               "legacy-stream work during a blocking stream's capture invalidates it");
      else
        expect(e == cudaSuccess && end == cudaSuccess && gg, "legacy-stream work leaves a non-blocking capture alone");
      if (gg) cudaGraphDestroy(gg);
      cudaGetLastError();
    }
    expect(cudaStreamBeginCapture(0, cudaStreamCaptureModeThreadLocal) == cudaErrorStreamCaptureUnsupported,
           "the legacy stream cannot be captured");
    cudaGetLastError();
    // Another thread's device-wide wait or free (pessimistic: drivers have been seen to do this):
    // the capture is invalidated whatever its mode but relaxed, the operations after it fail; the
    // wait fails too, the free goes on. Another thread's wait for its own stream leaves it alone.
    cudaStream_t other = nullptr;
    cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking);
    const char* others[3] = {"cudaDeviceSynchronize", "cudaFree", "cudaStreamSynchronize of its stream"};
    for (int k = 0; k < 3; ++k) {
      cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
      TOVA_LAUNCH(add_one, 1, 32, s)(d_out, 8);
      cudaError_t e = cudaSuccess;
      std::thread([&] {
        float* tmp = nullptr;
        if (k == 1) cudaMalloc(&tmp, 16);
        e = k == 0 ? cudaDeviceSynchronize() : k == 1 ? cudaFree(tmp) : cudaStreamSynchronize(other);
      }).join();
      TOVA_LAUNCH(add_one, 1, 32, s)(d_out, 8);
      const cudaError_t after = cudaGetLastError();
      cudaGraph_t gg = nullptr;
      const cudaError_t end = cudaStreamEndCapture(s, &gg);
      const std::string name = std::string("another thread's ") + others[k];
      if (k == 2) {
        expect(e == cudaSuccess && after == cudaSuccess && end == cudaSuccess && gg, name + " leaves a capture alone");
      } else {
        expect(e == (k == 0 ? cudaErrorStreamCaptureUnsupported : cudaSuccess), name + " during a capture: its result");
        expect(after == cudaErrorStreamCaptureInvalidated && end == cudaErrorStreamCaptureInvalidated && !gg,
               name + " invalidates a thread-local capture, and the operations after it fail");
      }
      if (gg) cudaGraphDestroy(gg);
      cudaGetLastError();
    }
    cudaStreamDestroy(other);
    // Injected breaks (TOVA_SIM_BREAK_CAPTURES=2): the 2nd capture fails at its first operation,
    // the 4th at its end; the 1st and 3rd are whole.
    setenv("TOVA_SIM_BREAK_CAPTURES", "2", 1);
    for (int k = 1; k <= 4; ++k) {
      cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
      TOVA_LAUNCH(add_one, 1, 32, s)(d_out, 8);
      const cudaError_t first = cudaGetLastError();
      cudaGraph_t gg = nullptr;
      const cudaError_t end = cudaStreamEndCapture(s, &gg);
      const bool whole = first == cudaSuccess && end == cudaSuccess && gg;
      const bool broken_first = first == cudaErrorStreamCaptureInvalidated && end == cudaErrorStreamCaptureInvalidated;
      const bool broken_end = first == cudaSuccess && end == cudaErrorStreamCaptureInvalidated && !gg;
      if (k % 2 == 1) expect(whole, "a capture between injected breaks is whole");
      if (k == 2) expect(broken_first, "an injected break at a capture's first operation");
      if (k == 4) expect(broken_end, "an injected break at a capture's end");
      if (gg) cudaGraphDestroy(gg);
      cudaGetLastError();
    }
    unsetenv("TOVA_SIM_BREAK_CAPTURES");
    cudaStreamDestroy(blocking);
    cudaStreamDestroy(s);
    cudaFreeHost(pinned);
    cudaFreeHost(back);
    cudaFree(d_in);
    cudaFree(d_out);
  }
  // The faults below are sticky, as on a GPU: each ends the simulated device's life, so they run
  // in child processes.
  struct Fault {
    const char* name;
    void (*run)();
    const char* says;
  };
  std::vector<Fault> faults = {
      {"shuffle after lanes exited",
       [] {
         float* out = dev<float>(32);
         TOVA_LAUNCH(shuffle_after_exit, 1, 32, 0)(out);
         const cudaError_t e = cudaDeviceSynchronize();
         std::printf("%d %s\n", static_cast<int>(e), cudaGetErrorString(e));
       },
       "which has exited"},
      {"divergent collectives",
       [] {
         float* out = dev<float>(32);
         TOVA_LAUNCH(divergent_collectives, 1, 32, 0)(out);
         const cudaError_t e = cudaDeviceSynchronize();
         std::printf("%d %s\n", static_cast<int>(e), cudaGetErrorString(e));
       },
       "deadlocks"},
      {"copy past an allocation",
       [] {
         float* d = dev<float>(4);
         float h[8] = {};
         const cudaError_t e = cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice);
         std::printf("%d %s\n", static_cast<int>(e), cudaGetErrorString(e));
       },
       "outside a device allocation"},
  };
#if defined(__SANITIZE_ADDRESS__)
  faults.push_back({"a kernel writing past its allocation (AddressSanitizer)",
                    [] {
                      float* out = dev<float>(5);
                      TOVA_LAUNCH(write_past, 1, 32, 0)(out, 5);
                      const cudaError_t e = cudaDeviceSynchronize();
                      std::printf("%d %s\n", static_cast<int>(e), cudaGetErrorString(e));
                    },
                    "heap-buffer-overflow"});
#endif
  for (const Fault& f : faults) {
    std::fflush(stdout);
    int fd[2];
    if (pipe(fd) != 0) return 2;
    const pid_t pid = fork();
    if (pid == 0) {  // the child: the fault, its error on the pipe
      dup2(fd[1], 1);
      dup2(fd[1], 2);
      f.run();
      std::fflush(stdout);
      _exit(0);
    }
    close(fd[1]);
    std::string said;
    char buf[512];
    for (ssize_t k; (k = read(fd[0], buf, sizeof buf)) > 0;) said.append(buf, static_cast<size_t>(k));
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    expect(WIFEXITED(status) && said.rfind("0 ", 0) != 0 && said.find(f.says) != std::string::npos,
           std::string(f.name) + ": the simulator said '" + said + "'");
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
