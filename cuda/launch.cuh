// Kernel launches written once for nvcc and for the CPU simulator (cuda/sim/):
// TOVA_LAUNCH(kernel, grid, block, stream)(args...) is kernel<<<grid, block, 0, stream>>>(args...).
#pragma once

#if defined(TOVA_CUDA_SIM)
#define TOVA_LAUNCH(kernel, grid, block, stream) ::tova_sim::launch(kernel, grid, block, stream)
#else
#define TOVA_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif
