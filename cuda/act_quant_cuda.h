// The input rows of a matrix product quantized on the device to the weight type's vec_dot_type
// (act_quant_cuda.cu), for the integer products of matvec_int_cuda.cu.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops_cuda.h"

namespace tova {
namespace cuda {

// Bytes of a buffer for n rows of cols.
size_t act_rows_bytes(int64_t cols, int n);

// Elements a block of type t (32 or 256).
int act_block(ActType t);

// The layout of n rows of cols in buf (act_rows_bytes(cols, n) bytes or more) for type t.
ActRows act_rows(ActType t, int n, int64_t cols, void* buf, size_t bytes);

// x (n float rows of cols) quantized into buf (act_rows_bytes(cols, n) bytes or more) as the CPU
// quantizes its activations for type t.
ActRows quantize_act(Queue s, ActType t, const float* x, int n, int64_t cols, void* buf, size_t bytes);
// The same into a layout made by act_rows, `block` (act_block) elements a block.
void quantize_rows(Queue s, const float* x, int n, const ActRows& a, int block);

}  // namespace cuda
}  // namespace tova
