// AVX-512 (BW, VL, VNNI) tiles of the k-quants against Q8_K activations: MR weight rows times NR
// activation rows per call, 64 quants per step. A step is one vpdpbusd (unsigned quants times
// signed activations: 16 int32 sums of 4); two steps are packed to int16 and take their
// sub-blocks' scales in one vpdpwssd. Each weight step is unpacked once for the NR activation
// rows, each activation step loaded once for the MR weight rows. Integer sums are exact; per
// super-block they become float once, on 8 lanes.
#include <cstring>
#include <type_traits>

#include "quant_avx512_util.h"
#include "quant_kernels.h"
#include "quant_x86.h"

namespace tova {
namespace avx512 {

namespace {

// A Q4_K / Q5_K block's first 16 bytes in registers: its 8 scales and 8 mins as int16 lanes, d
// and dmin as floats in lanes 0 and 1.
inline void block_head(const void* block, __m128i* scales, __m128i* mins, __m128* d_dmin) {
  const __m128i head = load128(block);
  const __m128i w = x86::kquant_scales_mins(head);
  *scales = _mm_cvtepu8_epi16(w);
  *mins = _mm_cvtepu8_epi16(_mm_srli_si128(w, 8));
  *d_dmin = _mm_cvtph_ps(head);
}

// The scales of sub-blocks 4h .. 4h + 3 (h = 0, 1) under the int16 words that pack_steps leaves
// their sums in: in 128-bit lanes 0 and 1, sub-block 4h then 4h + 1 (four words each); in lanes
// 2 and 3, 4h + 2 then 4h + 3. `sc` holds the 8 scales as int16.
inline __m512i scale_quad(__m128i sc, int h) {
  const int a = 4 * h, b = a + 1, c = a + 2, d = a + 3;
  return _mm512_permutexvar_epi16(_mm512_set_epi16(d, d, d, d, c, c, c, c, d, d, d, d, c, c, c, c,  //
                                                   b, b, b, b, a, a, a, a, b, b, b, b, a, a, a, a),
                                  _mm512_castsi128_si512(sc));
}

// Two dot products of 64 quants (16 int32 each, sums of 4 products of a quant under 64 and an
// activation byte: at most 4 * 63 * 128 = 32,256 in size) packed to int16, which never
// saturates: per 128-bit lane, t0's four words then t1's.
inline __m512i pack_steps(__m512i t0, __m512i t1) { return _mm512_packs_epi32(t0, t1); }

// Sums of the activations per 32 quants (8 int16) from Q8_K's sums per 16.
inline __m128i bsums32(const BlockQ8_K& y) { return _mm_hadd_epi16(load128(y.bsums), load128(y.bsums + 8)); }

// Q5_K's fifth bits of sub-blocks j (bytes 0..31) and j + 2 (32..63) as 0x10 bytes, from qh
// broadcast to both 256-bit halves.
inline __m512i high_bits(__m512i qh, int j) {
  const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << j)),
                                         _mm256_set1_epi8(static_cast<char>(1 << (j + 2))), 1);
  return _mm512_maskz_set1_epi8(_mm512_test_epi8_mask(qh, bit), 0x10);
}

