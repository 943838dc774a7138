// Building blocks of the AVX-512 kernels (quant_avx512.cpp, quant_avx512_k.cpp). Include only
// from files compiled with the AVX-512 flags of CMakeLists.txt (F, BW, VL, DQ, VNNI). Everything
// is `static` and there are no vector constants at namespace scope (see quant_avx2_util.h).
//
// The kernels are tiles: MR weight rows against NR activation rows, out[k * os + r] = x_r . y_k.
// Each (r, k) pair runs the same operations in the same order whatever MR, NR and the pair's
// place in the tile are, so a matrix product's outputs equal the one-row vec_dot bit for bit
// (vec_dot is the 1 x 1 tile) and a sequence decoded alone equals the same sequence in a batch.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tova {
namespace avx512 {

static inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
static inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
static inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// The sums of the 16 lanes of up to 8 accumulators, out[i * stride] = sum(v[i]), i < count: the
// accumulators are reduced side by side (half + half, then pairwise adds across them), which
// costs a third of reducing each alone. Each sum's order of additions depends only on its own
// lanes, never on `count` or its neighbours, so a 1 x 1 tile and a full one agree bit for bit.
// One accumulator (a one-row product: decode): the same additions as reduce_sums makes for it,
// ((h0 + h1) + (h2 + h3)) + ((h4 + h5) + (h6 + h7)) with h = low half + high half, in 6 ops.
static inline float reduce_one(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m256 t = _mm256_hadd_ps(h, h);
  const __m256 u = _mm256_hadd_ps(t, t);
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}

static inline void reduce_sums(const __m512* v, int count, float* out, size_t stride) {
  if (count == 1) {
    out[0] = reduce_one(v[0]);
    return;
  }
  __m256 h[8];
  for (int i = 0; i < 8; ++i) {
    h[i] = i < count ? _mm256_add_ps(_mm512_castps512_ps256(v[i]), _mm512_extractf32x8_ps(v[i], 1))
                     : _mm256_setzero_ps();
  }
  const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
  alignas(32) float r[8];
  _mm256_store_ps(r, s);
  for (int i = 0; i < count; ++i) out[i * stride] = r[i];
}

// reduce_sums of nr (any count) accumulators of 8 lanes: out[k * stride] = the sum of acc[k].
// Each is widened to 16 lanes with zeros (which change no sum, but for the sign of a zero), so
// that the order of its additions stays the one reduce_sums gives it alone.
static inline void reduce_halves(const __m256* acc, int nr, float* out, size_t stride) {
  for (int k0 = 0; k0 < nr; k0 += 8) {
    __m512 v[8];
    const int count = nr - k0 < 8 ? nr - k0 : 8;
    for (int k = 0; k < count; ++k) v[k] = _mm512_zextps256_ps512(acc[k0 + k]);
    reduce_sums(v, count, out + k0 * stride, stride);
  }
}

// Two f16 scales as 16 float lanes: a in lanes 0..7, b in lanes 8..15.
static inline __m512 pair_of_halves(uint16_t a, uint16_t b) {
  const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(a | (static_cast<uint32_t>(b) << 16))));
  return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                               _mm512_zextps128_ps512(f));
}

// 16 + 16 packed bytes (two 32-quant blocks' nibbles) -> 64 nibbles in element order: block a's
// low nibbles, its high nibbles, then block b's.
static inline __m512i nibbles_pair(const uint8_t* a, const uint8_t* b) {
  const __m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(load128(a)), load128(b), 1);
  const __m512i v = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), _mm512_zextsi256_si512(ab));
  return _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(0x0F));
}

