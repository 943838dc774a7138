// AVX-512 (BW, VL, VNNI) tiles of the k-quants against Q8_K activations: MR weight rows times NR
// activation rows per call, 64 quants per step. A step is one maddubs (unsigned quants times
// signed activations: 32 int16 sums of pairs) and one vpdpwssd with the sub-blocks' scales; each
// weight step is unpacked once for the NR activation rows, each activation step loaded once for
// the MR weight rows. Integer sums are exact; per super-block they become float once.
#include <cstring>
#include <type_traits>

#include "quant_avx512_util.h"
#include "quant_kernels.h"

namespace tova {
namespace avx512 {

namespace {

// The 8 scales and 8 mins of a Q4_K / Q5_K block as int16 lanes (see kquant_scale_min).
inline void scales_mins(const uint8_t* packed, __m128i* scales, __m128i* mins) {
  alignas(16) uint8_t sm[16];
  kquant_scales_mins(packed, sm);
  const __m128i v = _mm_load_si128(reinterpret_cast<const __m128i*>(sm));
  *scales = _mm_cvtepu8_epi16(v);
  *mins = _mm_cvtepu8_epi16(_mm_srli_si128(v, 8));
}

// Scales of sub-blocks 2c (int16 lanes 0..15) and 2c + 1 (lanes 16..31), from the 8 int16 scales
// repeated in each 128-bit lane (`lanes`): one in-lane byte shuffle.
inline __m512i scale_pair(__m512i lanes, int c) {
  const __m512i pick = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>((4 * c) | ((4 * c + 1) << 8))),
                                          _mm256_set1_epi16(static_cast<int16_t>((4 * c + 2) | ((4 * c + 3) << 8))), 1);
  return _mm512_shuffle_epi8(lanes, pick);
}

// Sums of the activations per 32 quants (8 int16) from Q8_K's sums per 16.
inline __m128i bsums32(const BlockQ8_K& y) { return _mm_hadd_epi16(load128(y.bsums), load128(y.bsums + 8)); }

// Q4_K and Q5_K: sum_j d sc_j (q_j . y_j) - dmin sum_j m_j bsum_j per super-block.
template <bool kFive>
struct Q45K {
  using Block = typename std::conditional<kFive, BlockQ5_K, BlockQ4_K>::type;
  // Per activation row and block: d_y * (the activation sums per 32 quants), 8 floats, then d_y.
  static constexpr int kPrep = 9;
  static constexpr int64_t kBlock = kQK_K;
  static void prepare(int64_t n, const uint8_t* y, size_t ys, int nk, float* pre) {
    for (int64_t i = 0; i < n / kQK_K; ++i)
      for (int k = 0; k < nk; ++k) {
        const BlockQ8_K& b = reinterpret_cast<const BlockQ8_K*>(y + k * ys)[i];
        float* p = pre + (i * nk + k) * kPrep;
        _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(bsums32(b))), _mm256_set1_ps(b.d)));
        p[8] = b.d;
      }
  }
  template <int MR, int NR>
  static void run(int64_t n, const uint8_t* x, size_t xs, const uint8_t* y, size_t ys, const float* pre, float* out,
                  size_t os) {
    __m512 acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int k = 0; k < NR; ++k) acc[r][k] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / kQK_K; ++i) {
      const Block* xb[MR];
      const BlockQ8_K* yb[NR];
      for (int r = 0; r < MR; ++r) xb[r] = reinterpret_cast<const Block*>(x + r * xs) + i;
      for (int k = 0; k < NR; ++k) yb[k] = reinterpret_cast<const BlockQ8_K*>(y + k * ys) + i;
      __m128i sc[MR], mn[MR];
      __m512i sc4[MR];
      for (int r = 0; r < MR; ++r) {
        scales_mins(xb[r]->scales, &sc[r], &mn[r]);
        sc4[r] = _mm512_broadcast_i32x4(sc[r]);
      }
      __m512i sumi[MR][NR];
      for (int r = 0; r < MR; ++r)
        for (int k = 0; k < NR; ++k) sumi[r][k] = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        __m512i u[MR], s[MR];
        for (int r = 0; r < MR; ++r) {
          u[r] = nibbles_64(xb[r]->qs + 32 * c);
          if constexpr (kFive) {
            // Sub-block 2c takes bit 2c of qh, sub-block 2c + 1 bit 2c + 1.
            const __m512i h = _mm512_broadcast_i64x4(load256(xb[r]->qh));
            const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << (2 * c))),
                                                   _mm256_set1_epi8(static_cast<char>(1 << (2 * c + 1))), 1);
            u[r] = _mm512_or_si512(u[r], _mm512_maskz_set1_epi8(_mm512_test_epi8_mask(h, bit), 0x10));
          }
          s[r] = scale_pair(sc4[r], c);
        }
        for (int k = 0; k < NR; ++k) {
          const __m512i yv = load512(yb[k]->qs + 64 * c);
          for (int r = 0; r < MR; ++r)
            sumi[r][k] = _mm512_dpwssd_epi32(sumi[r][k], _mm512_maddubs_epi16(u[r], yv), s[r]);
        }
      }
      // Per pair: d_x d_y sumi, and -dmin_x sum_j m_j (d_y bsum_j) in lanes 0..7.
      __m512 dx[MR], wm[MR];
      for (int r = 0; r < MR; ++r) {
        dx[r] = _mm512_set1_ps(half_to_float(xb[r]->d));
        wm[r] = _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(mn[r])),
                                                     _mm256_set1_ps(-half_to_float(xb[r]->dmin))));
      }
      for (int k = 0; k < NR; ++k) {
        const float* p = pre + (i * NR + k) * kPrep;
        const __m512 f = _mm512_zextps256_ps512(_mm256_loadu_ps(p));
        const __m512 dy = _mm512_set1_ps(p[8]);
        for (int r = 0; r < MR; ++r) {
          acc[r][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[r][k]), _mm512_mul_ps(dx[r], dy), acc[r][k]);
          acc[r][k] = _mm512_fmadd_ps(wm[r], f, acc[r][k]);
        }
      }
    }
    for (int r = 0; r < MR; ++r) {
      for (int k0 = 0; k0 < NR; k0 += 8) reduce_sums(acc[r] + k0, NR - k0 < 8 ? NR - k0 : 8, out + k0 * os + r, os);
    }
  }
};

