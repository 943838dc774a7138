// The quant type table: one entry per ggml tensor type (block size, bytes per block, kernels).
// Adding a type is one table entry in quant.cpp plus its kernels in a quant_*.cpp file.
//
// Kernels work on whole blocks: every `n` below is a multiple of the type's block_size.
// Matrix products quantize the float32 activations once per row of input to the weight type's
// `vec_dot_type` (Q8_0 for the symmetric 32-element formats, Q8_1 for those with a minimum,
// Q8_K for the k-quants, F32 for float types)
// and then call `vec_dot` for every weight row, as ggml does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tova {

// Values are the ggml / GGUF type ids (they are stored in the file).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

constexpr uint32_t kGgmlTypeLimit = 40;  // ids below this may be known

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

struct TypeTraits {
  const char* name = nullptr;     // "Q4_K" (nullptr: id unknown)
  int64_t block_size = 0;         // elements per block
  size_t type_size = 0;           // bytes per block
  bool is_quantized = false;
  DequantizeFn dequantize = nullptr;  // nullptr: known layout, no kernels (e.g. IQ types)
  QuantizeFn quantize = nullptr;      // only where tova needs to write the type
  GgmlType vec_dot_type = GgmlType::F32;
  VecDotFn vec_dot = nullptr;         // uses the best kernel this CPU has (chosen at start-up)
  VecDotF32Fn vec_dot_f32 = nullptr;  // always available where dequantize is
  VecDotRowsFn vec_dot_rows = nullptr;  // optional (SIMD tables only); else vec_dot per row
};

// Traits of a type id; returns an entry with name == nullptr for unknown ids.
const TypeTraits& type_traits(uint32_t type_id);
inline const TypeTraits& type_traits(GgmlType t) { return type_traits(static_cast<uint32_t>(t)); }

// The same table with only the portable scalar kernels, whatever this CPU supports (tests compare
// its results with the SIMD kernels of type_traits()).
const TypeTraits& scalar_type_traits(uint32_t type_id);

bool type_known(uint32_t type_id);
// Known and with kernels (dequantize, vec_dot, vec_dot_f32): tova can compute with it.
bool type_supported(uint32_t type_id);
// Throws FormatError naming `what` (a tensor) when the type cannot be computed with.
const TypeTraits& require_computable(uint32_t type_id, const std::string& what);

// Bytes taken by n elements of the type (n % block_size == 0).
size_t row_bytes(GgmlType t, int64_t n);

// Which SIMD level the kernels use ("scalar", "avx2", ...); for `tova info` and benchmarks.
const char* kernel_isa();

// Half precision helpers (IEEE binary16 and bfloat16), exact.
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);  // round to nearest even

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
