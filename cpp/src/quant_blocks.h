// Block layouts of the quantized ggml types tova computes with: one struct per format, exactly
// the on-disk block (static_asserts). Layout only, no kernels, so that every backend's kernels
// (cpu/quant_*.cpp today) read the same structs; the type table (quant.cpp) takes the sizes of
// these formats from them.
//
// Block layouts follow the GGUF format (gguf-py's quants.py is the reference). Half-precision
// fields are stored as raw uint16_t.
#pragma once

#include <cstdint>

namespace tova {

constexpr int kQK = 32;     // elements per block of the legacy formats
constexpr int kQK_K = 256;  // elements per super-block of the k-quants

struct BlockQ4_0 { uint16_t d; uint8_t qs[kQK / 2]; };
struct BlockQ4_1 { uint16_t d; uint16_t m; uint8_t qs[kQK / 2]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[kQK / 2]; };
struct BlockQ5_1 { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[kQK / 2]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[kQK]; };
// tova's own 3-bit KV value format (not a ggml type; never in a GGUF file): value j of the block
// is d * (q_j - 4), q_j in [0, 8) with its low two bits at bits 2 * (j / 8) of qs[j % 8] and its
// high bit at bit j % 8 of qh[j / 8] (8 values decode from one shift of qs and one byte of qh).
// 14 bytes per 32 values (3.5 bits each).
struct BlockQ3_0 { uint16_t d; uint8_t qs[kQK / 4]; uint8_t qh[kQK / 8]; };
// s = d * sum(qs), kept in the block so a dot product need not recompute the sum.
struct BlockQ8_1 { uint16_t d; uint16_t s; int8_t qs[kQK]; };

struct BlockQ2_K {
  uint8_t scales[kQK_K / 16];  // low nibble: scale, high nibble: min, per 16 elements
  uint8_t qs[kQK_K / 4];       // 2-bit quants
  uint16_t d;
  uint16_t dmin;
};
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];  // high bit of each 3-bit quant (set: no -4 offset)
  uint8_t qs[kQK_K / 4];     // low 2 bits
  uint8_t scales[12];        // 16 signed 6-bit scales (offset 32)
  uint16_t d;
};
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];  // 8 six-bit scales and 8 six-bit mins, packed
  uint8_t qs[kQK_K / 2];
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];  // low 4 bits
  uint8_t qh[kQK_K / 4];  // high 2 bits
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
// The activation format of the k-quants: float scale, and the sum of every 16 quants so the
// "min" / offset parts of the weight formats cost one small dot product per block.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};

static_assert(sizeof(BlockQ3_0) == 14, "Q3_0 block");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block");
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block");
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block");
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block");
static_assert(sizeof(BlockQ8_1) == 36, "Q8_1 block");
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block");
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block");
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block");

}  // namespace tova
