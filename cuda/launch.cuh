// Kernel launches written once for nvcc and for the CPU simulator (cuda/sim/), issued now or
// recorded (recorder.h): TOVA_LAUNCH(kernel, grid, block, queue)(args...) is
// kernel<<<grid, block, 0, stream>>>(args...) on the queue's stream, or, in a recorded step, the
// same launch recorded (its key: the kernel, grid, block and the arguments' bytes, converted to
// the kernel's parameter types as the launch converts them).
#pragma once

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#include "recorder.h"

namespace tova {
namespace cuda {

#if defined(TOVA_CUDA_SIM)
template <class... P>
cudaError_t issue_kernel(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t s, const std::tuple<P...>& args) {
  std::apply([&](const P&... a) { ::tova_sim::launch(kernel, grid, block, s)(a...); }, args);
  return cudaPeekAtLastError();  // left for check_launch, as a launch leaves it
}
#else
template <class... P, size_t... I>
cudaError_t issue_kernel_at(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t s, std::tuple<P...>& args,
                            std::index_sequence<I...>) {
  void* ptrs[] = {static_cast<void*>(&std::get<I>(args))..., nullptr};
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, ptrs, 0, s);
}
template <class... P>
cudaError_t issue_kernel(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t s, const std::tuple<P...>& args) {
  std::tuple<P...> copy = args;  // the runtime reads the arguments during the call
  return issue_kernel_at(kernel, grid, block, s, copy, std::index_sequence_for<P...>{});
}
#endif

// (A kernel's parameter types carry no top-level const: they are not part of its type.)
template <class... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  Queue q;
  template <class... A>
  void operator()(A&&... a) const {
    const std::tuple<P...> args(static_cast<P>(std::forward<A>(a))...);
    if (!q.rec) {
      issue_kernel(kernel, grid, block, q.stream, args);  // its error: check_launch after it
      return;
    }
    Recorder& r = *q.rec;
    r.new_key();
    r.add(uint8_t{'K'});
    r.add(kernel);
    for (const dim3& d : {grid, block}) {
      r.add(d.x);
      r.add(d.y);
      r.add(d.z);
    }
    std::apply([&](const P&... x) { (r.add(x), ...); }, args);
    if (r.matches()) return;
    auto* k = kernel;
    const dim3 g = grid, b = block;
    r.put([k, g, b, args](cudaStream_t s) { return issue_kernel(k, g, b, s, args); });
  }
};

template <class... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, Queue q) {
  return {kernel, grid, block, q};
}

}  // namespace cuda
}  // namespace tova

#define TOVA_LAUNCH(kernel, grid, block, queue) ::tova::cuda::launch(kernel, grid, block, queue)
