// The input rows of a matrix product quantized on the device to the weight type's vec_dot_type
// (act_quant_cuda.cu), for the integer products of matvec_int_cuda.cu.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops_cuda.h"

namespace tova {
namespace cuda {

// n rows of `cols` quants (row i at q + i * cols) with, per block b of row i, d[i * nb + b] and
// s[i * nb + b] (nb = cols / 32: q8_0 / q8_1; cols / 256: q8_K, whose s is unused), and for q8_K
// the sums of 16 quants at bsum[i * cols / 16 + g]. Scales as floats, fp16-rounded where the CPU
// stores fp16.
struct ActRows {
  int8_t* q = nullptr;
  float* d = nullptr;
  float* s = nullptr;
  int* bsum = nullptr;
  int64_t cols = 0;
};

// Bytes of a buffer for n rows of cols.
size_t act_rows_bytes(int64_t cols, int n);

// Elements a block of type t (32 or 256).
int act_block(ActType t);

// The layout of n rows of cols in buf (act_rows_bytes(cols, n) bytes or more) for type t.
ActRows act_rows(ActType t, int n, int64_t cols, void* buf, size_t bytes);

// x (n float rows of cols) quantized into buf (act_rows_bytes(cols, n) bytes or more) as the CPU
// quantizes its activations for type t.
ActRows quantize_act(Queue s, ActType t, const float* x, int n, int64_t cols, void* buf, size_t bytes);

}  // namespace cuda
}  // namespace tova
