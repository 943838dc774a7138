// The CPU kernel tables, one per tier, each built once on first use from the tier below it:
// scalar (portable), AVX2 (swaps in quant_avx2*.cpp), AVX-512 (swaps in quant_avx512*.cpp), or
// on AArch64 NEON and NEON with dot products (quant_neon*.cpp, built twice). The engine reads the
// active tier's table; nothing else picks kernels.
#include "kernels_cpu.h"

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>

#include "common.h"
#include "cpu_features.h"
#include "quant_kernels.h"

namespace tova {

namespace {

// The plain float helpers of attention (kernels_cpu.h), per tier like the type kernels.
struct FloatKernels {
  VecDotF32Fn dot_f32, dot_f16;
  AxpyF32Fn axpy_f32;
  AxpyF16Fn axpy_f16;
  GatherDotF32Fn gather_dot_f32;
  GatherDotF16Fn gather_dot_f16;
  GatherAxpyF32Fn gather_axpy_f32;
  GatherAxpyF16Fn gather_axpy_f16;
  GatherDotHeadsF32Fn gather_dot_heads_f32;
  GatherDotHeadsF16Fn gather_dot_heads_f16;
  GatherAxpyHeadsF32Fn gather_axpy_heads_f32;
  GatherAxpyHeadsF16Fn gather_axpy_heads_f16;
  ActMulFn silu_mul, gelu_tanh_mul;
  SoftmaxFn softmax;
};

struct Table {
  std::array<CpuKernels, kGgmlTypeLimit> types{};
  FloatKernels floats{};
};

CpuKernels& at(Table& t, GgmlType id) { return t.types[static_cast<uint32_t>(id)]; }

// gemm from vec_dot: one call per (weight row, activation row) pair.
template <VecDotFn Dot>
void gemm_by_pairs(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, float* out,
                   size_t os) {
  const auto* xb = static_cast<const uint8_t*>(x);
  const auto* yb = static_cast<const uint8_t*>(y);
  for (int64_t k = 0; k < nr; ++k)
    for (int64_t r = 0; r < m; ++r) out[k * os + r] = Dot(n, xb + r * xs, yb + k * ys);
}

// gemm from a multi-row kernel: each weight row against kMaxDotRows activation rows at a time.
template <VecDotRowsFn Rows>
void gemm_by_rows(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, float* out,
                  size_t os) {
  const auto* xb = static_cast<const uint8_t*>(x);
  const auto* yb = static_cast<const uint8_t*>(y);
  float o[kMaxDotRows];
  for (int64_t k = 0; k < nr; k += kMaxDotRows) {
    const int w = static_cast<int>(nr - k < kMaxDotRows ? nr - k : kMaxDotRows);
    for (int64_t r = 0; r < m; ++r) {
      Rows(n, xb + r * xs, yb + k * ys, ys, w, o);
      for (int j = 0; j < w; ++j) out[(k + j) * os + r] = o[j];
    }
  }
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

// A plain number type whose activations are float32.
template <VecDotF32Fn Dot>
void number(Table& t, GgmlType id, DequantizeFn deq) {
  CpuKernels& e = at(t, id);
  e.dequantize = deq;
  e.vec_dot_f32 = Dot;
  e.vec_dot = f32_activations<Dot>;
  e.gemm = gemm_by_pairs<f32_activations<Dot>>;
}

template <class Block, int64_t B, DequantizeFn Deq, VecDotFn Dot>
void quant(Table& t, GgmlType id, QuantizeFn q) {
  CpuKernels& e = at(t, id);
  e.dequantize = Deq;
  e.quantize = q;
  e.vec_dot = Dot;
  e.vec_dot_f32 = dequant_dot<Deq, Block, B>;
  e.gemm = gemm_by_pairs<Dot>;
}

// A SIMD vec_dot (and its gemm: pairs, rows of kMaxDotRows, or a tiled kernel).
template <VecDotFn Dot>
void simd_dot(Table& t, GgmlType id) {
  at(t, id).vec_dot = Dot;
  at(t, id).gemm = gemm_by_pairs<Dot>;
}
template <VecDotFn Dot, VecDotRowsFn Rows>
void simd_rows(Table& t, GgmlType id) {
  at(t, id).vec_dot = Dot;
  at(t, id).gemm = gemm_by_rows<Rows>;
}
// A matrix-product kernel (a tiled one): vec_dot is its 1 x 1 product.
template <VecDotFn Dot, GemmFn Gemm>
void tiled(Table& t, GgmlType id) {
  at(t, id).vec_dot = Dot;
  at(t, id).gemm = Gemm;
}

template <VecDotF32Fn Dot>
void simd_number(Table& t, GgmlType id) {
  at(t, id).vec_dot_f32 = Dot;
  at(t, id).vec_dot = f32_activations<Dot>;
  at(t, id).gemm = gemm_by_pairs<f32_activations<Dot>>;
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
  using G = GatherByRows<s::vec_dot_f32_f32, s::vec_dot_f16_f32, s::axpy_f32, s::axpy_f16>;
  t.floats = {s::vec_dot_f32_f32, s::vec_dot_f16_f32, s::axpy_f32,       s::axpy_f16,
              G::dot_f32,         G::dot_f16,         G::axpy_f32,       G::axpy_f16,
              G::dot_heads<float>, G::dot_heads<uint16_t>, G::axpy_heads<float>, G::axpy_heads<uint16_t>,
              s::silu_mul,        s::gelu_tanh_mul,   s::softmax_f32};

  quant<BlockQ4_0, kQK, s::dequantize_q4_0, s::vec_dot_q4_0_q8_0>(t, GgmlType::Q4_0, s::quantize_q4_0);
  quant<BlockQ4_1, kQK, s::dequantize_q4_1, s::vec_dot_q4_1_q8_1>(t, GgmlType::Q4_1, s::quantize_q4_1);
  quant<BlockQ5_0, kQK, s::dequantize_q5_0, s::vec_dot_q5_0_q8_0>(t, GgmlType::Q5_0, s::quantize_q5_0);
  quant<BlockQ5_1, kQK, s::dequantize_q5_1, s::vec_dot_q5_1_q8_1>(t, GgmlType::Q5_1, s::quantize_q5_1);
  quant<BlockQ8_0, kQK, s::dequantize_q8_0, s::vec_dot_q8_0_q8_0>(t, GgmlType::Q8_0, s::quantize_q8_0);
  quant<BlockQ8_1, kQK, s::dequantize_q8_1, s::vec_dot_q8_1_q8_0>(t, GgmlType::Q8_1, s::quantize_q8_1);
  quant<BlockQ2_K, kQK_K, s::dequantize_q2_K, s::vec_dot_q2_K_q8_K>(t, GgmlType::Q2_K, nullptr);
  quant<BlockQ3_K, kQK_K, s::dequantize_q3_K, s::vec_dot_q3_K_q8_K>(t, GgmlType::Q3_K, nullptr);
  quant<BlockQ4_K, kQK_K, s::dequantize_q4_K, s::vec_dot_q4_K_q8_K>(t, GgmlType::Q4_K, nullptr);
  quant<BlockQ5_K, kQK_K, s::dequantize_q5_K, s::vec_dot_q5_K_q8_K>(t, GgmlType::Q5_K, nullptr);
  quant<BlockQ6_K, kQK_K, s::dequantize_q6_K, s::vec_dot_q6_K_q8_K>(t, GgmlType::Q6_K, nullptr);
  quant<BlockQ8_K, kQK_K, s::dequantize_q8_K, s::vec_dot_q8_K_q8_K>(t, GgmlType::Q8_K, s::quantize_q8_K);
  return t;
}

#if defined(TOVA_X86)
Table avx2_table() {
  Table t = scalar_table();
  namespace a = avx2;
  simd_number<a::vec_dot_f32_f32>(t, GgmlType::F32);
  simd_number<a::vec_dot_f16_f32>(t, GgmlType::F16);
  simd_number<a::vec_dot_bf16_f32>(t, GgmlType::BF16);
  at(t, GgmlType::F16).quantize = a::quantize_f16;
  at(t, GgmlType::Q8_0).quantize = a::quantize_q8_0;
  at(t, GgmlType::Q8_1).quantize = a::quantize_q8_1;
  at(t, GgmlType::Q8_K).quantize = a::quantize_q8_K;
  at(t, GgmlType::Q4_0).vec_dot_f32 = a::vec_dot_q4_0_f32;
  at(t, GgmlType::Q8_0).vec_dot_f32 = a::vec_dot_q8_0_f32;
  at(t, GgmlType::Q4_0).dequantize = a::dequantize_q4_0;
  at(t, GgmlType::Q4_1).dequantize = a::dequantize_q4_1;
  at(t, GgmlType::Q5_0).dequantize = a::dequantize_q5_0;
  at(t, GgmlType::Q5_1).dequantize = a::dequantize_q5_1;
  at(t, GgmlType::Q8_0).dequantize = a::dequantize_q8_0;
  at(t, GgmlType::Q4_K).dequantize = a::dequantize_q4_K;
  at(t, GgmlType::Q5_K).dequantize = a::dequantize_q5_K;
  at(t, GgmlType::Q6_K).dequantize = a::dequantize_q6_K;
  tiled<a::vec_dot_q4_0_q8_0, a::gemm_q4_0_q8_0>(t, GgmlType::Q4_0);
  tiled<a::vec_dot_q5_0_q8_0, a::gemm_q5_0_q8_0>(t, GgmlType::Q5_0);
  tiled<a::vec_dot_q8_0_q8_0, a::gemm_q8_0_q8_0>(t, GgmlType::Q8_0);
  tiled<a::vec_dot_q4_1_q8_1, a::gemm_q4_1_q8_1>(t, GgmlType::Q4_1);
  tiled<a::vec_dot_q5_1_q8_1, a::gemm_q5_1_q8_1>(t, GgmlType::Q5_1);
  simd_rows<a::vec_dot_q4_K_q8_K, a::vec_dot_rows_q4_K_q8_K>(t, GgmlType::Q4_K);
  simd_rows<a::vec_dot_q5_K_q8_K, a::vec_dot_rows_q5_K_q8_K>(t, GgmlType::Q5_K);
  simd_rows<a::vec_dot_q6_K_q8_K, a::vec_dot_rows_q6_K_q8_K>(t, GgmlType::Q6_K);
  simd_dot<a::vec_dot_q2_K_q8_K>(t, GgmlType::Q2_K);
  simd_dot<a::vec_dot_q3_K_q8_K>(t, GgmlType::Q3_K);
  simd_dot<a::vec_dot_q8_K_q8_K>(t, GgmlType::Q8_K);
  t.floats = {a::vec_dot_f32_f32, a::vec_dot_f16_f32, a::axpy_f32,       a::axpy_f16,
              a::gather_dot_f32,  a::gather_dot_f16,  a::gather_axpy_f32, a::gather_axpy_f16,
              a::gather_dot_heads_f32, a::gather_dot_heads_f16, a::gather_axpy_heads_f32,
              a::gather_axpy_heads_f16,
              a::silu_mul,        a::gelu_tanh_mul,   a::softmax_f32};
  return t;
}

Table avx512_table() {
  Table t = avx2_table();
  namespace a = avx512;
  tiled<a::vec_dot_q4_0_q8_0, a::gemm_q4_0_q8_0>(t, GgmlType::Q4_0);
  tiled<a::vec_dot_q5_0_q8_0, a::gemm_q5_0_q8_0>(t, GgmlType::Q5_0);
  tiled<a::vec_dot_q8_0_q8_0, a::gemm_q8_0_q8_0>(t, GgmlType::Q8_0);
  tiled<a::vec_dot_q4_1_q8_1, a::gemm_q4_1_q8_1>(t, GgmlType::Q4_1);
  tiled<a::vec_dot_q5_1_q8_1, a::gemm_q5_1_q8_1>(t, GgmlType::Q5_1);
  tiled<a::vec_dot_q4_K_q8_K, a::gemm_q4_K_q8_K>(t, GgmlType::Q4_K);
  tiled<a::vec_dot_q5_K_q8_K, a::gemm_q5_K_q8_K>(t, GgmlType::Q5_K);
  tiled<a::vec_dot_q6_K_q8_K, a::gemm_q6_K_q8_K>(t, GgmlType::Q6_K);
  return t;
}
#endif

#if defined(TOVA_ARM64)
// The NEON tiers: the same kernels built for the base ISA (namespace neon) or with the
// dot-product extension (neon_dot). What they leave out (dequantizers, activation quantizers,
// the rarer formats Q2_K / Q3_K / Q8_K, the activation functions) stays portable.
#define TOVA_NEON_TABLE(ns)                                                                         \
  Table ns##_table() {                                                                              \
    Table t = scalar_table();                                                                       \
    simd_number<ns::vec_dot_f32_f32>(t, GgmlType::F32);                                             \
    simd_number<ns::vec_dot_f16_f32>(t, GgmlType::F16);                                             \
    simd_number<ns::vec_dot_bf16_f32>(t, GgmlType::BF16);                                           \
    simd_rows<ns::vec_dot_q4_0_q8_0, ns::vec_dot_rows_q4_0_q8_0>(t, GgmlType::Q4_0);                \
    simd_rows<ns::vec_dot_q4_1_q8_1, ns::vec_dot_rows_q4_1_q8_1>(t, GgmlType::Q4_1);                \
    simd_rows<ns::vec_dot_q5_0_q8_0, ns::vec_dot_rows_q5_0_q8_0>(t, GgmlType::Q5_0);                \
    simd_rows<ns::vec_dot_q5_1_q8_1, ns::vec_dot_rows_q5_1_q8_1>(t, GgmlType::Q5_1);                \
    simd_rows<ns::vec_dot_q8_0_q8_0, ns::vec_dot_rows_q8_0_q8_0>(t, GgmlType::Q8_0);                \
    simd_rows<ns::vec_dot_q4_K_q8_K, ns::vec_dot_rows_q4_K_q8_K>(t, GgmlType::Q4_K);                \
    simd_rows<ns::vec_dot_q5_K_q8_K, ns::vec_dot_rows_q5_K_q8_K>(t, GgmlType::Q5_K);                \
    simd_rows<ns::vec_dot_q6_K_q8_K, ns::vec_dot_rows_q6_K_q8_K>(t, GgmlType::Q6_K);                \
    t.floats.dot_f32 = ns::vec_dot_f32_f32;                                                         \
    t.floats.dot_f16 = ns::vec_dot_f16_f32;                                                         \
    t.floats.axpy_f32 = ns::axpy_f32;                                                               \
    t.floats.axpy_f16 = ns::axpy_f16;                                                               \
    using G = GatherByRows<ns::vec_dot_f32_f32, ns::vec_dot_f16_f32, ns::axpy_f32, ns::axpy_f16>;     \
    t.floats.gather_dot_f32 = G::dot_f32;                                                           \
    t.floats.gather_dot_f16 = G::dot_f16;                                                           \
    t.floats.gather_axpy_f32 = G::axpy_f32;                                                         \
    t.floats.gather_axpy_f16 = G::axpy_f16;                                                         \
    t.floats.gather_dot_heads_f32 = G::dot_heads<float>;                                            \
    t.floats.gather_dot_heads_f16 = G::dot_heads<uint16_t>;                                         \
    t.floats.gather_axpy_heads_f32 = G::axpy_heads<float>;                                          \
    t.floats.gather_axpy_heads_f16 = G::axpy_heads<uint16_t>;                                       \
    return t;                                                                                       \
  }
TOVA_NEON_TABLE(neon)
#if defined(TOVA_ARM64_DOT)
TOVA_NEON_TABLE(neon_dot)
#endif
#undef TOVA_NEON_TABLE
#endif

const Table& tier_table(CpuTier tier) {
  static const Table scalar = scalar_table();
#if defined(TOVA_ARM64_DOT)
  if (tier == CpuTier::NeonDot && tier_supported(CpuTier::NeonDot)) {
    static const Table t = neon_dot_table();
    return t;
  }
#endif
#if defined(TOVA_ARM64)
  if (tier == CpuTier::Neon && tier_supported(CpuTier::Neon)) {
    static const Table t = neon_table();
    return t;
  }
#endif
#if defined(TOVA_X86)
  if (tier == CpuTier::Avx512 && tier_supported(CpuTier::Avx512)) {
    static const Table t = avx512_table();
    return t;
  }
  if (tier >= CpuTier::Avx2 && tier_supported(CpuTier::Avx2)) {
    static const Table t = avx2_table();
    return t;
  }
#endif
  return scalar;
}

CpuTier choose_tier() {
  CpuTier best = CpuTier::Scalar;
  for (CpuTier t : kCpuTiers)  // in rising order within each architecture
    if (tier_supported(t)) best = t;
  if (const char* want = std::getenv("TOVA_CPU_KERNELS")) {
    for (CpuTier t : kCpuTiers)
      if (std::strcmp(want, tier_name(t)) == 0) {
        if (tier_supported(t)) return t;
        std::fprintf(stderr, "tova: TOVA_CPU_KERNELS=%s: this CPU cannot run that tier; using %s\n", want,
                     tier_name(best));
        return best;
      }
    std::fprintf(stderr,
                 "tova: TOVA_CPU_KERNELS=%s is not a kernel tier (scalar, avx2, avx512, neon, neon_dot); using %s\n",
                 want, tier_name(best));
  }
  return best;
}

const Table& table() {
  static const Table& t = tier_table(active_tier());
  return t;
}

const CpuKernels kNone{};

}  // namespace

const char* tier_name(CpuTier tier) {
  switch (tier) {
    case CpuTier::Scalar: return "scalar";
    case CpuTier::Avx2: return "avx2";
    case CpuTier::Avx512: return "avx512";
    case CpuTier::Neon: return "neon";
    case CpuTier::NeonDot: return "neon_dot";
  }
  return "?";
}

bool tier_supported(CpuTier tier) {
  switch (tier) {
    case CpuTier::Scalar: return true;
#if defined(TOVA_X86)
    case CpuTier::Avx2: return cpu_features().has_avx2_kernels();
    case CpuTier::Avx512: return cpu_features().has_avx512_kernels();
#endif
#if defined(TOVA_ARM64)
    case CpuTier::Neon: return cpu_features().neon;
#endif
#if defined(TOVA_ARM64_DOT)  // (a compiler without the extension builds the neon tier alone)
    case CpuTier::NeonDot: return cpu_features().neon && cpu_features().dotprod;
#endif
    default: return false;
  }
}

CpuTier active_tier() {
  static const CpuTier t = choose_tier();
  return t;
}

const CpuKernels& cpu_kernels(uint32_t type_id) {
  return type_id < kGgmlTypeLimit ? table().types[type_id] : kNone;
}

const CpuKernels& tier_kernels(CpuTier tier, uint32_t type_id) {
  return type_id < kGgmlTypeLimit ? tier_table(tier).types[type_id] : kNone;
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

const char* kernel_isa() { return tier_name(active_tier()); }

// --- plain float helpers for attention: the active tier's --------------------------------------

float dot_f32(const float* a, const float* b, int64_t n) { return table().floats.dot_f32(n, a, b); }

float dot_f16_f32(const uint16_t* a, const float* b, int64_t n) { return table().floats.dot_f16(n, a, b); }

void axpy_f32(float a, const float* x, float* y, int64_t n) { table().floats.axpy_f32(a, x, y, n); }

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) { table().floats.axpy_f16(a, x, y, n); }

void gather_dot_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q,
                    int d, float scale, float* scores) {
  table().floats.gather_dot_f32(base, stride, idx, n, q, d, scale, scores);
}

