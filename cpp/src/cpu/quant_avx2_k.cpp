// AVX2 kernels of the k-quants against Q8_K activations, and the Q8_K quantizer. Same contract
// as quant_avx2.cpp: integer sums are exact, only the float accumulation order differs from
// the portable kernels, and quantize_q8_K equals the portable one bit for bit.
//
// Each super-block is worked on 32 quants at a time: unpack to unsigned bytes, maddubs with the
// activations (16 int16 sums of pairs), then madd with the group scales (the low 16 quants
// belong to one 16-element group, the high 16 to the next, see scale_pair). Offsets and minima
// are folded in once per super-block through the activation block sums (bsums).
#include <cstring>
#include <type_traits>

#include "quant_avx2_util.h"
#include "quant_kernels.h"
#include "quant_x86.h"

namespace tova {
namespace avx2 {

void quantize_q8_K(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_K*>(dst);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n / kQK_K; ++i, src += kQK_K) {
    __m256 vmax = _mm256_setzero_ps();
    for (int k = 0; k < kQK_K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + k)));
    const float amax = hmax_ps(vmax);
    if (amax == 0.0f) {
      std::memset(&b[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    // The first element of largest magnitude sets the sign of the scale, as in the portable kernel.
    float max = 0.0f;
    const __m256 vamax = _mm256_set1_ps(amax);
    for (int k = 0; k < kQK_K; k += 8) {
      const __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(src + k));
      const int hit = _mm256_movemask_ps(_mm256_cmp_ps(a, vamax, _CMP_EQ_OQ));
      if (hit != 0) {
        max = src[k + __builtin_ctz(static_cast<unsigned>(hit))];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m256 vscale = _mm256_set1_ps(iscale);
    const __m256i limit = _mm256_set1_epi32(127);
    for (int c = 0; c < kQK_K; c += 32) {
      __m256i q[4];
      // vcvtps2dq rounds to nearest even (the default MXCSR mode), as nearbyint does.
      for (int k = 0; k < 4; ++k) {
        q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + c + 8 * k), vscale)), limit);
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b[i].qs + c), pack_i32_to_i8(q[0], q[1], q[2], q[3]));
      b[i].bsums[c / 16] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[0], q[1])));
      b[i].bsums[c / 16 + 1] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[2], q[3])));
    }
    b[i].d = 1.0f / iscale;
  }
}

float vec_dot_q2_K_q8_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ2_K*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  const __m256i m2 = _mm256_set1_epi8(3);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps(), acc_min = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = y[i].d * half_to_float(x[i].d);
    const float dmin = y[i].d * half_to_float(x[i].dmin);
    const __m128i sc = load128(x[i].scales);
    // Minimum part: sum over groups of (scale >> 4) * bsum.
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm256_castsi256_si128(m4)));
    const __m256i summ = _mm256_madd_epi16(mins, load256(y[i].bsums));
    acc_min = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(summ), acc_min);

    uint8_t scales[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(scales), _mm_and_si128(sc, _mm256_castsi256_si128(m4)));
    __m256i sumi = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      __m256i qv = load256(x[i].qs + 32 * h);
      for (int s = 0; s < 4; ++s) {
        const int g = 8 * h + 2 * s;
        const __m256i q = _mm256_and_si256(qv, m2);
        const __m256i p = _mm256_maddubs_epi16(q, load256(y[i].qs + 128 * h + 32 * s));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(scales[g], scales[g + 1])));
        qv = _mm256_srli_epi16(qv, 2);
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum_ps(acc) - hsum_ps(acc_min);
}

namespace {

// The 16 signed scales of a Q3_K block (see q3k_scales), four at a time from 32-bit words:
// low nibbles from bytes 0..7, the two high bits of scale i from byte 8 + i % 4 at bit 2 * (i / 4).
inline void unpack_q3k_scales(const uint8_t* packed, int8_t* out) {
  uint32_t a[3];
  std::memcpy(a, packed, 12);
  const uint32_t w0 = (a[0] & 0x0F0F0F0F) | ((a[2] << 4) & 0x30303030);
  const uint32_t w1 = (a[1] & 0x0F0F0F0F) | ((a[2] << 2) & 0x30303030);
  const uint32_t w2 = ((a[0] >> 4) & 0x0F0F0F0F) | (a[2] & 0x30303030);
  const uint32_t w3 = ((a[1] >> 4) & 0x0F0F0F0F) | ((a[2] >> 2) & 0x30303030);
  const __m128i v = _mm_sub_epi8(_mm_setr_epi32(static_cast<int>(w0), static_cast<int>(w1), static_cast<int>(w2),
                                                static_cast<int>(w3)),
                                 _mm_set1_epi8(32));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), v);
}

}  // namespace

