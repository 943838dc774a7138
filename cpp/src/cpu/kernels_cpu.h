// The CPU kernel table: for each ggml type id (the ids of the type table, quant.h) the CPU
// kernels that decode, encode and multiply it, chosen once at run time: the portable scalar
// kernels, then the AVX2 ones where cpu_features() says they can run. Also the plain float
// helpers of attention, dispatched the same way. The layout facts (block size, vec_dot_type,
// whether a type is computable) are in the type table, not here.
//
// Kernels work on whole blocks: every `n` below is a multiple of the type's block_size.
// A matrix product quantizes its float32 activations with the `quantize` of the weight type's
// vec_dot_type, then calls the weight type's `vec_dot` (or `vec_dot_rows`) per weight row.
//
// Code outside cpu/ does not call these kernels, except through dequantize_row() where it needs
// float values on the host (the model loader's small vectors, GGUFFile.tensor in Python).
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant.h"

namespace tova {

// Dequantize n values (n % block_size == 0) from blocks at `src` into float32 `dst`.
using DequantizeFn = void (*)(const void* src, float* dst, int64_t n);
// Quantize n float32 values into blocks of this type (used for activation types Q8_0 / Q8_K,
// and for writing KV entries).
using QuantizeFn = void (*)(const float* src, void* dst, int64_t n);
// Dot product of n values: x in this type, y in this type's vec_dot_type.
using VecDotFn = float (*)(int64_t n, const void* x, const void* y);
// Dot product of n values: x in this type, y plain float32 (reference / fallback path).
using VecDotF32Fn = float (*)(int64_t n, const void* x, const float* y);
// Dot products of one row x with n_rows (1..kMaxDotRows) activation rows `stride` bytes apart:
// out[k] = vec_dot(n, x, y + k * stride), bit for bit. The weight block is decoded once for all
// rows, which is what makes a prompt's matrix products faster than one row at a time.
using VecDotRowsFn = void (*)(int64_t n, const void* x, const void* y, size_t stride, int n_rows,
                              float* out);
constexpr int kMaxDotRows = 4;

// All null for a type without CPU kernels (unknown ids, layout-only types). Every computable
// type of the type table has dequantize, vec_dot and vec_dot_f32 (a unit test checks it).
struct CpuKernels {
  DequantizeFn dequantize = nullptr;
  QuantizeFn quantize = nullptr;        // only where tova needs to write the type
  VecDotFn vec_dot = nullptr;           // y in the type's vec_dot_type
  VecDotF32Fn vec_dot_f32 = nullptr;    // always available where dequantize is
  VecDotRowsFn vec_dot_rows = nullptr;  // optional (SIMD tables only); else vec_dot per row
};

// The kernels this CPU runs (the best it supports, chosen at start-up).
const CpuKernels& cpu_kernels(uint32_t type_id);
inline const CpuKernels& cpu_kernels(GgmlType t) { return cpu_kernels(static_cast<uint32_t>(t)); }

// The same table with only the portable scalar kernels, whatever this CPU supports (tests compare
// its results with the SIMD kernels of cpu_kernels()).
const CpuKernels& scalar_cpu_kernels(uint32_t type_id);

// Decodes n values (a whole number of blocks) of a computable type to float32 on the host, with
// this CPU's kernel. For generic code that needs floats outside a backend (the model loader's
// norm vectors, GGUFFile.tensor); throws ArgumentError for a type without a CPU dequantizer.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// Which SIMD level the kernels use ("scalar", "avx2", ...); for `tova info` and benchmarks.
const char* kernel_isa();

// Plain float helpers for attention, dispatched like vec_dot (any n, no alignment needed).
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f16_f32(const uint16_t* a, const float* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);   // y += a * x
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);  // y += a * x

// Attention over rows gathered from a KV store: row j is base + idx[j] * stride (elements), d
// long. scores[j] = scale * (row_j . q); out[0..d) += sum_j p[j] * row_j. The SIMD versions
// work on several rows at once (q and out stay in registers); any d.
void gather_dot_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q,
                    int d, float scale, float* scores);
void gather_dot_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                    int d, float scale, float* scores);
void gather_axpy_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p,
                     int d, float* out);
void gather_axpy_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                     int d, float* out);

}  // namespace tova