// Decode's matrix product (one activation row) streams every weight row from memory once. Rows
// shorter than 4 KB (short_rows) go in tiles of kFarRows rows taken from kFarRows regions of the
// matrix, rows r, r + m / 3 and r + 2 m / 3: three sequential streams, each activation load shared
// by three rows. On a Zen 4 core, streaming 128 MiB of weights (bench/kernel_stream.cpp), that
// raised the share of a plain read's speed from 39-77 % to 60-104 % for Q4_0, Q4_1, Q5_0, Q8_0,
// Q4_K and Q6_K rows of 360 to 1,260 bytes. Neighbouring rows read side by side instead ran at
// half the speed of one row at a time, and long rows gained nothing or lost, so they go one at
// a time.
//
// Software prefetch, 4 KB ahead of the block a tile starts: the lines of [block + 4096, block +
// 4096 + bytes). The Q4_K and Q5_K tiles use it in decode and on short rows (streaming Q4_K rows
// of 864 bytes one at a time went 24-30 % faster with it); Q6_K's tile and longer rows gained
// nothing or lost.
constexpr int kFarRows = 3;
constexpr size_t kPrefetchAhead = 4096;
static inline bool short_rows(size_t row_bytes) { return row_bytes < kPrefetchAhead; }
static inline void prefetch_ahead(const void* block, size_t bytes) {
  const char* p = static_cast<const char*>(block) + kPrefetchAhead;
  for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

// Runs Tile::run<MR', NR'>(...) over an m x nr product in tiles of at most MR x NR: activation
// rows outer (a group of NR stays in L1), weight rows inner (the caller keeps them in L2). The
// first group of activation rows streams the weight rows from memory: one at a time, since
// reading neighbouring rows interleaved defeats the hardware prefetcher (measured 2-3x slower for
// one activation row), or in decode, on short rows, kFarRows far-apart rows at a time
// (decode_far); later groups find them in cache and share each activation load between MR
// weight rows.
//
// A Tile may also precompute, once per group of activation rows, what every weight row needs of
// them (Tile::kPrep floats per row and block, by Tile::prepare) instead of redoing it per tile;
// kPrep = 0 for none. Tiles receive it as `pre`: step i (Tile::kBlock quants) of row k at
// pre + (i * N + k) * kPrep.
template <class Tile, int MR, int NR>
struct Gemm {
  template <int M, int N>
  static void tile(int64_t n, const uint8_t* x, size_t xs, const uint8_t* y, size_t ys, const float* pre,
                   float* out, size_t os) {
    Tile::template run<M, N>(n, x, xs, y, ys, pre, out, os);
  }
  // The M x N tile for N = nk (1 <= nk <= NR), chosen at run time.
  template <int M, int N = NR>
  static void by_rows(int nk, int64_t n, const uint8_t* x, size_t xs, const uint8_t* y, size_t ys,
                      const float* pre, float* out, size_t os) {
    if constexpr (N > 1) {
      if (nk < N) return by_rows<M, N - 1>(nk, n, x, xs, y, ys, pre, out, os);
    }
    tile<M, N>(n, x, xs, y, ys, pre, out, os);
  }
  template <int M = MR>
  static void by_cols(int mr, int nk, int64_t n, const uint8_t* x, size_t xs, const uint8_t* y, size_t ys,
                      const float* pre, float* out, size_t os) {
    if constexpr (M > 1) {
      if (mr < M) return by_cols<M - 1>(mr, nk, n, x, xs, y, ys, pre, out, os);
    }
    by_rows<M>(nk, n, x, xs, y, ys, pre, out, os);
  }
  static void run(int64_t n, const void* vx, size_t xs, int64_t m, const void* vy, size_t ys, int64_t nr,
                  float* out, size_t os) {
    const auto* x = static_cast<const uint8_t*>(vx);
    const auto* y = static_cast<const uint8_t*>(vy);
    const int64_t steps = (n + Tile::kBlock - 1) / Tile::kBlock;
    // (Sized for the largest group of activation rows there is: decode's one row, not NR.)
    std::vector<float> pre(Tile::kPrep > 0 ? static_cast<size_t>(Tile::kPrep * steps * std::min<int64_t>(NR, nr)) : 0);
    for (int64_t k0 = 0; k0 < nr; k0 += NR) {
      const int nk = static_cast<int>(std::min<int64_t>(NR, nr - k0));
      const uint8_t* yk = y + static_cast<size_t>(k0) * ys;
      float* ok = out + static_cast<size_t>(k0) * os;
      if constexpr (Tile::kPrep > 0) Tile::prepare(n, yk, ys, nk, pre.data());
      if (k0 == 0 && nk == 1 && short_rows(xs) && m >= kFarRows) {
        decode_far(n, x, xs, m, yk, ys, pre.data(), ok);
        continue;
      }
      const int64_t step = k0 == 0 ? 1 : MR;
      for (int64_t r0 = 0; r0 < m; r0 += step) {
        const int mr = static_cast<int>(std::min<int64_t>(step, m - r0));
        const uint8_t* xr = x + static_cast<size_t>(r0) * xs;
        by_cols(mr, nk, n, xr, xs, yk, ys, pre.data(), ok + r0, os);
      }
    }
  }
  // Decode over short rows (see kFarRows): rows r, r + part, r + 2 part in one tile, then the
  // rows left over one at a time.
  static void decode_far(int64_t n, const uint8_t* x, size_t xs, int64_t m, const uint8_t* y, size_t ys,
                         const float* pre, float* out) {
    const int64_t part = m / kFarRows;
    for (int64_t r0 = 0; r0 < part; ++r0) {
      float o[kFarRows];
      tile<kFarRows, 1>(n, x + static_cast<size_t>(r0) * xs, static_cast<size_t>(part) * xs, y, ys, pre, o, 1);
      for (int f = 0; f < kFarRows; ++f) out[r0 + f * part] = o[f];
    }
    for (int64_t r = kFarRows * part; r < m; ++r)
      tile<1, 1>(n, x + static_cast<size_t>(r) * xs, xs, y, ys, pre, out + r, 1);
  }
  static float one(int64_t n, const void* x, const void* y) {
    float r;
    run(n, x, 0, 1, y, 0, 1, &r, 1);
    return r;
  }
};

}  // namespace avx512
}  // namespace tova

// Defines avx512::vec_dot_<name> (the 1 x 1 tile) and avx512::gemm_<name> of a Gemm<...> type G.
#define TOVA_AVX512_GEMM(name, G)                                                                      \
  float vec_dot_##name(int64_t n, const void* x, const void* y) { return G::one(n, x, y); }           \
  void gemm_##name(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, \
                   float* o, size_t os) {                                                              \
    G::run(n, x, xs, m, y, ys, nr, o, os);                                                             \
  }
