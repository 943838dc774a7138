// The quant type table: one entry per ggml tensor type with its block layout and the facts
// every backend shares (block size, bytes per block, the activation format matrix products
// quantize to, whether tova can compute with it). No kernels: the CPU ones are in
// cpu/kernels_cpu.h (a table indexed by the same type ids); the block structs in quant_blocks.h.
// Adding a type is one entry in quant.cpp plus its kernels in each backend's table.
//
// Matrix products quantize the float32 activations once per row of input to the weight type's
// `vec_dot_type` (Q8_0 for the symmetric 32-element formats, Q8_1 for those with a minimum,
// Q8_K for the k-quants, F32 for float types) and then take one dot product per weight row,
// as ggml does.
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

struct TypeTraits {
  const char* name = nullptr;  // "Q4_K" (nullptr: id unknown)
  int64_t block_size = 0;      // elements per block
  size_t type_size = 0;        // bytes per block
  bool is_quantized = false;
  // The activation format a matrix product with weights of this type quantizes its input to.
  GgmlType vec_dot_type = GgmlType::F32;
  // tova has kernels for it (dequantize, vec_dot, vec_dot_f32); false: a layout tova can
  // validate and skip, not compute with (e.g. the IQ types).
  bool computable = false;
};

// Traits of a type id; returns an entry with name == nullptr for unknown ids.
const TypeTraits& type_traits(uint32_t type_id);
inline const TypeTraits& type_traits(GgmlType t) { return type_traits(static_cast<uint32_t>(t)); }

bool type_known(uint32_t type_id);
// Known and computable (TypeTraits::computable): tova can compute with it.
bool type_supported(uint32_t type_id);
// Throws FormatError naming `what` (a tensor) when the type cannot be computed with.
const TypeTraits& require_computable(uint32_t type_id, const std::string& what);

// Bytes taken by n elements of the type (n % block_size == 0).
size_t row_bytes(GgmlType t, int64_t n);

// Half precision helpers (IEEE binary16 and bfloat16), exact.
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);  // round to nearest even

}  // namespace tova
