// The CPU kernel table. Two tables are built once: the portable one (scalar kernels only) and
// the one the engine uses, which swaps in the SIMD kernels this CPU supports (cpu_features).
#include "kernels_cpu.h"

#include <array>
#include <cstdint>

#include "common.h"
#include "cpu_features.h"
#include "quant_kernels.h"

namespace tova {

namespace {

using Table = std::array<CpuKernels, kGgmlTypeLimit>;

CpuKernels& at(Table& t, GgmlType id) { return t[static_cast<uint32_t>(id)]; }

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

// A plain number type whose activations are float32.
template <VecDotF32Fn Dot>
void number(Table& t, GgmlType id, DequantizeFn deq) {
  CpuKernels& e = at(t, id);
  e.dequantize = deq;
  e.vec_dot_f32 = Dot;
  e.vec_dot = f32_activations<Dot>;
}

template <class Block, int64_t B, DequantizeFn Deq>
void quant(Table& t, GgmlType id, QuantizeFn q, VecDotFn dot) {
  CpuKernels& e = at(t, id);
  e.dequantize = Deq;
  e.quantize = q;
  e.vec_dot = dot;
  e.vec_dot_f32 = dequant_dot<Deq, Block, B>;
}

Table scalar_table() {
  Table t{};
  namespace s = scalar;
  // The layout-only types of the type table (IQ*, TQ*, MXFP4) have no kernels.
  number<s::vec_dot_f32_f32>(t, GgmlType::F32, s::dequantize_f32);
  number<s::vec_dot_f16_f32>(t, GgmlType::F16, s::dequantize_f16);
  number<s::vec_dot_bf16_f32>(t, GgmlType::BF16, s::dequantize_bf16);
  number<s::vec_dot_f64_f32>(t, GgmlType::F64, s::dequantize_f64);
  number<s::vec_dot_i8_f32>(t, GgmlType::I8, s::dequantize_i8);
  number<s::vec_dot_i16_f32>(t, GgmlType::I16, s::dequantize_i16);
  number<s::vec_dot_i32_f32>(t, GgmlType::I32, s::dequantize_i32);
  number<s::vec_dot_i64_f32>(t, GgmlType::I64, s::dequantize_i64);
  at(t, GgmlType::F32).quantize = s::quantize_f32;
  at(t, GgmlType::F16).quantize = s::quantize_f16;
  at(t, GgmlType::BF16).quantize = s::quantize_bf16;

  quant<BlockQ4_0, kQK, s::dequantize_q4_0>(t, GgmlType::Q4_0, s::quantize_q4_0, s::vec_dot_q4_0_q8_0);
  quant<BlockQ4_1, kQK, s::dequantize_q4_1>(t, GgmlType::Q4_1, s::quantize_q4_1, s::vec_dot_q4_1_q8_1);
  quant<BlockQ5_0, kQK, s::dequantize_q5_0>(t, GgmlType::Q5_0, s::quantize_q5_0, s::vec_dot_q5_0_q8_0);
  quant<BlockQ5_1, kQK, s::dequantize_q5_1>(t, GgmlType::Q5_1, s::quantize_q5_1, s::vec_dot_q5_1_q8_1);
  quant<BlockQ8_0, kQK, s::dequantize_q8_0>(t, GgmlType::Q8_0, s::quantize_q8_0, s::vec_dot_q8_0_q8_0);
  quant<BlockQ8_1, kQK, s::dequantize_q8_1>(t, GgmlType::Q8_1, s::quantize_q8_1, s::vec_dot_q8_1_q8_0);
  quant<BlockQ2_K, kQK_K, s::dequantize_q2_K>(t, GgmlType::Q2_K, nullptr, s::vec_dot_q2_K_q8_K);
  quant<BlockQ3_K, kQK_K, s::dequantize_q3_K>(t, GgmlType::Q3_K, nullptr, s::vec_dot_q3_K_q8_K);
  quant<BlockQ4_K, kQK_K, s::dequantize_q4_K>(t, GgmlType::Q4_K, nullptr, s::vec_dot_q4_K_q8_K);
  quant<BlockQ5_K, kQK_K, s::dequantize_q5_K>(t, GgmlType::Q5_K, nullptr, s::vec_dot_q5_K_q8_K);
  quant<BlockQ6_K, kQK_K, s::dequantize_q6_K>(t, GgmlType::Q6_K, nullptr, s::vec_dot_q6_K_q8_K);
  quant<BlockQ8_K, kQK_K, s::dequantize_q8_K>(t, GgmlType::Q8_K, s::quantize_q8_K, s::vec_dot_q8_K_q8_K);
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
    at(t, GgmlType::F32).vec_dot_f32 = avx2::vec_dot_f32_f32;
    at(t, GgmlType::F16).vec_dot_f32 = avx2::vec_dot_f16_f32;
    at(t, GgmlType::BF16).vec_dot_f32 = avx2::vec_dot_bf16_f32;
    at(t, GgmlType::F32).vec_dot = f32_activations<avx2::vec_dot_f32_f32>;
    at(t, GgmlType::F16).vec_dot = f32_activations<avx2::vec_dot_f16_f32>;
    at(t, GgmlType::BF16).vec_dot = f32_activations<avx2::vec_dot_bf16_f32>;
    at(t, GgmlType::F16).quantize = avx2::quantize_f16;
    at(t, GgmlType::Q8_0).quantize = avx2::quantize_q8_0;
    at(t, GgmlType::Q8_1).quantize = avx2::quantize_q8_1;
    at(t, GgmlType::Q8_K).quantize = avx2::quantize_q8_K;
    at(t, GgmlType::Q4_0).vec_dot = avx2::vec_dot_q4_0_q8_0;
    at(t, GgmlType::Q4_1).vec_dot = avx2::vec_dot_q4_1_q8_1;
    at(t, GgmlType::Q5_0).vec_dot = avx2::vec_dot_q5_0_q8_0;
    at(t, GgmlType::Q5_1).vec_dot = avx2::vec_dot_q5_1_q8_1;
    at(t, GgmlType::Q8_0).vec_dot = avx2::vec_dot_q8_0_q8_0;
    at(t, GgmlType::Q4_0).vec_dot_f32 = avx2::vec_dot_q4_0_f32;
    at(t, GgmlType::Q8_0).vec_dot_f32 = avx2::vec_dot_q8_0_f32;
    at(t, GgmlType::Q4_0).dequantize = avx2::dequantize_q4_0;
    at(t, GgmlType::Q8_0).dequantize = avx2::dequantize_q8_0;
    at(t, GgmlType::Q2_K).vec_dot = avx2::vec_dot_q2_K_q8_K;
    at(t, GgmlType::Q3_K).vec_dot = avx2::vec_dot_q3_K_q8_K;
    at(t, GgmlType::Q4_K).vec_dot = avx2::vec_dot_q4_K_q8_K;
    at(t, GgmlType::Q5_K).vec_dot = avx2::vec_dot_q5_K_q8_K;
    at(t, GgmlType::Q6_K).vec_dot = avx2::vec_dot_q6_K_q8_K;
    at(t, GgmlType::Q8_K).vec_dot = avx2::vec_dot_q8_K_q8_K;
    at(t, GgmlType::Q4_0).vec_dot_rows = avx2::vec_dot_rows_q4_0_q8_0;
    at(t, GgmlType::Q5_0).vec_dot_rows = avx2::vec_dot_rows_q5_0_q8_0;
    at(t, GgmlType::Q8_0).vec_dot_rows = avx2::vec_dot_rows_q8_0_q8_0;
    at(t, GgmlType::Q4_1).vec_dot_rows = avx2::vec_dot_rows_q4_1_q8_1;
    at(t, GgmlType::Q5_1).vec_dot_rows = avx2::vec_dot_rows_q5_1_q8_1;
    at(t, GgmlType::Q4_K).vec_dot_rows = avx2::vec_dot_rows_q4_K_q8_K;
    at(t, GgmlType::Q5_K).vec_dot_rows = avx2::vec_dot_rows_q5_K_q8_K;
    at(t, GgmlType::Q6_K).vec_dot_rows = avx2::vec_dot_rows_q6_K_q8_K;
  }
#endif
  return t;
}

const CpuKernels kNone{};

const Table& table() {
  static const Table t = best_table();
  return t;
}

const Table& portable_table() {
  static const Table t = scalar_table();
  return t;
}

}  // namespace

const CpuKernels& cpu_kernels(uint32_t type_id) {
  return type_id < kGgmlTypeLimit ? table()[type_id] : kNone;
}

const CpuKernels& scalar_cpu_kernels(uint32_t type_id) {
  return type_id < kGgmlTypeLimit ? portable_table()[type_id] : kNone;
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  const CpuKernels& k = cpu_kernels(type);
  if (k.dequantize == nullptr) {
    const char* name = type_traits(type).name;
    throw ArgumentError(cat("dequantize: type ", name ? name : "(unknown)", " (id ",
                            static_cast<uint32_t>(type), ") has no CPU kernel"));
  }
  k.dequantize(src, dst, n);
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
