// Small AVX2 building blocks shared by quant_avx2.cpp and quant_avx2_k.cpp. Include only from
// files compiled with -mavx2 -mfma -mf16c. Everything here is `static` (see quant_kernels.h)
// and there are no vector constants at namespace scope, whose initializers would run at start-up
// on CPUs that lack AVX2.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "quant_kernels.h"  // kMaxDotRows, by_row_count

namespace tova {
namespace avx2 {

static inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

static inline float hmax_ps(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// vmovd + vcvtph2ps (_cvtsh_ss compiles to a vpinsrw that merges into whatever register it picks,
// possibly one a load has just written: a false dependency in the hot loops).
static inline float half_to_float(uint16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

static inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
static inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// Sums of products of unsigned a (0..255) and signed b, four adjacent bytes per int32 lane.
// maddubs cannot saturate here: every caller keeps a * b pairs below 32767.
static inline __m256i dot_u8_s8(__m256i a, __m256i b) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

// The same for two signed operands: |a| * (b with a's sign). Exact while b != -128, which holds
// for every activation quantized by tova (|q| <= 127); a may be -128.
static inline __m256i dot_s8_s8(__m256i a, __m256i b) {
  return dot_u8_s8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

// 16 packed bytes -> 32 nibbles: the low nibbles first (elements 0..15), then the high ones.
static inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i b = load128(qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

// Bit j of a 32-bit word -> byte j = 0xFF (set) or 0x00.
static inline __m256i bits_to_bytes(uint32_t bits) {
  // Byte j gets the source byte j / 8 ...
  const __m256i idx = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                        0x0101010101010101, 0x0000000000000000);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), idx);
  // ... then every bit but bit j % 8 is forced to one, so the byte is all ones iff that bit was.
  const __m256i others = _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFE);
  v = _mm256_or_si256(v, others);
  return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

// 32 unsigned quants (bytes in element order) -> q * d + m, or q * d - m with kSubtract: a
// multiply, then an add or subtract, never fused (as the portable decoders round them).
template <bool kSubtract>
static inline void store_scaled_u8(__m256i q, __m256 d, __m256 m, float* dst) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; ++k) {
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k])), d);
    _mm256_storeu_ps(dst + 8 * k, kSubtract ? _mm256_sub_ps(v, m) : _mm256_add_ps(v, m));
  }
}

// Four vectors of 8 int32 (values within int8) -> 32 int8 in element order.
static inline __m256i pack_i32_to_i8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b);  // per 128-bit lane, so the order is interleaved
  const __m256i cd = _mm256_packs_epi32(c, d);
  const __m256i abcd = _mm256_packs_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// A scale pair for madd on a 32-quant product: the low 16 lanes get s0, the high 16 get s1.
static inline __m256i scale_pair(int s0, int s1) {
  return _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(s1)), _mm_set1_epi16(static_cast<int16_t>(s0)));
}

// Shuffle masks that spread one 16-bit word over a 128-bit lane (vpshufb works per lane):
// word[j] takes word j of a lane (bytes 2j, 2j + 1) into all 8 of its 16-bit lanes; pair[t] does
// that with word 2t in the low lane and word 2t + 1 in the high one. Plain bytes,
// constant-initialized (no code runs at start-up), each read by one load.
struct WordMasks {
  alignas(32) uint8_t pair[4][32];
  alignas(16) uint8_t word[8][16];
  constexpr WordMasks() : pair{}, word{} {
    for (int j = 0; j < 8; ++j)
      for (int b = 0; b < 16; ++b) word[j][b] = static_cast<uint8_t>(2 * j + (b & 1));
    for (int t = 0; t < 4; ++t)
      for (int b = 0; b < 32; ++b) pair[t][b] = static_cast<uint8_t>(2 * (2 * t + b / 16) + (b & 1));
  }
};
static constexpr WordMasks kWordMasks{};

// Word j of v's lanes in every 16-bit lane of each (a madd scale from a vector of 16-bit scales).
static inline __m256i word_of(__m256i v, int j) {
  return _mm256_shuffle_epi8(v, _mm256_broadcastsi128_si256(load128(kWordMasks.word[j])));
}
// Word 2t of v's low lane in the low half, word 2t + 1 of its high lane in the high half.
static inline __m256i word_pair_of(__m256i v, int t) {
  return _mm256_shuffle_epi8(v, load256(kWordMasks.pair[t]));
}

// The activation rows of a multi-row dot product: R rows `stride` bytes apart.
template <class YBlock, int R>
struct YRows {
  const YBlock* r[R];
  YRows(const void* y, size_t stride) {
    for (int k = 0; k < R; ++k)
      r[k] = reinterpret_cast<const YBlock*>(static_cast<const uint8_t*>(y) + k * stride);
  }
};

// A kernel template Kernel<Block, R>::run(n, x, y, stride, out) as vec_dot (one row) ...
template <void (*Run)(int64_t, const void*, const void*, size_t, float*)>
static inline float one_row(int64_t n, const void* x, const void* y) {
  float r;
  Run(n, x, y, 0, &r);
  return r;
}

// ... and as vec_dot_rows (1 to 4 rows).
template <class Block, template <class, int> class Kernel>
static inline void rows(int64_t n, const void* x, const void* y, size_t stride, int n_rows, float* out) {
  by_row_count(n_rows, [&](auto r) { Kernel<Block, decltype(r)::value>::run(n, x, y, stride, out); });
}

}  // namespace avx2
}  // namespace tova
