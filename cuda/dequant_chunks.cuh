// Chunked dequantizers for the CUDA matrix-vector kernel (cuda/matvec_cuda.cu): a weight block is
// cut into kChunks chunks, each decoded by one thread from a few word loads into kRuns runs of
// four consecutive elements (the runs' first elements in `start`, relative to the block). Every
// value is computed exactly as the per-element dequantizer of cuda/dequant.cuh computes it (the
// same roundings in the same order), so only the order of the dot product's sums differs from the
// CPU's float path. Host+device code: the C++ unit tests check every chunk against dequant.cuh
// bit for bit on a machine without a GPU.
//
// Types: those of the four real models (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K); the rest of the
// table uses the per-element kernel.
#pragma once

#include <cstdint>
#include <cstring>

#include "dequant.cuh"

namespace tova {
namespace cuda {

// Four bytes at p, which is 2-byte aligned in every block layout below (blocks of an even size,
// fields at even offsets, rows starting at allocation-aligned addresses).
TOVA_HD uint32_t load4_a2(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  const auto* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
#else
  uint32_t v;
  std::memcpy(&v, p, 4);  // little-endian host, as the GGUF data
  return v;
#endif
}

TOVA_HD uint16_t load2(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint16_t*>(p);
#else
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
#endif
}

TOVA_HD int byte_of(uint32_t v, int i) { return static_cast<int>((v >> (8 * i)) & 0xFF); }

// 32-element blocks with nibbles (Q4_0, Q4_1, Q5_0): chunk c (0..3) is qs[4c..4c+3], whose low
// nibbles are elements 4c..4c+3 and high nibbles 16+4c..16+4c+3.
struct ChQ4_0 {
  static constexpr int kBlock = kQK, kBytes = sizeof(BlockQ4_0), kChunks = 4, kRuns = 2;
  TOVA_HD static void decode(const uint8_t* blk, int c, float* w, int* start) {
    const float d = half_to_float(load2(blk + offsetof(BlockQ4_0, d)));
    const uint32_t q = load4_a2(blk + offsetof(BlockQ4_0, qs) + 4 * c);
    for (int i = 0; i < 4; ++i) {
      w[i] = d * static_cast<float>((byte_of(q, i) & 0xF) - 8);
      w[4 + i] = d * static_cast<float>((byte_of(q, i) >> 4) - 8);
    }
    start[0] = 4 * c;
    start[1] = 16 + 4 * c;
  }
};

struct ChQ4_1 {
  static constexpr int kBlock = kQK, kBytes = sizeof(BlockQ4_1), kChunks = 4, kRuns = 2;
  TOVA_HD static void decode(const uint8_t* blk, int c, float* w, int* start) {
    const float d = half_to_float(load2(blk + offsetof(BlockQ4_1, d)));
    const float m = half_to_float(load2(blk + offsetof(BlockQ4_1, m)));
    const uint32_t q = load4_a2(blk + offsetof(BlockQ4_1, qs) + 4 * c);
    for (int i = 0; i < 4; ++i) {
      const float lo = d * static_cast<float>(byte_of(q, i) & 0xF);
      const float hi = d * static_cast<float>(byte_of(q, i) >> 4);
      w[i] = lo + m;
      w[4 + i] = hi + m;
    }
    start[0] = 4 * c;
    start[1] = 16 + 4 * c;
  }
};

struct ChQ5_0 {
  static constexpr int kBlock = kQK, kBytes = sizeof(BlockQ5_0), kChunks = 4, kRuns = 2;
  TOVA_HD static void decode(const uint8_t* blk, int c, float* w, int* start) {
    const float d = half_to_float(load2(blk + offsetof(BlockQ5_0, d)));
    const uint32_t qh = load4_a2(blk + offsetof(BlockQ5_0, qh));
    const uint32_t q = load4_a2(blk + offsetof(BlockQ5_0, qs) + 4 * c);
    for (int i = 0; i < 4; ++i) {
      const int j = 4 * c + i;
      const int lo = (byte_of(q, i) & 0xF) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (byte_of(q, i) >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      w[i] = d * static_cast<float>(lo - 16);
      w[4 + i] = d * static_cast<float>(hi - 16);
    }
    start[0] = 4 * c;
    start[1] = 16 + 4 * c;
  }
};

// Q8_0: chunk c (0..3) is elements 8c..8c+7.
struct ChQ8_0 {
  static constexpr int kBlock = kQK, kBytes = sizeof(BlockQ8_0), kChunks = 4, kRuns = 2;
  TOVA_HD static void decode(const uint8_t* blk, int c, float* w, int* start) {
    const float d = half_to_float(load2(blk + offsetof(BlockQ8_0, d)));
    const uint8_t* qs = blk + offsetof(BlockQ8_0, qs) + 8 * c;
    for (int r = 0; r < 2; ++r) {
      const uint32_t q = load4_a2(qs + 4 * r);
      for (int i = 0; i < 4; ++i)
        w[4 * r + i] = static_cast<float>(static_cast<int8_t>(byte_of(q, i))) * d;
    }
    start[0] = 8 * c;
    start[1] = 8 * c + 4;
  }
};

// Q4_K: chunk c (0..31) = group g = c / 8 of 64 elements, bytes qs[32g + 4(c % 8) ..+3]: low
// nibbles are elements 64g + 4(c % 8)..+3 (sub-block 2g), high nibbles 32 further (2g + 1).
struct ChQ4_K {
  static constexpr int kBlock = kQK_K, kBytes = sizeof(BlockQ4_K), kChunks = 32, kRuns = 2;
  TOVA_HD static void decode(const uint8_t* blk, int c, float* w, int* start) {
    const auto* b = reinterpret_cast<const BlockQ4_K*>(blk);
    const float d = half_to_float(load2(blk + offsetof(BlockQ4_K, d)));
    const float dmin = half_to_float(load2(blk + offsetof(BlockQ4_K, dmin)));
    const int g = c / 8, l0 = 4 * (c % 8);
    const uint32_t q = load4_a2(blk + offsetof(BlockQ4_K, qs) + 32 * g + l0);
    for (int half = 0; half < 2; ++half) {
      int sc, m;
      scale_min_k4(b->scales, 2 * g + half, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      for (int i = 0; i < 4; ++i) {
        const float scaled = dl * static_cast<float>((byte_of(q, i) >> (4 * half)) & 0xF);
        w[4 * half + i] = scaled - ml;
      }
      start[half] = 64 * g + 32 * half + l0;
    }
  }
};

// Q6_K: chunk c (0..15) = half h = c / 8 of 128 elements, l0 = 4(c % 8): runs at 128h + 32k + l0
// (k = 0..3) from ql[64h + l0..], ql[64h + 32 + l0..] (low, then high nibbles) and qh[32h + l0..]
// (two bits per run).
struct ChQ6_K {
  static constexpr int kBlock = kQK_K, kBytes = sizeof(BlockQ6_K), kChunks = 16, kRuns = 4;
  TOVA_HD static void decode(const uint8_t* blk, int c, float* w, int* start) {
    const auto* b = reinterpret_cast<const BlockQ6_K*>(blk);
    const float d = half_to_float(load2(blk + offsetof(BlockQ6_K, d)));
    const int h = c / 8, l0 = 4 * (c % 8);
    const uint32_t ql0 = load4_a2(blk + offsetof(BlockQ6_K, ql) + 64 * h + l0);
    const uint32_t ql1 = load4_a2(blk + offsetof(BlockQ6_K, ql) + 64 * h + 32 + l0);
    const uint32_t qh = load4_a2(blk + offsetof(BlockQ6_K, qh) + 32 * h + l0);
    for (int k = 0; k < 4; ++k) {
      const uint32_t ql = k % 2 == 0 ? ql0 : ql1;
      const int at = 128 * h + 32 * k + l0;
      const float dl = d * static_cast<float>(b->scales[at / 16]);
      for (int i = 0; i < 4; ++i) {
        const int lo = (byte_of(ql, i) >> (4 * (k / 2))) & 0xF;
        const int hi = (byte_of(qh, i) >> (2 * k)) & 3;
        w[4 * k + i] = dl * static_cast<float>((lo | (hi << 4)) - 32);
      }
      start[k] = at;
    }
  }
};

}  // namespace cuda
}  // namespace tova
