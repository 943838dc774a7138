// What the AVX2 and AVX-512 tiers share (quant_avx2_k.cpp, quant_avx512_k.cpp): 128-bit helpers
// for the k-quants. Include only from files compiled with -mavx2; everything is `static` (see
// quant_avx2_util.h).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace tova {
namespace x86 {

// The 16 bytes of a Q4_K / Q5_K block's 8 scales then 8 mins (kquant_scales_mins, four bytes at
// a time: w0 = u0 & 0x3F.., w1 = (u2 & 0x0F..) | ((u0 >> 2) & 0x30..), w2 = u1 & 0x3F..,
// w3 = ((u2 >> 4) & 0x0F..) | ((u1 >> 2) & 0x30..)), from the block's first 16 bytes `head`
// (d | dmin, then u0, u1, u2), in registers: no round trip through memory, whose four-byte stores
// the 16-byte load after them could not take from the store buffer.
static inline __m128i kquant_scales_mins(__m128i head) {
  const __m128i a = _mm_srlv_epi32(_mm_shuffle_epi32(head, _MM_SHUFFLE(3, 2, 3, 1)), _mm_set_epi32(4, 0, 0, 0));
  const __m128i b = _mm_srli_epi32(_mm_shuffle_epi32(head, _MM_SHUFFLE(2, 2, 1, 1)), 2);
  return _mm_or_si128(_mm_and_si128(a, _mm_set_epi32(0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F)),
                      _mm_and_si128(b, _mm_set_epi32(0x30303030, 0, 0x30303030, 0)));
}

}  // namespace x86
}  // namespace tova
