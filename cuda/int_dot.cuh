// The integer products of the CPU backend's default path (8-bit activations, cpu/quant_legacy.cpp
// and cpu/quant_kquants.cpp vec_dot_*) on the device, for matvec_int_cuda.cu: a weight block is
// cut into kTasks tasks of 32 weights, each unpacked by one lane into eight words of four signed
// bytes and multiplied by the input's quants with __dp4a. A task's integer sums (`part`) are
// exact in any order; the block's float step (`finish`, from the sums of its tasks) is the CPU's
// expression, operation for operation (this code is built without fused multiply-adds).
#pragma once

#include <cstdint>

#include "act_quant_cuda.h"
#include "dequant_chunks.cuh"

namespace tova {
namespace cuda {

// A weight task unpacked: 32 quants as 8 words of 4 bytes, and what the block's step needs.
struct IntW {
  int v[8];
  float d, m;  // the block's scale and minimum (dmin for Q4_K), as floats
  int sc, mn;  // Q4_K: the sub-block's 6-bit scale and minimum; Q6_K: the task's first group
};

// A task's integer sums (exact: added in any order).
struct IntPart {
  int a, b;
};

// The input's block b of row i: its quants' scales and sums (ActRows' layout).
struct ActBlock {
  float d, s;
  const int* bsum;  // q8_K: the block's 16 sums of 16 quants
};

// Four bits of x spread to bit 4 of each byte (the fifth bit of four Q5_0 quants).
__device__ __forceinline__ int spread4(uint32_t x) {
  return static_cast<int>(((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25));
}

__device__ __forceinline__ int dot8(const IntW& w, const int* xq, int from, int to) {
  int s = 0;
#pragma unroll
  for (int c = 0; c < 8; ++c)
    if (c >= from && c < to) s = __dp4a(w.v[c], xq[c], s);
  return s;
}

// The 32-weight types (one task a block) against q8_0: sum(q * y) * (d * dy); the types below
// add how a block is unpacked (and Q4_1 its minimum).
struct IdBlock32 {
  static constexpr int kBlock = kQK, kTasks = 1;
  static constexpr ActType kAct = ActType::Q8_0;
  __device__ static IntPart part(const IntW& w, const int* xq, const ActBlock&, int) { return IntPart{dot8(w, xq, 0, 8), 0}; }
  __device__ static float finish(const IntW& w, IntPart p, const ActBlock& a) {
    return static_cast<float>(p.a) * (w.d * a.d);
  }
};

// Q4_0 x q8_0: sum((q - 8) * y) * (d * dy).
struct IdQ4_0 : IdBlock32 {
  static constexpr int kBytes = sizeof(BlockQ4_0);
  __device__ static void load(const uint8_t* blk, int, IntW& w) {
    w.d = half_to_float(load2(blk));
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint32_t q = load4_a2(blk + 2 + 4 * c);
      w.v[c] = static_cast<int>(__vsub4(q & 0x0F0F0F0Fu, 0x08080808u));
      w.v[4 + c] = static_cast<int>(__vsub4((q >> 4) & 0x0F0F0F0Fu, 0x08080808u));
    }
  }
};

// Q4_1 x q8_1: sum(q * y) * (d * dy) + m * sy.
struct IdQ4_1 : IdBlock32 {
  static constexpr int kBytes = sizeof(BlockQ4_1);
  static constexpr ActType kAct = ActType::Q8_1;
  __device__ static void load(const uint8_t* blk, int, IntW& w) {
    w.d = half_to_float(load2(blk));
    w.m = half_to_float(load2(blk + 2));
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint32_t q = load4_a2(blk + 4 + 4 * c);
      w.v[c] = static_cast<int>(q & 0x0F0F0F0Fu);
      w.v[4 + c] = static_cast<int>((q >> 4) & 0x0F0F0F0Fu);
    }
  }
  __device__ static float finish(const IntW& w, IntPart p, const ActBlock& a) {
    return static_cast<float>(p.a) * (w.d * a.d) + w.m * a.s;
  }
};

// Q5_0 x q8_0: sum((q - 16) * y) * (d * dy), bit 4 of quant j at bit j of qh.
struct IdQ5_0 : IdBlock32 {
  static constexpr int kBytes = sizeof(BlockQ5_0);
  __device__ static void load(const uint8_t* blk, int, IntW& w) {
    w.d = half_to_float(load2(blk));
    const uint32_t qh = load4_a2(blk + 2);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const uint32_t q = load4_a2(blk + 6 + 4 * c);
      w.v[c] = static_cast<int>(__vsub4((q & 0x0F0F0F0Fu) | spread4((qh >> (4 * c)) & 0xFu), 0x10101010u));
      w.v[4 + c] =
          static_cast<int>(__vsub4(((q >> 4) & 0x0F0F0F0Fu) | spread4((qh >> (16 + 4 * c)) & 0xFu), 0x10101010u));
    }
  }
};

