// The chunk-decoding matrix product (matvec_cuda.cu) for the weight types of the real models.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops_cuda.h"
#include "quant.h"

namespace tova {
namespace cuda {

// The product of cuda::matmul. False (nothing launched) when the type has no chunk decoder or
// x / W are not aligned for its vector loads: the caller then uses the per-element kernel.
// glu 1 (SiLU) or 2 (GELU): the product of cuda::matmul_glu instead (two targets, gate and up).
// sm_count: MatConfig's. tail: run by the kernel's last block (Tail; kind None: nothing).
bool matvec(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n, int glu,
            int sm_count, const Tail& tail);

// The same with the CPU's default arithmetic (matvec_int_cuda.cu): x quantized to the type's
// vec_dot_type into cfg.act (unless cfg.act_state says it is there already; then kept so),
// integer products, each block's float step as the CPU's. False (nothing launched) for a type
// without it, or without cfg.act.
bool matvec_int(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n, int glu,
                const MatConfig& cfg, const Tail& tail);
bool matvec_int_supports(GgmlType t);
// The 8-bit type matvec_int quantizes the input of a product of type t to (t supported).
ActType matvec_int_act(GgmlType t);

}  // namespace cuda
}  // namespace tova