void gather_dot_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                    int d, float scale, float* scores) {
  table().floats.gather_dot_f16(base, stride, idx, n, q, d, scale, scores);
}

void gather_axpy_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p,
                     int d, float* out) {
  table().floats.gather_axpy_f32(base, stride, idx, n, p, d, out);
}

void gather_axpy_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                     int d, float* out) {
  table().floats.gather_axpy_f16(base, stride, idx, n, p, d, out);
}

void gather_dot_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q,
                          size_t q_stride, int nh, int d, float scale, float* scores, size_t s_stride) {
  table().floats.gather_dot_heads_f32(base, stride, idx, n, q, q_stride, nh, d, scale, scores, s_stride);
}

void gather_dot_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                          size_t q_stride, int nh, int d, float scale, float* scores, size_t s_stride) {
  table().floats.gather_dot_heads_f16(base, stride, idx, n, q, q_stride, nh, d, scale, scores, s_stride);
}

void gather_axpy_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p,
                           size_t p_stride, int nh, int d, float* out, size_t o_stride) {
  table().floats.gather_axpy_heads_f32(base, stride, idx, n, p, p_stride, nh, d, out, o_stride);
}

void gather_axpy_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                           size_t p_stride, int nh, int d, float* out, size_t o_stride) {
  table().floats.gather_axpy_heads_f16(base, stride, idx, n, p, p_stride, nh, d, out, o_stride);
}

void silu_mul(float* gate, const float* up, int64_t n) { table().floats.silu_mul(gate, up, n); }

void gelu_tanh_mul(float* gate, const float* up, int64_t n) { table().floats.gelu_tanh_mul(gate, up, n); }

void softmax_f32(float* s, int n) { table().floats.softmax(s, n); }

}  // namespace tova