// Q8_0 x q8_0: sum(q * y) * (d * dy).
struct IdQ8_0 : IdBlock32 {
  static constexpr int kBytes = sizeof(BlockQ8_0);
  __device__ static void load(const uint8_t* blk, int, IntW& w) {
    w.d = half_to_float(load2(blk));
#pragma unroll
    for (int c = 0; c < 8; ++c) w.v[c] = static_cast<int>(load4_a2(blk + 2 + 4 * c));
  }
};

// Q4_K x q8_K, task j = sub-block j (elements 32j..32j+31 = nibble j % 2 of qs[32 (j / 2) ..]):
// sumi = sum_j sc_j * sum(q * y), summ = sum_j m_j * (sums of y), then
// dy * (d * sumi - dmin * summ).
struct IdQ4_K {
  static constexpr int kBlock = kQK_K, kTasks = 8, kBytes = sizeof(BlockQ4_K);
  static constexpr ActType kAct = ActType::Q8_K;
  __device__ static void load(const uint8_t* blk, int j, IntW& w) {
    const auto* b = reinterpret_cast<const BlockQ4_K*>(blk);
    w.d = half_to_float(load2(blk + offsetof(BlockQ4_K, d)));
    w.m = half_to_float(load2(blk + offsetof(BlockQ4_K, dmin)));
    scale_min_k4(b->scales, j, &w.sc, &w.mn);
    // 16-byte loads: blocks of 144 bytes, qs at 16, rows 16-byte aligned (matvec_int checks it).
    const auto* qs = reinterpret_cast<const uint4*>(blk + offsetof(BlockQ4_K, qs) + 32 * (j / 2));
    const uint4 q0 = qs[0], q1 = qs[1];
    const uint32_t q[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    const int shift = 4 * (j % 2);
#pragma unroll
    for (int c = 0; c < 8; ++c) w.v[c] = static_cast<int>((q[c] >> shift) & 0x0F0F0F0Fu);
  }
  __device__ static IntPart part(const IntW& w, const int* xq, const ActBlock& a, int j) {
    return IntPart{w.sc * dot8(w, xq, 0, 8), w.mn * (a.bsum[2 * j] + a.bsum[2 * j + 1])};
  }
  __device__ static float finish(const IntW& w, IntPart p, const ActBlock& a) {
    return a.d * (w.d * static_cast<float>(p.a) - w.m * static_cast<float>(p.b));
  }
};

// Q6_K x q8_K, task j = elements 128h + 32k + l (h = j / 4, k = j % 4): the low four bits from
// ql[64h + 32 (k % 2) + l] (nibble k / 2), the high two from qh[32h + l] (bits 2k), minus 32 (as
// 32 * the sums of y); sumi = sum_g scales[g] * sum over group g, then dy * d * sumi.
struct IdQ6_K {
  static constexpr int kBlock = kQK_K, kTasks = 8, kBytes = sizeof(BlockQ6_K);
  static constexpr ActType kAct = ActType::Q8_K;
  __device__ static void load(const uint8_t* blk, int j, IntW& w) {
    const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
    const int h = j / 4, k = j % 4;
    w.d = half_to_float(load2(blk + offsetof(BlockQ6_K, d)));
    w.sc = b->scales[8 * h + 2 * k];
    w.mn = b->scales[8 * h + 2 * k + 1];
    const uint8_t* ql = blk + offsetof(BlockQ6_K, ql) + 64 * h + 32 * (k % 2);
    const uint8_t* qh = blk + offsetof(BlockQ6_K, qh) + 32 * h;
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const uint32_t lo = (load4_a2(ql + 4 * c) >> (4 * (k / 2))) & 0x0F0F0F0Fu;
      const uint32_t hi = (load4_a2(qh + 4 * c) >> (2 * k)) & 0x03030303u;
      w.v[c] = static_cast<int>(lo | (hi << 4));
    }
  }
  __device__ static IntPart part(const IntW& w, const int* xq, const ActBlock& a, int j) {
    const int g = 8 * (j / 4) + 2 * (j % 4);
    const int lo = dot8(w, xq, 0, 4) - 32 * a.bsum[g];
    const int hi = dot8(w, xq, 4, 8) - 32 * a.bsum[g + 1];
    return IntPart{w.sc * lo + w.mn * hi, 0};
  }
  __device__ static float finish(const IntW& w, IntPart p, const ActBlock& a) {
    return a.d * w.d * static_cast<float>(p.a);
  }
};

}  // namespace cuda
}  // namespace tova