// Q4_K and Q5_K: sum_j d sc_j (q_j . y_j) - dmin sum_j m_j bsum_j per super-block.
//
// 128 quants (a 64-byte load of weights, four sub-blocks) at a time. The bytes qs[64h ..
// 64h + 63] hold sub-blocks 4h and 4h + 2 in their low nibbles, 4h + 1 and 4h + 3 in their high
// ones; prepare puts a copy of each activation block in that order (made once per activation row
// and shared by every weight row), so that the 128 quants take one load, one shift and two masks,
// a vpdpbusd per 64 (sums of 4 products), one pack of the two to int16 and one vpdpwssd with the
// four sub-blocks' scales.
template <bool kFive>
struct Q45K {
  using Block = typename std::conditional<kFive, BlockQ5_K, BlockQ4_K>::type;
  // Per activation row and block: its 256 quants in the order above (64 floats' room), d_y *
  // (the activation sums per 32 quants) as 8 floats, then d_y.
  static constexpr int kPrep = 64 + 8 + 1;
  static constexpr int64_t kBlock = kQK_K;
  static void prepare(int64_t n, const uint8_t* y, size_t ys, int nk, float* pre) {
    static constexpr int kOrder[8] = {0, 2, 1, 3, 4, 6, 5, 7};  // sub-blocks, as the copy holds them
    for (int64_t i = 0; i < n / kQK_K; ++i)
      for (int k = 0; k < nk; ++k) {
        const BlockQ8_K& b = reinterpret_cast<const BlockQ8_K*>(y + k * ys)[i];
        float* p = pre + (i * nk + k) * kPrep;
        for (int j = 0; j < 8; ++j) std::memcpy(reinterpret_cast<uint8_t*>(p) + 32 * j, b.qs + 32 * kOrder[j], 32);
        _mm256_storeu_ps(p + 64,
                         _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(bsums32(b))), _mm256_set1_ps(b.d)));
        p[72] = b.d;
      }
  }
  template <int MR, int NR>
  static void run(int64_t n, const uint8_t* x, size_t xs, const uint8_t*, size_t, const float* pre, float* out,
                  size_t os) {
    // Decode's tiles over short rows (kFarRows apart, quant_avx512_util.h) and single short rows.
    const bool ahead = (NR == 1 && MR > 1) || (MR == 1 && short_rows(xs));
    const __m512i m4 = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    __m256 acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int k = 0; k < NR; ++k) acc[r][k] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / kQK_K; ++i) {
      const Block* xb[MR];
      const uint8_t* yq[NR];
      for (int r = 0; r < MR; ++r) xb[r] = reinterpret_cast<const Block*>(x + r * xs) + i;
      for (int k = 0; k < NR; ++k) yq[k] = reinterpret_cast<const uint8_t*>(pre + (i * NR + k) * kPrep);
      if (ahead)
        for (int r = 0; r < MR; ++r) prefetch_ahead(xb[r], sizeof(Block));
      __m128i sc[MR], mn[MR];
      __m128 dm[MR];
      for (int r = 0; r < MR; ++r) block_head(xb[r], &sc[r], &mn[r], &dm[r]);
      __m512i sumi[MR][NR];
      for (int r = 0; r < MR; ++r)
        for (int k = 0; k < NR; ++k) sumi[r][k] = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        __m512i lo[MR], hi[MR], s[MR];
        for (int r = 0; r < MR; ++r) {
          const __m512i v = load512(xb[r]->qs + 64 * h);
          lo[r] = _mm512_and_si512(v, m4);
          hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
          if constexpr (kFive) {
            // Sub-block j takes bit j of qh.
            const __m512i qh = _mm512_broadcast_i64x4(load256(xb[r]->qh));
            lo[r] = _mm512_or_si512(lo[r], high_bits(qh, 4 * h));
            hi[r] = _mm512_or_si512(hi[r], high_bits(qh, 4 * h + 1));
          }
          s[r] = scale_quad(sc[r], h);
        }
        for (int k = 0; k < NR; ++k) {
          const __m512i y0 = load512(yq[k] + 128 * h), y1 = load512(yq[k] + 128 * h + 64);
          for (int r = 0; r < MR; ++r) {
            const __m512i t = pack_steps(_mm512_dpbusd_epi32(zero, lo[r], y0), _mm512_dpbusd_epi32(zero, hi[r], y1));
            sumi[r][k] = _mm512_dpwssd_epi32(sumi[r][k], t, s[r]);
          }
        }
      }
      // Per pair, on 8 lanes: d_x d_y (sumi's two halves added), and -dmin_x m_j (d_y bsum_j).
      float dx[MR];
      __m256 wm[MR];
      for (int r = 0; r < MR; ++r) {
        dx[r] = _mm_cvtss_f32(dm[r]);
        wm[r] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(mn[r])),
                              _mm256_broadcastss_ps(_mm_xor_ps(_mm_movehdup_ps(dm[r]), _mm_set1_ps(-0.0f))));
      }
      for (int k = 0; k < NR; ++k) {
        const float* p = pre + (i * NR + k) * kPrep;
        const __m256 f = _mm256_loadu_ps(p + 64);
        for (int r = 0; r < MR; ++r) {
          const __m256i s8 =
              _mm256_add_epi32(_mm512_castsi512_si256(sumi[r][k]), _mm512_extracti64x4_epi64(sumi[r][k], 1));
          acc[r][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_set1_ps(dx[r] * p[72]), acc[r][k]);
          acc[r][k] = _mm256_fmadd_ps(wm[r], f, acc[r][k]);
        }
      }
    }
    for (int r = 0; r < MR; ++r) reduce_halves(acc[r], NR, out + r, os);
  }
};