// Q6_K: quants read unsigned (0..63), the -32 offset taken back through the activation sums
// per 16 (bsums) in the same integer sum: sum_g sc_g (q_g . y_g) - 32 sum_g sc_g bsum_g.
struct Q6K {
  static constexpr int kPrep = 0;
  static constexpr int64_t kBlock = kQK_K;
  static void prepare(int64_t, const uint8_t*, size_t, int, float*) {}
  template <int MR, int NR>
  static void run(int64_t n, const uint8_t* x, size_t xs, const uint8_t* y, size_t ys, const float*, float* out,
                  size_t os) {
    __m512 acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int k = 0; k < NR; ++k) acc[r][k] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
      const BlockQ6_K* xb[MR];
      const BlockQ8_K* yb[NR];
      for (int r = 0; r < MR; ++r) xb[r] = reinterpret_cast<const BlockQ6_K*>(x + r * xs) + i;
      for (int k = 0; k < NR; ++k) yb[k] = reinterpret_cast<const BlockQ8_K*>(y + k * ys) + i;
      __m512i sc16[MR];  // the 16 scales as int16, twice (lanes 0..15 and 16..31)
      for (int r = 0; r < MR; ++r) sc16[r] = _mm512_broadcast_i64x4(_mm256_cvtepi8_epi16(load128(xb[r]->scales)));
      __m512i sumi[MR][NR];
      for (int r = 0; r < MR; ++r)
        for (int k = 0; k < NR; ++k) sumi[r][k] = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        for (int p = 0; p < 2; ++p) {
          // Elements 64p..64p+63 of half h: ql[0..31] and ql[32..63] (low nibbles for p = 0,
          // high for p = 1), with the qh bit pairs 2p (first 32) and 2p + 1 (next 32).
          __m512i u[MR], s[MR];
          for (int r = 0; r < MR; ++r) {
            const __m512i ql = load512(xb[r]->ql + 64 * h);
            const __m512i qh = _mm512_broadcast_i64x4(load256(xb[r]->qh + 32 * h));
            __m512i lo, hb;
            if (p == 0) {
              lo = _mm512_and_si512(ql, m4);
              hb = _mm512_and_si512(_mm512_sllv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4)), m30);
            } else {
              lo = _mm512_and_si512(_mm512_srli_epi64(ql, 4), m4);
              hb = _mm512_and_si512(_mm512_srlv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0)), m30);
            }
            u[r] = _mm512_or_si512(lo, hb);
            // Groups 8h + 4p .. 8h + 4p + 3, 16 quants (8 int16 pair sums) each.
            const int g = 8 * h + 4 * p;
            const __m512i idx = _mm512_set_epi16(g + 3, g + 3, g + 3, g + 3, g + 3, g + 3, g + 3, g + 3, g + 2, g + 2,
                                                 g + 2, g + 2, g + 2, g + 2, g + 2, g + 2, g + 1, g + 1, g + 1, g + 1,
                                                 g + 1, g + 1, g + 1, g + 1, g, g, g, g, g, g, g, g);
            s[r] = _mm512_permutexvar_epi16(idx, sc16[r]);
          }
          for (int k = 0; k < NR; ++k) {
            const __m512i yv = load512(yb[k]->qs + 128 * h + 64 * p);
            for (int r = 0; r < MR; ++r)
              sumi[r][k] = _mm512_dpwssd_epi32(sumi[r][k], _mm512_maddubs_epi16(u[r], yv), s[r]);
          }
        }
      }
      for (int k = 0; k < NR; ++k) {
        const __m256i bs = load256(yb[k]->bsums);
        const float dy = yb[k]->d;
        for (int r = 0; r < MR; ++r) {
          const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(_mm512_castsi512_si256(sc16[r]), bs), 5);
          const __m512i t = _mm512_sub_epi32(sumi[r][k], _mm512_zextsi256_si512(off));
          acc[r][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(dy * half_to_float(xb[r]->d)), acc[r][k]);
        }
      }
    }
    for (int r = 0; r < MR; ++r) {
      for (int k0 = 0; k0 < NR; k0 += 8) reduce_sums(acc[r] + k0, NR - k0 < 8 ? NR - k0 : 8, out + k0 * os + r, os);
    }
  }
};

using GemmQ4K = Gemm<Q45K<false>, 1, 8>;
using GemmQ5K = Gemm<Q45K<true>, 1, 8>;
using GemmQ6K = Gemm<Q6K, 1, 8>;

}  // namespace

TOVA_AVX512_GEMM(q4_K_q8_K, GemmQ4K)
TOVA_AVX512_GEMM(q5_K_q8_K, GemmQ5K)
TOVA_AVX512_GEMM(q6_K_q8_K, GemmQ6K)

}  // namespace avx512
}  // namespace tova
