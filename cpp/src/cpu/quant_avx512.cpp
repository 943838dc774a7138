// AVX-512 (BW, VL, VNNI) tiles of the 32-quant formats: MR weight rows times NR activation rows,
// two blocks (64 quants) per step in one vpdpbusd. Quants are read unsigned (q + offset for the
// symmetric formats, whose activations' sums take the offset back inside the same integer sum),
// and each block's integer sum becomes float once, times d_x * d_y, as in the portable kernels.
#include <cstring>
#include <type_traits>

#include "quant_avx512_util.h"
#include "quant_kernels.h"

namespace tova {
namespace avx512 {

namespace {

// --- weight blocks: two blocks' quants as 64 unsigned bytes -------------------------------------

// The fifth bits of two Q5 blocks as a byte mask.
template <class Block>
inline __mmask64 fifth_bits(const Block& a, const Block& b) {
  uint32_t ha, hb;
  std::memcpy(&ha, a.qh, 4);
  std::memcpy(&hb, b.qh, 4);
  return static_cast<__mmask64>(ha) | (static_cast<__mmask64>(hb) << 32);
}

inline __m512i quants(const BlockQ4_0& a, const BlockQ4_0& b) { return nibbles_pair(a.qs, b.qs); }
inline __m512i quants(const BlockQ4_1& a, const BlockQ4_1& b) { return nibbles_pair(a.qs, b.qs); }
inline __m512i quants(const BlockQ5_0& a, const BlockQ5_0& b) {
  return _mm512_or_si512(nibbles_pair(a.qs, b.qs), _mm512_maskz_set1_epi8(fifth_bits(a, b), 0x10));
}
inline __m512i quants(const BlockQ5_1& a, const BlockQ5_1& b) {
  return _mm512_or_si512(nibbles_pair(a.qs, b.qs), _mm512_maskz_set1_epi8(fifth_bits(a, b), 0x10));
}
inline __m512i quants(const BlockQ8_0& a, const BlockQ8_0& b) {
  const __m512i v = _mm512_inserti64x4(_mm512_zextsi256_si512(load256(a.qs)), load256(b.qs), 1);
  return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));  // q + 128
}

// The offset the unsigned quants carry (q_unsigned = q + offset).
inline int offset_of(const BlockQ4_0*) { return 8; }
inline int offset_of(const BlockQ5_0*) { return 16; }
inline int offset_of(const BlockQ8_0*) { return 128; }

// Activation quants of blocks i and i + 1 of a row (i + 1 only when `two`, else zeros).
template <class YBlock>
inline __m512i act_pair(const YBlock* y, int64_t i, bool two) {
  const __m512i a = _mm512_zextsi256_si512(load256(y[i].qs));
  return two ? _mm512_inserti64x4(a, load256(y[i + 1].qs), 1) : _mm512_zextsi256_si512(load256(y[i].qs));
}

// --- tiles --------------------------------------------------------------------------------------

// The 32-quant formats, two blocks per step. Symmetric formats (Q4_0, Q5_0, Q8_0) against Q8_0:
// per block d_x d_y ((q + o) . y - o sum(y)); formats with a minimum (Q4_1, Q5_1) against Q8_1:
// d_x d_y (q . y) + m_x s_y.
//
// What a step needs of an activation row does not depend on the weight row, so `prepare` builds
// it once per group of activation rows (kPrep floats per step and row): the two blocks' quants
// (64 bytes), their d_y (lanes 0..7 and 8..15), and the offset term -o sum(y) as int32 (symmetric)
// or s_y in lanes 0 and 8 (with a minimum). An odd last block is a step with a zero second half.
template <class Block, bool kMin>
struct Legacy {
  using YBlock = typename std::conditional<kMin, BlockQ8_1, BlockQ8_0>::type;
  static constexpr int kPrep = 48;
  static constexpr int64_t kBlock = 2 * kQK;
  static void prepare(int64_t n, const uint8_t* y, size_t ys, int nk, float* pre) {
    const int64_t nb = n / kQK;
    for (int64_t i = 0; i < nb; i += 2) {
      const bool two = i + 1 < nb;
      for (int k = 0; k < nk; ++k) {
        const auto* yb = reinterpret_cast<const YBlock*>(y + k * ys);
        float* p = pre + ((i / 2) * nk + k) * kPrep;
        const __m512i yv = act_pair(yb, i, two);
        _mm512_storeu_si512(p, yv);
        _mm512_storeu_ps(p + 16, pair_of_halves(yb[i].d, two ? yb[i + 1].d : 0));
        if constexpr (kMin) {
          _mm512_storeu_ps(p + 32, _mm512_maskz_mov_ps(0x0101, pair_of_halves(yb[i].s, two ? yb[i + 1].s : 0)));
        } else {
          const __m512i off = _mm512_set1_epi8(static_cast<char>(offset_of(static_cast<const Block*>(nullptr))));
          const __m512i osum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, yv);
          _mm512_storeu_si512(p + 32, _mm512_sub_epi32(_mm512_setzero_si512(), osum));
        }
      }
    }
  }
  template <int MR, int NR>
  static void run(int64_t n, const uint8_t* x, size_t xs, const uint8_t*, size_t, const float* pre, float* out,
                  size_t os) {
    const int64_t nb = n / kQK;
    __m512 acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int k = 0; k < NR; ++k) acc[r][k] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i += 2) {
      const int64_t i1 = i + 1 < nb ? i + 1 : i;  // the second half's y and d_y are zero then
      __m512i u[MR];
      __m512 dx[MR], mx[MR];
      for (int r = 0; r < MR; ++r) {
        const auto* b = reinterpret_cast<const Block*>(x + r * xs);
        u[r] = quants(b[i], b[i1]);
        dx[r] = pair_of_halves(b[i].d, b[i1].d);
        if constexpr (kMin) mx[r] = pair_of_halves(b[i].m, b[i1].m);
      }
      for (int k = 0; k < NR; ++k) {
        const float* p = pre + ((i / 2) * NR + k) * kPrep;
        const __m512i yv = _mm512_loadu_si512(p);
        const __m512 dy = _mm512_loadu_ps(p + 16);
        for (int r = 0; r < MR; ++r) {
          if constexpr (kMin) {
            const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[r], yv);
            acc[r][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dx[r], dy), acc[r][k]);
            acc[r][k] = _mm512_fmadd_ps(mx[r], _mm512_loadu_ps(p + 32), acc[r][k]);
          } else {
            const __m512i t = _mm512_dpbusd_epi32(_mm512_loadu_si512(p + 32), u[r], yv);
            acc[r][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(dx[r], dy), acc[r][k]);
          }
        }
      }
    }
    for (int k = 0; k < NR; ++k) {
      __m512 col[MR];
      for (int r = 0; r < MR; ++r) col[r] = acc[r][k];
      for (int r0 = 0; r0 < MR; r0 += 8) reduce_sums(col + r0, MR - r0 < 8 ? MR - r0 : 8, out + k * os + r0, 1);
    }
  }
};

using GemmQ4_0 = Gemm<Legacy<BlockQ4_0, false>, 4, 4>;
using GemmQ5_0 = Gemm<Legacy<BlockQ5_0, false>, 4, 4>;
using GemmQ8_0 = Gemm<Legacy<BlockQ8_0, false>, 4, 4>;
using GemmQ4_1 = Gemm<Legacy<BlockQ4_1, true>, 4, 4>;
using GemmQ5_1 = Gemm<Legacy<BlockQ5_1, true>, 4, 4>;

}  // namespace

TOVA_AVX512_GEMM(q4_0_q8_0, GemmQ4_0)
TOVA_AVX512_GEMM(q5_0_q8_0, GemmQ5_0)
TOVA_AVX512_GEMM(q8_0_q8_0, GemmQ8_0)
TOVA_AVX512_GEMM(q4_1_q8_1, GemmQ4_1)
TOVA_AVX512_GEMM(q5_1_q8_1, GemmQ5_1)

}  // namespace avx512
}  // namespace tova