// Q6_K: quants read unsigned (0..63), the -32 offset taken back through the activation sums
// per 16 (bsums) in the same integer sum: sum_g sc_g (q_g . y_g) - 32 sum_g sc_g bsum_g. A step
// is 64 quants (groups of 16 g .. g + 3) and one vpdpbusd (sums of 4 products, each under
// 4 * 63 * 128); two steps are packed to int16 and take their eight groups' scales in one
// vpdpwssd.
struct Q6K {
  static constexpr int kPrep = 0;
  static constexpr int64_t kBlock = kQK_K;
  static void prepare(int64_t, const uint8_t*, size_t, int, float*) {}
  // The vpermw indices that put the scales of groups 8h .. 8h + 7 under pack_steps' words: in
  // 128-bit lane L, group 8h + L (four words) then 8h + 4 + L.
  static __m512i scale_oct_index(int h) {
    const int a = 8 * h;
    return _mm512_set_epi16(a + 7, a + 7, a + 7, a + 7, a + 3, a + 3, a + 3, a + 3, a + 6, a + 6, a + 6, a + 6, a + 2,
                            a + 2, a + 2, a + 2, a + 5, a + 5, a + 5, a + 5, a + 1, a + 1, a + 1, a + 1, a + 4, a + 4,
                            a + 4, a + 4, a, a, a, a);
  }
  template <int MR, int NR>
  static void run(int64_t n, const uint8_t* x, size_t xs, const uint8_t* y, size_t ys, const float*, float* out,
                  size_t os) {
    __m256 acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int k = 0; k < NR; ++k) acc[r][k] = _mm256_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30), zero = _mm512_setzero_si512();
    const __m512i s_lo = scale_oct_index(0), s_hi = scale_oct_index(1);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
      const BlockQ6_K* xb[MR];
      const BlockQ8_K* yb[NR];
      for (int r = 0; r < MR; ++r) xb[r] = reinterpret_cast<const BlockQ6_K*>(x + r * xs) + i;
      for (int k = 0; k < NR; ++k) yb[k] = reinterpret_cast<const BlockQ8_K*>(y + k * ys) + i;
      __m256i sc16[MR];  // the 16 scales as int16
      for (int r = 0; r < MR; ++r) sc16[r] = _mm256_cvtepi8_epi16(load128(xb[r]->scales));
      __m512i sumi[MR][NR];
      for (int r = 0; r < MR; ++r)
        for (int k = 0; k < NR; ++k) sumi[r][k] = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        // Quants 128h .. 128h + 63 (u0: ql[0..63]'s low nibbles, with the qh bit pairs 0 and 1)
        // and 128h + 64 .. 128h + 127 (u1: their high nibbles, bit pairs 2 and 3).
        __m512i u0[MR], u1[MR], s[MR];
        for (int r = 0; r < MR; ++r) {
          const __m512i ql = load512(xb[r]->ql + 64 * h);
          const __m512i qh = _mm512_broadcast_i64x4(load256(xb[r]->qh + 32 * h));
          const __m512i h0 = _mm512_sllv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4));
          const __m512i h1 = _mm512_srlv_epi64(qh, _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0));
          u0[r] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(h0, m30));
          u1[r] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi64(ql, 4), m4), _mm512_and_si512(h1, m30));
          s[r] = _mm512_permutexvar_epi16(h == 0 ? s_lo : s_hi, _mm512_castsi256_si512(sc16[r]));
        }
        for (int k = 0; k < NR; ++k) {
          const __m512i y0 = load512(yb[k]->qs + 128 * h), y1 = load512(yb[k]->qs + 128 * h + 64);
          for (int r = 0; r < MR; ++r) {
            const __m512i t = pack_steps(_mm512_dpbusd_epi32(zero, u0[r], y0), _mm512_dpbusd_epi32(zero, u1[r], y1));
            sumi[r][k] = _mm512_dpwssd_epi32(sumi[r][k], t, s[r]);
          }
        }
      }
      for (int k = 0; k < NR; ++k) {
        const __m256i bs = load256(yb[k]->bsums);
        const float dy = yb[k]->d;
        for (int r = 0; r < MR; ++r) {
          const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16[r], bs), 5);
          const __m256i s8 = _mm256_sub_epi32(
              _mm256_add_epi32(_mm512_castsi512_si256(sumi[r][k]), _mm512_extracti64x4_epi64(sumi[r][k], 1)), off);
          acc[r][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_set1_ps(dy * half_to_float(xb[r]->d)), acc[r][k]);
        }
      }
    }
    for (int r = 0; r < MR; ++r) reduce_halves(acc[r], NR, out + r, os);
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