float vec_dot_q3_K_q8_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ3_K*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  const __m256i m2 = _mm256_set1_epi8(3);
  const __m256i m1 = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    const float d = y[i].d * half_to_float(x[i].d);
    int8_t sc[16];
    unpack_q3k_scales(x[i].scales, sc);
    // Quants are read as q' = q + 4 in 0..7 (low bits | high bit << 2); the +4 is taken back
    // through the block sums: sum_g sc_g * (q' . y - 4 * bsum_g).
    const __m256i offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(load128(sc)), load256(y[i].bsums));
    __m256i sumi = _mm256_setzero_si256();
    __m256i hbits = load256(x[i].hmask);
    for (int h = 0; h < 2; ++h) {
      __m256i qv = load256(x[i].qs + 32 * h);
      for (int s = 0; s < 4; ++s) {
        const int g = 8 * h + 2 * s;
        const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(hbits, m1), 2);
        const __m256i q = _mm256_or_si256(_mm256_and_si256(qv, m2), hi);
        const __m256i p = _mm256_maddubs_epi16(q, load256(y[i].qs + 128 * h + 32 * s));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc[g], sc[g + 1])));
        qv = _mm256_srli_epi16(qv, 2);
        hbits = _mm256_srli_epi16(hbits, 1);
      }
    }
    sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(offset, 2));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum_ps(acc);
}

namespace {

// The 8 scales and 8 mins of a Q4_K / Q5_K block (its first 16 bytes `head`) as 16-bit words:
// the scales in the low 128-bit lane, the mins in the high one.
inline __m256i scales_mins16(__m128i head) { return _mm256_cvtepu8_epi16(x86::kquant_scales_mins(head)); }

// Q4_K and Q5_K: the min part, -dmin * sum_j m_j * (bsums of sub-block j), as 4 float lanes;
// m16: the 8 mins as 16-bit words.
inline __m128 min_part(__m128i m16, const BlockQ8_K& y, float dmin) {
  const __m128i bsum8 = _mm_hadd_epi16(load128(y.bsums), load128(y.bsums + 8));  // per 32 quants
  return _mm_mul_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(_mm_madd_epi16(m16, bsum8)));
}

inline float hsum_ps128(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

}  // namespace

namespace {

// Q4_K and Q5_K share everything but the quants: the fifth bit of Q5_K comes from qh, two
// sub-blocks per 32 bytes of qs. The kernels take R activation rows at once (the weight
// super-block is unpacked once for all); per row, operations and order are those of R = 1.
template <class Block, int R>
struct DotQ45K {
  static void run(int64_t n, const void* vx, const void* vy, size_t stride, float* out) {
    constexpr bool kFive = sizeof(Block) == sizeof(BlockQ5_K);
    const auto* x = static_cast<const Block*>(vx);
    const YRows<BlockQ8_K, R> y(vy, stride);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m1 = _mm256_set1_epi8(1);
    __m256 acc[R];
    __m128 acc_min[R];
    for (int k = 0; k < R; ++k) {
      acc[k] = _mm256_setzero_ps();
      acc_min[k] = _mm_setzero_ps();
    }
    for (int64_t i = 0; i < n / kQK_K; ++i) {
      const __m128i head = load128(x + i);
      const __m256i sm16 = scales_mins16(head);
      // The scales (words 0..7) in both 128-bit lanes, for word_of to pick from.
      const __m256i scales = _mm256_permute2x128_si256(sm16, sm16, 0x00);
      const __m128 d_dmin = _mm_cvtph_ps(head);
      const float dx = _mm_cvtss_f32(d_dmin), dmin = _mm_cvtss_f32(_mm_movehdup_ps(d_dmin));
      for (int k = 0; k < R; ++k)
        acc_min[k] = _mm_add_ps(acc_min[k], min_part(_mm256_extracti128_si256(sm16, 1), y.r[k][i], y.r[k][i].d * dmin));
      __m256i hbits = _mm256_setzero_si256();
      if constexpr (kFive) hbits = load256(x[i].qh);
      __m256i sumi[R];
      for (int k = 0; k < R; ++k) sumi[k] = _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {
        const __m256i qv = load256(x[i].qs + 32 * c);
        __m256i lo = _mm256_and_si256(qv, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
        if constexpr (kFive) {
          // Sub-block 2c takes bit 2c of qh, sub-block 2c + 1 bit 2c + 1.
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hbits, m1), 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 1), m1), 4));
          hbits = _mm256_srli_epi16(hbits, 2);
        }
        const __m256i slo = word_of(scales, 2 * c), shi = word_of(scales, 2 * c + 1);
        for (int k = 0; k < R; ++k) {
          const __m256i plo = _mm256_maddubs_epi16(lo, load256(y.r[k][i].qs + 64 * c));
          const __m256i phi = _mm256_maddubs_epi16(hi, load256(y.r[k][i].qs + 64 * c + 32));
          sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(plo, slo));
          sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(phi, shi));
        }
      }
      for (int k = 0; k < R; ++k)
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(y.r[k][i].d * dx), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
    }
    for (int k = 0; k < R; ++k) out[k] = hsum_ps(acc[k]) - hsum_ps128(acc_min[k]);
  }
};

