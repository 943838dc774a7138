// The type table: every ggml type id with its layout, and kernels where tova computes with it.
// Two tables are built once: the portable one (scalar kernels only) and the one used by the
// engine, which swaps in the SIMD kernels this CPU supports.
#include "quant.h"

#include <array>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "cpu/cpu_features.h"
#include "cpu/quant_kernels.h"

namespace tova {

// --- half precision -------------------------------------------------------------------------

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf, or NaN with its payload kept
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalize into a float32 normal.
    int e = 113;  // exponent of 2^-14 in float32 bias (127 - 14)
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t fp32_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {
    if (ax == 0x7F800000u) return sign | 0x7C00;
    return static_cast<uint16_t>(sign | 0x7E00 | ((ax >> 13) & 0x3FF));  // quiet NaN
  }
  if (ax >= 0x477FF000u) return sign | 0x7C00;  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {
    // Result is a half subnormal (or zero, or the smallest normal after rounding):
    // q = value / 2^-24, rounded to nearest even.
    if (ax <= 0x33000000u) return sign;  // <= 2^-25 rounds to zero (2^-25 is a tie to even 0)
    const uint32_t m = (ax & 0x7FFFFF) | 0x800000;
    const int shift = 126 - static_cast<int>(ax >> 23);  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even; a carry
  // out of the mantissa correctly bumps the exponent.
  uint32_t h = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_fp32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t fp32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

// --- the table --------------------------------------------------------------------------------

namespace {

using Table = std::array<TypeTraits, kGgmlTypeLimit>;

TypeTraits layout(const char* name, int64_t block_size, size_t type_size, bool quantized) {
  TypeTraits t;
  t.name = name;
  t.block_size = block_size;
  t.type_size = type_size;
  t.is_quantized = quantized;
  return t;
}

TypeTraits& set(Table& table, GgmlType id, TypeTraits traits) {
  return table[static_cast<uint32_t>(id)] = traits;
}

// vec_dot of a type whose activation type is F32: the y of vec_dot is float32 as well.
template <VecDotF32Fn F>
float f32_activations(int64_t n, const void* x, const void* y) {
  return F(n, x, static_cast<const float*>(y));
}

// x . float32 y for any quantized type, one block at a time through its dequantizer.
template <DequantizeFn F, class Block, int64_t B>
float dequant_dot(int64_t n, const void* x, const float* y) {
  return scalar::vec_dot_dequant_f32(F, B, sizeof(Block), n, x, y);
}

// A plain number type (block size 1) whose activations are float32.
template <VecDotF32Fn Dot>
void number(Table& t, GgmlType id, const char* name, size_t size, DequantizeFn deq) {
  TypeTraits& e = set(t, id, layout(name, 1, size, false));
  e.dequantize = deq;
  e.vec_dot_f32 = Dot;
  e.vec_dot_type = GgmlType::F32;
  e.vec_dot = f32_activations<Dot>;
}

template <class Block, int64_t B, DequantizeFn Deq>
void quant(Table& t, GgmlType id, const char* name, QuantizeFn q, GgmlType dot_type, VecDotFn dot) {
  TypeTraits& e = set(t, id, layout(name, B, sizeof(Block), true));
  e.dequantize = Deq;
  e.quantize = q;
  e.vec_dot_type = dot_type;
  e.vec_dot = dot;
  e.vec_dot_f32 = dequant_dot<Deq, Block, B>;
}

Table scalar_table() {
  Table t{};
  namespace s = scalar;
  // Layouts only: tova can validate and skip these, not compute with them.
  set(t, GgmlType::IQ2_XXS, layout("IQ2_XXS", 256, 66, true));
  set(t, GgmlType::IQ2_XS, layout("IQ2_XS", 256, 74, true));
  set(t, GgmlType::IQ3_XXS, layout("IQ3_XXS", 256, 98, true));
  set(t, GgmlType::IQ1_S, layout("IQ1_S", 256, 50, true));
  set(t, GgmlType::IQ4_NL, layout("IQ4_NL", 32, 18, true));
  set(t, GgmlType::IQ3_S, layout("IQ3_S", 256, 110, true));
  set(t, GgmlType::IQ2_S, layout("IQ2_S", 256, 82, true));
  set(t, GgmlType::IQ4_XS, layout("IQ4_XS", 256, 136, true));
  set(t, GgmlType::IQ1_M, layout("IQ1_M", 256, 56, true));
  set(t, GgmlType::TQ1_0, layout("TQ1_0", 256, 54, true));
  set(t, GgmlType::TQ2_0, layout("TQ2_0", 256, 66, true));
  set(t, GgmlType::MXFP4, layout("MXFP4", 32, 17, true));

  number<s::vec_dot_f32_f32>(t, GgmlType::F32, "F32", 4, s::dequantize_f32);
  number<s::vec_dot_f16_f32>(t, GgmlType::F16, "F16", 2, s::dequantize_f16);
  number<s::vec_dot_bf16_f32>(t, GgmlType::BF16, "BF16", 2, s::dequantize_bf16);
  number<s::vec_dot_f64_f32>(t, GgmlType::F64, "F64", 8, s::dequantize_f64);
  number<s::vec_dot_i8_f32>(t, GgmlType::I8, "I8", 1, s::dequantize_i8);
  number<s::vec_dot_i16_f32>(t, GgmlType::I16, "I16", 2, s::dequantize_i16);
  number<s::vec_dot_i32_f32>(t, GgmlType::I32, "I32", 4, s::dequantize_i32);
  number<s::vec_dot_i64_f32>(t, GgmlType::I64, "I64", 8, s::dequantize_i64);
  t[static_cast<uint32_t>(GgmlType::F32)].quantize = s::quantize_f32;
  t[static_cast<uint32_t>(GgmlType::F16)].quantize = s::quantize_f16;
  t[static_cast<uint32_t>(GgmlType::BF16)].quantize = s::quantize_bf16;

  constexpr auto Q8_0 = GgmlType::Q8_0;
  constexpr auto Q8_1 = GgmlType::Q8_1;
  constexpr auto Q8_K = GgmlType::Q8_K;
  quant<BlockQ4_0, kQK, s::dequantize_q4_0>(t, GgmlType::Q4_0, "Q4_0", s::quantize_q4_0, Q8_0, s::vec_dot_q4_0_q8_0);
  quant<BlockQ4_1, kQK, s::dequantize_q4_1>(t, GgmlType::Q4_1, "Q4_1", s::quantize_q4_1, Q8_1, s::vec_dot_q4_1_q8_1);
  quant<BlockQ5_0, kQK, s::dequantize_q5_0>(t, GgmlType::Q5_0, "Q5_0", s::quantize_q5_0, Q8_0, s::vec_dot_q5_0_q8_0);
  quant<BlockQ5_1, kQK, s::dequantize_q5_1>(t, GgmlType::Q5_1, "Q5_1", s::quantize_q5_1, Q8_1, s::vec_dot_q5_1_q8_1);
  quant<BlockQ8_0, kQK, s::dequantize_q8_0>(t, GgmlType::Q8_0, "Q8_0", s::quantize_q8_0, Q8_0, s::vec_dot_q8_0_q8_0);
  quant<BlockQ8_1, kQK, s::dequantize_q8_1>(t, GgmlType::Q8_1, "Q8_1", s::quantize_q8_1, Q8_0, s::vec_dot_q8_1_q8_0);
  quant<BlockQ2_K, kQK_K, s::dequantize_q2_K>(t, GgmlType::Q2_K, "Q2_K", nullptr, Q8_K, s::vec_dot_q2_K_q8_K);
  quant<BlockQ3_K, kQK_K, s::dequantize_q3_K>(t, GgmlType::Q3_K, "Q3_K", nullptr, Q8_K, s::vec_dot_q3_K_q8_K);
  quant<BlockQ4_K, kQK_K, s::dequantize_q4_K>(t, GgmlType::Q4_K, "Q4_K", nullptr, Q8_K, s::vec_dot_q4_K_q8_K);
  quant<BlockQ5_K, kQK_K, s::dequantize_q5_K>(t, GgmlType::Q5_K, "Q5_K", nullptr, Q8_K, s::vec_dot_q5_K_q8_K);
  quant<BlockQ6_K, kQK_K, s::dequantize_q6_K>(t, GgmlType::Q6_K, "Q6_K", nullptr, Q8_K, s::vec_dot_q6_K_q8_K);
  quant<BlockQ8_K, kQK_K, s::dequantize_q8_K>(t, GgmlType::Q8_K, "Q8_K", s::quantize_q8_K, Q8_K, s::vec_dot_q8_K_q8_K);
  return t;
}

bool use_avx2() {
#if defined(TOVA_X86)
  return cpu_features().has_avx2_kernels();
#else
  return false;
#endif
}

Table best_table() {
  Table t = scalar_table();
#if defined(TOVA_X86)
  if (use_avx2()) {
    auto at = [&t](GgmlType id) -> TypeTraits& { return t[static_cast<uint32_t>(id)]; };
    at(GgmlType::F32).vec_dot_f32 = avx2::vec_dot_f32_f32;
    at(GgmlType::F16).vec_dot_f32 = avx2::vec_dot_f16_f32;
    at(GgmlType::BF16).vec_dot_f32 = avx2::vec_dot_bf16_f32;
    at(GgmlType::F32).vec_dot = f32_activations<avx2::vec_dot_f32_f32>;
    at(GgmlType::F16).vec_dot = f32_activations<avx2::vec_dot_f16_f32>;
    at(GgmlType::BF16).vec_dot = f32_activations<avx2::vec_dot_bf16_f32>;
    at(GgmlType::F16).quantize = avx2::quantize_f16;
    at(GgmlType::Q8_0).quantize = avx2::quantize_q8_0;
    at(GgmlType::Q8_1).quantize = avx2::quantize_q8_1;
    at(GgmlType::Q8_K).quantize = avx2::quantize_q8_K;
    at(GgmlType::Q4_0).vec_dot = avx2::vec_dot_q4_0_q8_0;
    at(GgmlType::Q4_1).vec_dot = avx2::vec_dot_q4_1_q8_1;
    at(GgmlType::Q5_0).vec_dot = avx2::vec_dot_q5_0_q8_0;
    at(GgmlType::Q5_1).vec_dot = avx2::vec_dot_q5_1_q8_1;
    at(GgmlType::Q8_0).vec_dot = avx2::vec_dot_q8_0_q8_0;
    at(GgmlType::Q4_0).vec_dot_f32 = avx2::vec_dot_q4_0_f32;
    at(GgmlType::Q8_0).vec_dot_f32 = avx2::vec_dot_q8_0_f32;
    at(GgmlType::Q4_0).dequantize = avx2::dequantize_q4_0;
    at(GgmlType::Q8_0).dequantize = avx2::dequantize_q8_0;
    at(GgmlType::Q2_K).vec_dot = avx2::vec_dot_q2_K_q8_K;
    at(GgmlType::Q3_K).vec_dot = avx2::vec_dot_q3_K_q8_K;
    at(GgmlType::Q4_K).vec_dot = avx2::vec_dot_q4_K_q8_K;
    at(GgmlType::Q5_K).vec_dot = avx2::vec_dot_q5_K_q8_K;
    at(GgmlType::Q6_K).vec_dot = avx2::vec_dot_q6_K_q8_K;
    at(GgmlType::Q8_K).vec_dot = avx2::vec_dot_q8_K_q8_K;
    at(GgmlType::Q4_0).vec_dot_rows = avx2::vec_dot_rows_q4_0_q8_0;
    at(GgmlType::Q5_0).vec_dot_rows = avx2::vec_dot_rows_q5_0_q8_0;
    at(GgmlType::Q8_0).vec_dot_rows = avx2::vec_dot_rows_q8_0_q8_0;
    at(GgmlType::Q4_1).vec_dot_rows = avx2::vec_dot_rows_q4_1_q8_1;
    at(GgmlType::Q5_1).vec_dot_rows = avx2::vec_dot_rows_q5_1_q8_1;
    at(GgmlType::Q4_K).vec_dot_rows = avx2::vec_dot_rows_q4_K_q8_K;
    at(GgmlType::Q5_K).vec_dot_rows = avx2::vec_dot_rows_q5_K_q8_K;
    at(GgmlType::Q6_K).vec_dot_rows = avx2::vec_dot_rows_q6_K_q8_K;
  }
#endif
  return t;
}

const TypeTraits kUnknown{};

const Table& table() {
  static const Table t = best_table();
  return t;
}

const Table& portable_table() {
  static const Table t = scalar_table();
  return t;
}

}  // namespace

const TypeTraits& type_traits(uint32_t type_id) {
  return type_id < kGgmlTypeLimit ? table()[type_id] : kUnknown;
}

const TypeTraits& scalar_type_traits(uint32_t type_id) {
  return type_id < kGgmlTypeLimit ? portable_table()[type_id] : kUnknown;
}

bool type_known(uint32_t type_id) { return type_traits(type_id).name != nullptr; }

namespace {

bool computable(const TypeTraits& t) {
  return t.name != nullptr && t.dequantize != nullptr && t.vec_dot != nullptr &&
         t.vec_dot_f32 != nullptr;
}

std::string computable_names() {
  std::string names;
  for (uint32_t id = 0; id < kGgmlTypeLimit; ++id) {
    const TypeTraits& t = type_traits(id);
    if (!computable(t)) continue;
    if (!names.empty()) names += ", ";
    names += t.name;
  }
  return names;
}

}  // namespace

bool type_supported(uint32_t type_id) { return computable(type_traits(type_id)); }

const TypeTraits& require_computable(uint32_t type_id, const std::string& what) {
  const TypeTraits& t = type_traits(type_id);
  if (t.name == nullptr) {
    throw FormatError(cat(what, ": unknown type id ", type_id, " (supported: ", computable_names(), ")"));
  }
  if (!computable(t)) {
    throw FormatError(cat(what, ": type ", t.name, " is not supported (supported: ", computable_names(), ")"));
  }
  return t;
}

size_t row_bytes(GgmlType type, int64_t n) {
  const TypeTraits& t = type_traits(type);
  if (t.name == nullptr) throw ArgumentError(cat("row_bytes: unknown type id ", static_cast<uint32_t>(type)));
  if (n < 0 || n % t.block_size != 0) {
    throw ArgumentError(cat("row_bytes: ", n, " elements of type ", t.name,
                            " is not a whole number of blocks of ", t.block_size));
  }
  const auto blocks = static_cast<uint64_t>(n / t.block_size);
  if (blocks > SIZE_MAX / t.type_size) {
    throw ArgumentError(cat("row_bytes: ", n, " elements of type ", t.name, " do not fit in memory"));
  }
  return static_cast<size_t>(blocks) * t.type_size;
}

const char* kernel_isa() { return use_avx2() ? "avx2" : "scalar"; }

// --- plain float helpers for attention ---------------------------------------------------------

namespace {

template <class Fn>
Fn pick(Fn portable, Fn simd) {
  return use_avx2() && simd != nullptr ? simd : portable;
}

}  // namespace

// The kernel this CPU runs, chosen once: avx2::name where the AVX2 kernels can run, else
// scalar::name.
#if defined(TOVA_X86)
#define TOVA_PICK(Type, name) static const Type fn = pick<Type>(scalar::name, avx2::name)
#else
#define TOVA_PICK(Type, name) static const Type fn = scalar::name
#endif

float dot_f32(const float* a, const float* b, int64_t n) {
  TOVA_PICK(VecDotF32Fn, vec_dot_f32_f32);
  return fn(n, a, b);
}

float dot_f16_f32(const uint16_t* a, const float* b, int64_t n) {
  TOVA_PICK(VecDotF32Fn, vec_dot_f16_f32);
  return fn(n, a, b);
}

using AxpyF32Fn = void (*)(float, const float*, float*, int64_t);
using AxpyF16Fn = void (*)(float, const uint16_t*, float*, int64_t);

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  TOVA_PICK(AxpyF32Fn, axpy_f32);
  fn(a, x, y, n);
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  TOVA_PICK(AxpyF16Fn, axpy_f16);
  fn(a, x, y, n);
}

void gather_dot_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q,
                    int d, float scale, float* scores) {
  TOVA_PICK(GatherDotF32Fn, gather_dot_f32);
  fn(base, stride, idx, n, q, d, scale, scores);
}

void gather_dot_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                    int d, float scale, float* scores) {
  TOVA_PICK(GatherDotF16Fn, gather_dot_f16);
  fn(base, stride, idx, n, q, d, scale, scores);
}

void gather_axpy_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p,
                     int d, float* out) {
  TOVA_PICK(GatherAxpyF32Fn, gather_axpy_f32);
  fn(base, stride, idx, n, p, d, out);
}

void gather_axpy_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                     int d, float* out) {
  TOVA_PICK(GatherAxpyF16Fn, gather_axpy_f16);
  fn(base, stride, idx, n, p, d, out);
}

#undef TOVA_PICK

}  // namespace tova
