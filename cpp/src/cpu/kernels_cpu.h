// The CPU kernel table: for each ggml type id (the ids of the type table, quant.h) the CPU
// kernels that decode, encode and multiply it, chosen once at run time: one table per tier
// (scalar, AVX2, AVX-512), the best cpu_features() allows. Also the plain float helpers of
// attention, in the same tiers. The layout facts (block size, vec_dot_type,
// whether a type is computable) are in the type table, not here.
//
// Kernels work on whole blocks: every `n` below is a multiple of the type's block_size.
// A matrix product quantizes its float32 activations with the `quantize` of the weight type's
// vec_dot_type, then calls the weight type's `gemm` over a block of weight rows and all of them.
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
// A matrix product of quantized rows: out[k * out_stride + r] = vec_dot(n, x_r, y_k) for m weight
// rows x_r (x_stride bytes apart) and nr activation rows y_k (in the vec_dot_type, y_stride bytes
// apart), bit for bit: a kernel may work on tiles of rows (a weight block decoded once for
// several activation rows, an activation block loaded once for several weight rows) but computes
// each output with the operations and order of vec_dot. Every table fills it for every type with
// a vec_dot (the portable one calls vec_dot per pair).
using GemmFn = void (*)(int64_t n, const void* x, size_t x_stride, int64_t m, const void* y, size_t y_stride,
                        int64_t nr, float* out, size_t out_stride);

// All null for a type without CPU kernels (unknown ids, layout-only types). Every computable
// type of the type table has dequantize, vec_dot, vec_dot_f32 and gemm (a unit test checks it).
struct CpuKernels {
  DequantizeFn dequantize = nullptr;
  QuantizeFn quantize = nullptr;        // only where tova needs to write the type
  VecDotFn vec_dot = nullptr;           // y in the type's vec_dot_type
  VecDotF32Fn vec_dot_f32 = nullptr;    // always available where dequantize is
  GemmFn gemm = nullptr;                // with vec_dot
};

// The kernel tiers, each a whole table: the portable scalar kernels; on x86-64 AVX2 (+FMA, F16C)
// and AVX-512 (F, BW, VL, DQ, VNNI: the tiled int8 matrix products); on AArch64 NEON and NEON
// with the dot-product extension (whose kernels compute the scalar tier's results bit for bit).
// Higher tiers replace what they implement and keep the rest of the tier below.
enum class CpuTier { Scalar, Avx2, Avx512, Neon, NeonDot };
constexpr CpuTier kCpuTiers[] = {CpuTier::Scalar, CpuTier::Avx2, CpuTier::Avx512, CpuTier::Neon, CpuTier::NeonDot};
const char* tier_name(CpuTier tier);
bool tier_supported(CpuTier tier);  // can this CPU (and OS) run it

// The tier the engine uses: the best this CPU supports, or the one named by the environment
// variable TOVA_CPU_KERNELS (a tier_name) when set and supported (tests use it to run every path
// this machine has); read once.
CpuTier active_tier();

// The kernels this process runs (the active tier's table).
const CpuKernels& cpu_kernels(uint32_t type_id);
inline const CpuKernels& cpu_kernels(GgmlType t) { return cpu_kernels(static_cast<uint32_t>(t)); }

// One tier's table whatever the active one is (tests compare each supported tier with Scalar).
const CpuKernels& tier_kernels(CpuTier tier, uint32_t type_id);

// Decodes n values (a whole number of blocks) of a computable type to float32 on the host, with
// this CPU's kernel. For generic code that needs floats outside a backend (the model loader's
// norm vectors, GGUFFile.tensor); throws ArgumentError for a type without a CPU dequantizer.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// The active tier's name ("scalar", "avx2", "avx512", "neon", "neon_dot"); for `tova info` and
// benchmarks.
const char* kernel_isa();

// Plain float helpers for attention, from the active tier's table (any n, no alignment needed).
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f16_f32(const uint16_t* a, const float* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);   // y += a * x
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);  // y += a * x

// The gated activations of the feed-forward block, in place: gate = act(gate) * up. The SIMD
// tiers use a polynomial exp (within a few float ulps of std::exp); the scalar tier is the
// reference, with std::exp / std::tanh.
void silu_mul(float* gate, const float* up, int64_t n);       // silu(g) = g / (1 + e^-g)
void gelu_tanh_mul(float* gate, const float* up, int64_t n);  // 0.5 g (1 + tanh(k (g + 0.044715 g^3)))

// softmax in place over n float32 scores (attention's; the SIMD tiers use the polynomial exp).
void softmax_f32(float* s, int n);

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
// The same for nh query heads sharing the rows (GQA): head h's query at q + h * q_stride, its
// scores at scores + h * s_stride, probabilities at p + h * p_stride, output at out + h * o_stride.
// Each row is read once for a group of heads; every result equals the one-head helper's bit for
// bit (so the attention may pick either per task).
void gather_dot_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q,
                          size_t q_stride, int nh, int d, float scale, float* scores, size_t s_stride);
void gather_dot_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                          size_t q_stride, int nh, int d, float scale, float* scores, size_t s_stride);
void gather_axpy_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p,
                           size_t p_stride, int nh, int d, float* out, size_t o_stride);
void gather_axpy_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                           size_t p_stride, int nh, int d, float* out, size_t o_stride);

}  // namespace tova