template <class Block, int R>
struct DotQ6K {
  static void run(int64_t n, const void* vx, const void* vy, size_t stride, float* out) {
    const auto* x = static_cast<const BlockQ6_K*>(vx);
    const YRows<BlockQ8_K, R> y(vy, stride);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(3);
    __m256 acc[R];
    for (int k = 0; k < R; ++k) acc[k] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / kQK_K; ++i) {
      const int8_t* sc = x[i].scales;
      const __m256i sc16 = _mm256_cvtepi8_epi16(load128(sc));
      __m256i sumi[R];
      for (int k = 0; k < R; ++k) sumi[k] = _mm256_setzero_si256();
      for (int h = 0; h < 2; ++h) {
        // The scales of this half (words 8h .. 8h + 7 of sc16) in both 128-bit lanes.
        const __m256i sch = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00) : _mm256_permute2x128_si256(sc16, sc16, 0x11);
        const __m256i ql0 = load256(x[i].ql + 64 * h);
        const __m256i ql1 = load256(x[i].ql + 64 * h + 32);
        const __m256i qh = load256(x[i].qh + 32 * h);
        __m256i q[4];
        q[0] = _mm256_and_si256(ql0, m4);
        q[1] = _mm256_and_si256(ql1, m4);
        q[2] = _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4);
        q[3] = _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4);
        q[0] = _mm256_or_si256(q[0], _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
        q[1] = _mm256_or_si256(q[1], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
        q[2] = _mm256_or_si256(q[2], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
        q[3] = _mm256_or_si256(q[3], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
        for (int t = 0; t < 4; ++t) {
          const __m256i s = word_pair_of(sch, t);  // scale_pair(sc[8h + 2t], sc[8h + 2t + 1])
          for (int k = 0; k < R; ++k) {
            const __m256i p = _mm256_maddubs_epi16(q[t], load256(y.r[k][i].qs + 128 * h + 32 * t));
            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, s));
          }
        }
      }
      const float dx = half_to_float(x[i].d);
      for (int k = 0; k < R; ++k) {
        // Quants are read unsigned (0..63); the -32 offset comes back as 32 * sum_g sc_g * bsum_g.
        const __m256i offset = _mm256_madd_epi16(sc16, load256(y.r[k][i].bsums));
        sumi[k] = _mm256_sub_epi32(sumi[k], _mm256_slli_epi32(offset, 5));
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(y.r[k][i].d * dx), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
      }
    }
    for (int k = 0; k < R; ++k) out[k] = hsum_ps(acc[k]);
  }
};

}  // namespace

