// Kernel launches written once for nvcc and for the CPU simulator (cuda/sim/):
// TOVA_LAUNCH(kernel, grid, block)(args...) is kernel<<<grid, block>>>(args...).
#pragma once

#if defined(TOVA_CUDA_SIM)
#define TOVA_LAUNCH(kernel, grid, block) ::tova_sim::launch(kernel, grid, block)
#else
#define TOVA_LAUNCH(kernel, grid, block) kernel<<<grid, block>>>
#endif