float vec_dot_q4_K_q8_K(int64_t n, const void* x, const void* y) { return one_row<DotQ45K<BlockQ4_K, 1>::run>(n, x, y); }
float vec_dot_q5_K_q8_K(int64_t n, const void* x, const void* y) { return one_row<DotQ45K<BlockQ5_K, 1>::run>(n, x, y); }
float vec_dot_q6_K_q8_K(int64_t n, const void* x, const void* y) { return one_row<DotQ6K<BlockQ6_K, 1>::run>(n, x, y); }
void vec_dot_rows_q4_K_q8_K(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<BlockQ4_K, DotQ45K>(n, x, y, s, r, o); }
void vec_dot_rows_q5_K_q8_K(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<BlockQ5_K, DotQ45K>(n, x, y, s, r, o); }
void vec_dot_rows_q6_K_q8_K(int64_t n, const void* x, const void* y, size_t s, int r, float* o) { rows<BlockQ6_K, DotQ6K>(n, x, y, s, r, o); }

// --- dequantization: equal to the portable kernels bit for bit (the group scale d * sc rounded
// to float first, then scale * q, minus the group's minimum where there is one, never fused) ---

namespace {

// Q4_K and Q5_K: sub-block j (32 elements) is nibble j % 2 of qs[32 (j / 2) ..], plus bit j of
// each qh byte as the fifth bit for Q5_K.
template <class Block>
void dequantize_q45_K(const void* vx, float* dst, int64_t n) {
  const auto* x = static_cast<const Block*>(vx);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const float d = half_to_float(x[i].d), dmin = half_to_float(x[i].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      kquant_scale_min(x[i].scales, j, &sc, &m);
      const __m256i packed = load256(x[i].qs + 32 * (j / 2));
      __m256i q = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(packed, 4) : packed, m4);
      if constexpr (std::is_same_v<Block, BlockQ5_K>) {
        const __m256i bit = _mm256_and_si256(_mm256_srli_epi16(load256(x[i].qh), j), _mm256_set1_epi8(1));
        q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
      }
      store_scaled_u8<true>(q, _mm256_set1_ps(d * static_cast<float>(sc)),
                            _mm256_set1_ps(dmin * static_cast<float>(m)), dst + 32 * j);
    }
  }
}

// 16 signed quants (int8, element order) times a scale.
inline void store_scaled16(__m128i q, float scale, float* dst) {
  const __m256 d = _mm256_set1_ps(scale);
  _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
  _mm256_storeu_ps(dst + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), d));
}

}  // namespace

void dequantize_q4_K(const void* x, float* dst, int64_t n) { dequantize_q45_K<BlockQ4_K>(x, dst, n); }
void dequantize_q5_K(const void* x, float* dst, int64_t n) { dequantize_q45_K<BlockQ5_K>(x, dst, n); }

// Q6_K: elements 128h + 32t + l (l in 0..31) are the quants q[t] of DotQ6K's half h, minus 32;
// their group is 8h + 2t for l < 16, the next one above.
void dequantize_q6_K(const void* vx, float* dst, int64_t n) {
  const auto* x = static_cast<const BlockQ6_K*>(vx);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const float d = half_to_float(x[i].d);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load256(x[i].ql + 64 * h), ql1 = load256(x[i].ql + 64 * h + 32);
      const __m256i qh = load256(x[i].qh + 32 * h);
      const __m256i low[4] = {ql0, ql1, _mm256_srli_epi16(ql0, 4), _mm256_srli_epi16(ql1, 4)};
      for (int t = 0; t < 4; ++t) {
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * t), m2);
        const __m256i q = _mm256_sub_epi8(
            _mm256_or_si256(_mm256_and_si256(low[t], m4), _mm256_slli_epi16(high, 4)), off);
        const int g = 8 * h + 2 * t;
        float* out = dst + 128 * h + 32 * t;
        store_scaled16(_mm256_castsi256_si128(q), d * static_cast<float>(x[i].scales[g]), out);
        store_scaled16(_mm256_extracti128_si256(q, 1), d * static_cast<float>(x[i].scales[g + 1]), out + 16);
      }
    }
  }
}

float vec_dot_q8_K_q8_K(int64_t n, const void* vx, const void* vy) {
  const auto* x = static_cast<const BlockQ8_K*>(vx);
  const auto* y = static_cast<const BlockQ8_K*>(vy);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK_K; ++i) {
    __m256i sumi = _mm256_setzero_si256();
    for (int c = 0; c < kQK_K; c += 32) {
      sumi = _mm256_add_epi32(sumi, dot_s8_s8(load256(x[i].qs + c), load256(y[i].qs + c)));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum_ps(acc);
}

}  // namespace avx2
}  // namespace tova
