// AVX2 + FMA + F16C kernels of the float types and the 32-element formats. Only called when
// cpu_features() reports all three (kernels_cpu.cpp picks them); results equal the portable kernels'
// up to the order of float additions, and quantize_q8_0 equals them bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "quant_avx2_util.h"
#include "quant_kernels.h"

namespace tova {
namespace avx2 {

// --- float types -------------------------------------------------------------------------------

namespace {

// Converts 8 values at p to float32; the loaders differ per element type.
inline __m256 load8_f32(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8_f16(const uint16_t* p) { return _mm256_cvtph_ps(load128(p)); }
inline __m256 load8_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load128(p)), 16));
}
// (Single values through memcpy: a row of a file's tensor may sit at any byte address.)
inline float load1_f32(const float* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}
inline uint16_t load1_u16(const uint16_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}
inline float load1_f16(const uint16_t* p) { return half_to_float(load1_u16(p)); }
inline float load1_bf16(const uint16_t* p) {
  const uint32_t bits = static_cast<uint32_t>(load1_u16(p)) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Four independent accumulators hide the FMA latency.
template <class T, __m256 (*Load8)(const T*), float (*Load1)(const T*)>
float dot(int64_t n, const T* x, const float* y) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(Load8(x + i), _mm256_loadu_ps(y + i), acc0);
    acc1 = _mm256_fmadd_ps(Load8(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(Load8(x + i + 16), _mm256_loadu_ps(y + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(Load8(x + i + 24), _mm256_loadu_ps(y + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(Load8(x + i), _mm256_loadu_ps(y + i), acc0);
  float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < n; ++i) sum += Load1(x + i) * y[i];
  return sum;
}

template <class T, __m256 (*Load8)(const T*), float (*Load1)(const T*)>
void axpy(float a, const T* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, Load8(x + i), _mm256_loadu_ps(y + i)));
    _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, Load8(x + i + 8), _mm256_loadu_ps(y + i + 8)));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, Load8(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * Load1(x + i);
}

// Eight sums at once: lane k of the result is the sum of the lanes of v[k].
inline __m256 hsum8(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

// Scores of eight gathered rows per step: each row's dot in its own accumulator, the eight
// reduced together. Every row's score is the same chain of operations wherever the row falls:
// a last block of fewer than eight rows repeats its last row in the lanes past n (not stored),
// so equal keys score equally and the policies' ties go by position alone. d % 8 != 0 (no
// model has such a head size) falls back to one row at a time.
template <class T, __m256 (*Load8)(const T*), float (*Load1)(const T*)>
void gather_dot(const T* base, size_t stride, const int32_t* idx, int n, const float* q, int d,
                float scale, float* scores) {
  if (d % 8 != 0) {
    for (int j = 0; j < n; ++j) scores[j] = dot<T, Load8, Load1>(d, base + static_cast<size_t>(idx[j]) * stride, q) * scale;
    return;
  }
  const __m256 vs = _mm256_set1_ps(scale);
  for (int j = 0; j < n; j += 8) {
    const int m = std::min(8, n - j);
    const T* r[8];
    __m256 acc[8];
    for (int k = 0; k < 8; ++k) {
      r[k] = base + static_cast<size_t>(idx[j + std::min(k, m - 1)]) * stride;
      acc[k] = _mm256_setzero_ps();
    }
    for (int c = 0; c < d; c += 8) {
      const __m256 qv = _mm256_loadu_ps(q + c);
      for (int k = 0; k < 8; ++k) acc[k] = _mm256_fmadd_ps(Load8(r[k] + c), qv, acc[k]);
    }
    alignas(32) float sums[8];
    _mm256_store_ps(sums, _mm256_mul_ps(hsum8(acc), vs));
    std::memcpy(scores + j, sums, static_cast<size_t>(m) * sizeof(float));
  }
}

// out += sum_j p[j] * row_j, 32 outputs at a time held in registers over all rows.
template <class T, __m256 (*Load8)(const T*), float (*Load1)(const T*)>
void gather_axpy(const T* base, size_t stride, const int32_t* idx, int n, const float* p, int d,
                 float* out) {
  int c = 0;
  for (; c + 32 <= d; c += 32) {
    __m256 acc[4];
    for (int k = 0; k < 4; ++k) acc[k] = _mm256_loadu_ps(out + c + 8 * k);
    for (int j = 0; j < n; ++j) {
      const T* r = base + static_cast<size_t>(idx[j]) * stride + c;
      const __m256 pj = _mm256_set1_ps(p[j]);
      for (int k = 0; k < 4; ++k) acc[k] = _mm256_fmadd_ps(pj, Load8(r + 8 * k), acc[k]);
    }
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + c + 8 * k, acc[k]);
  }
  if (c < d)
    for (int j = 0; j < n; ++j)
      axpy<T, Load8, Load1>(p[j], base + static_cast<size_t>(idx[j]) * stride + c, out + c, d - c);
}

// Query heads sharing the rows (GQA) go in groups of up to kHeadGroup: each row is loaded and
// converted once per group instead of once per head. Groups as even as possible (4 heads: 2 + 2).
constexpr int kHeadGroup = 3;
inline int head_group(int left) {
  const int groups = (left + kHeadGroup - 1) / kHeadGroup;
  return (left + groups - 1) / groups;
}

// gather_dot for nh heads: four rows times up to three heads per step (16 registers), each score
// with gather_dot's operations in its order (every row's chain reduced by hsum8, whose lane k
// depends on v[k] alone; a last block of fewer than four rows repeats its last row), so equal
// to it bit for bit.
template <class T, __m256 (*Load8)(const T*), float (*Load1)(const T*)>
void gather_dot_heads(const T* base, size_t stride, const int32_t* idx, int n, const float* q, size_t q_stride,
                      int nh, int d, float scale, float* scores, size_t s_stride) {
  for (int h0 = 0, g = 0; h0 < nh; h0 += g) {
    g = head_group(nh - h0);
    if (g == 1 || d % 8 != 0) {
      for (int h = h0; h < h0 + g; ++h)
        gather_dot<T, Load8, Load1>(base, stride, idx, n, q + h * q_stride, d, scale, scores + h * s_stride);
      continue;
    }
    const __m256 vs = _mm256_set1_ps(scale);
    for (int j = 0; j < n; j += 4) {
      const int m = std::min(4, n - j);
      const T* r[4];
      for (int k = 0; k < 4; ++k) r[k] = base + static_cast<size_t>(idx[j + std::min(k, m - 1)]) * stride;
      // acc[4 h + k]: head h0 + h, row j + k; hsum8 reduces eight of them at once.
      __m256 acc[4 * (kHeadGroup + 1)];
      for (auto& v : acc) v = _mm256_setzero_ps();
      for (int c = 0; c < d; c += 8) {
        __m256 qv[kHeadGroup];
        for (int h = 0; h < g; ++h) qv[h] = _mm256_loadu_ps(q + (h0 + h) * q_stride + c);
        for (int k = 0; k < 4; ++k) {
          const __m256 kv = Load8(r[k] + c);
          for (int h = 0; h < g; ++h) acc[4 * h + k] = _mm256_fmadd_ps(kv, qv[h], acc[4 * h + k]);
        }
      }
      for (int h = 0; h < g; h += 2) {
        alignas(32) float sums[8];
        _mm256_store_ps(sums, _mm256_mul_ps(hsum8(acc + 4 * h), vs));
        std::memcpy(scores + (h0 + h) * s_stride + j, sums, static_cast<size_t>(m) * sizeof(float));
        if (h + 1 < g) std::memcpy(scores + (h0 + h + 1) * s_stride + j, sums + 4, static_cast<size_t>(m) * sizeof(float));
      }
    }
  }
}

// gather_axpy for nh heads: 32 outputs of up to three heads in registers over all rows, each
// output the same chain of fused multiply-adds in row order as gather_axpy's, so equal to it
// bit for bit.
template <class T, __m256 (*Load8)(const T*), float (*Load1)(const T*)>
void gather_axpy_heads(const T* base, size_t stride, const int32_t* idx, int n, const float* p, size_t p_stride,
                       int nh, int d, float* out, size_t o_stride) {
  for (int h0 = 0, g = 0; h0 < nh; h0 += g) {
    g = head_group(nh - h0);
    int c = 0;
    if (g > 1) {
      for (; c + 32 <= d; c += 32) {
        __m256 acc[kHeadGroup][4];
        for (int h = 0; h < g; ++h)
          for (int k = 0; k < 4; ++k) acc[h][k] = _mm256_loadu_ps(out + (h0 + h) * o_stride + c + 8 * k);
        for (int j = 0; j < n; ++j) {
          const T* r = base + static_cast<size_t>(idx[j]) * stride + c;
          __m256 pj[kHeadGroup];
          for (int h = 0; h < g; ++h) pj[h] = _mm256_set1_ps(p[(h0 + h) * p_stride + j]);
          for (int k = 0; k < 4; ++k) {
            const __m256 v = Load8(r + 8 * k);
            for (int h = 0; h < g; ++h) acc[h][k] = _mm256_fmadd_ps(pj[h], v, acc[h][k]);
          }
        }
        for (int h = 0; h < g; ++h)
          for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + (h0 + h) * o_stride + c + 8 * k, acc[h][k]);
      }
    }
    if (c == 0) {  // one head, or d < 32: gather_axpy itself
      for (int h = h0; h < h0 + g; ++h)
        gather_axpy<T, Load8, Load1>(base, stride, idx, n, p + h * p_stride, d, out + h * o_stride);
    } else if (c < d) {
      for (int h = h0; h < h0 + g; ++h)
        for (int j = 0; j < n; ++j)
          axpy<T, Load8, Load1>(p[h * p_stride + j], base + static_cast<size_t>(idx[j]) * stride + c,
                                out + h * o_stride + c, d - c);
    }
  }
}

}  // namespace

void gather_dot_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q, int d,
                    float scale, float* scores) {
  gather_dot<float, load8_f32, load1_f32>(base, stride, idx, n, q, d, scale, scores);
}
void gather_dot_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                    int d, float scale, float* scores) {
  gather_dot<uint16_t, load8_f16, load1_f16>(base, stride, idx, n, q, d, scale, scores);
}
void gather_axpy_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p, int d,
                     float* out) {
  gather_axpy<float, load8_f32, load1_f32>(base, stride, idx, n, p, d, out);
}
void gather_axpy_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                     int d, float* out) {
  gather_axpy<uint16_t, load8_f16, load1_f16>(base, stride, idx, n, p, d, out);
}
void gather_dot_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* q, size_t q_stride,
                          int nh, int d, float scale, float* scores, size_t s_stride) {
  gather_dot_heads<float, load8_f32, load1_f32>(base, stride, idx, n, q, q_stride, nh, d, scale, scores, s_stride);
}
void gather_dot_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* q,
                          size_t q_stride, int nh, int d, float scale, float* scores, size_t s_stride) {
  gather_dot_heads<uint16_t, load8_f16, load1_f16>(base, stride, idx, n, q, q_stride, nh, d, scale, scores, s_stride);
}
void gather_axpy_heads_f32(const float* base, size_t stride, const int32_t* idx, int n, const float* p, size_t p_stride,
                           int nh, int d, float* out, size_t o_stride) {
  gather_axpy_heads<float, load8_f32, load1_f32>(base, stride, idx, n, p, p_stride, nh, d, out, o_stride);
}
void gather_axpy_heads_f16(const uint16_t* base, size_t stride, const int32_t* idx, int n, const float* p,
                           size_t p_stride, int nh, int d, float* out, size_t o_stride) {
  gather_axpy_heads<uint16_t, load8_f16, load1_f16>(base, stride, idx, n, p, p_stride, nh, d, out, o_stride);
}

float vec_dot_f32_f32(int64_t n, const void* x, const float* y) {
  return dot<float, load8_f32, load1_f32>(n, static_cast<const float*>(x), y);
}

float vec_dot_f16_f32(int64_t n, const void* x, const float* y) {
  return dot<uint16_t, load8_f16, load1_f16>(n, static_cast<const uint16_t*>(x), y);
}

float vec_dot_bf16_f32(int64_t n, const void* x, const float* y) {
  return dot<uint16_t, load8_bf16, load1_bf16>(n, static_cast<const uint16_t*>(x), y);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) { axpy<float, load8_f32, load1_f32>(a, x, y, n); }

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  axpy<uint16_t, load8_f16, load1_f16>(a, x, y, n);
}

// --- gated activations -------------------------------------------------------------------------

namespace {

// e^x on 8 lanes: x = n ln2 + r (|r| <= ln2 / 2, ln2 split in two for an exact product), e^r by
// its degree-6 Taylor polynomial (relative error below 2e-7 on that range), 2^n by the exponent
// bits. x is clamped to [-87, 88] so that 2^n stays a normal float; e^-87 and e^88 are where the
// callers' sigmoid already equals 0 or 1 in float.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// gate = z(gate) -> gate / (1 + e^-z) * up, for the activations of the form g * sigmoid(z(g)).
template <class Z>
void sigmoid_gate(float* gate, const float* up, int64_t n, Z z, ActMulFn scalar_tail) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), z(g)));
    const __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
  if (i < n) scalar_tail(gate + i, up + i, n - i);
}

}  // namespace

void softmax_f32(float* s, int n) {
  int j = 0;
  __m256 vmx = _mm256_set1_ps(-INFINITY);
  for (; j + 8 <= n; j += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + j));
  float mx = hmax_ps(vmx);
  for (; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
  const __m256 m = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
    _mm256_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = hsum_ps(vsum);
  if (j < n) {
    // the tail through the same exp, on a padded copy (lanes past n: e^-inf -> 0 after the clamp
    // would be 1e-38; they are simply not stored or summed)
    alignas(32) float t[8];
    for (int k = 0; k < 8; ++k) t[k] = j + k < n ? s[j + k] - mx : 0.0f;
    _mm256_store_ps(t, exp_ps(_mm256_load_ps(t)));
    for (int k = 0; j + k < n; ++k) {
      s[j + k] = t[k];
      sum += t[k];
    }
  }
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inv));
  for (; j < n; ++j) s[j] *= 1.0f / sum;
}

void silu_mul(float* gate, const float* up, int64_t n) {
  sigmoid_gate(gate, up, n, [](__m256 g) { return g; }, scalar::silu_mul);
}

// 0.5 g (1 + tanh(u)) = g sigmoid(2u), u = sqrt(2/pi) (g + 0.044715 g^3).
void gelu_tanh_mul(float* gate, const float* up, int64_t n) {
  sigmoid_gate(gate, up, n, [](__m256 g) {
    const __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
    const __m256 u = _mm256_fmadd_ps(g3, _mm256_set1_ps(0.044715f), g);
    return _mm256_mul_ps(u, _mm256_set1_ps(2.0f * 0.7978845608028654f));
  }, scalar::gelu_tanh_mul);
}

void quantize_f16(const float* src, void* dst, int64_t n) {
  // vcvtps2ph with round-to-nearest-even equals fp32_to_fp16 for every non-NaN input.
  auto* out = static_cast<uint8_t*>(dst);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) {
    const uint16_t h = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

// --- Q8_0 activations ---------------------------------------------------------------------------

namespace {

// roundf() on 8 lanes: round half away from zero (vroundps only offers ties-to-even).
// floor(|v|) plus one when the exact fractional part is >= 0.5, with v's sign put back.
inline __m256 round_half_away(__m256 v) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_andnot_ps(sign, v);
  const __m256 f = _mm256_floor_ps(a);
  const __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, f), _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                  _mm256_set1_ps(1.0f));
  return _mm256_or_ps(_mm256_add_ps(f, up), _mm256_and_ps(v, sign));
}

// One block of 32 values to int8 quants: returns d (as float32) and the sum of the quants.
inline float quantize_block_q8(const float* src, int8_t* qs, int* sum) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4];
  for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(src + 8 * k);
  const __m256 m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
  const __m256 m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
  const float amax = hmax_ps(_mm256_max_ps(m01, m23));
  // Same float operations as the portable kernel (and gguf-py): d = amax / 127, id = 1 / d.
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const __m256 vid = _mm256_set1_ps(id);
  __m256i q[4];
  for (int k = 0; k < 4; ++k) q[k] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[k], vid)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), pack_i32_to_i8(q[0], q[1], q[2], q[3]));
  if (sum) *sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
  return d;
}

inline uint16_t to_half(float f) { return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }

}  // namespace

void quantize_q8_0(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_0*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) b[i].d = to_half(quantize_block_q8(src, b[i].qs, nullptr));
}

void quantize_q8_1(const float* src, void* dst, int64_t n) {
  auto* b = static_cast<BlockQ8_1*>(dst);
  for (int64_t i = 0; i < n / kQK; ++i, src += kQK) {
    int sum = 0;
    const float d = quantize_block_q8(src, b[i].qs, &sum);
    b[i].d = to_half(d);
    b[i].s = to_half(d * static_cast<float>(sum));  // as the portable kernel: fp16(d * sum)
  }
}

// --- dot products with Q8_0 activations ------------------------------------------------------

namespace {

// Signed quants of x for block i as 32 int8 in element order; the dot is then dot_s8_s8.
inline __m256i quants(const BlockQ4_0& b) { return _mm256_sub_epi8(unpack_nibbles(b.qs), _mm256_set1_epi8(8)); }

inline __m256i quants(const BlockQ5_0& b) {
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  // Where the fifth bit is clear, q - 16 = low nibble - 16: set the high nibble (0xF0 | q).
  const __m256i minus16 = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(static_cast<char>(0xF0)));
  return _mm256_or_si256(unpack_nibbles(b.qs), minus16);
}

inline __m256i quants(const BlockQ8_0& b) { return load256(b.qs); }

// Unsigned quants of the formats with a minimum.
inline __m256i quants(const BlockQ4_1& b) { return unpack_nibbles(b.qs); }

inline __m256i quants(const BlockQ5_1& b) {
  uint32_t qh;
  std::memcpy(&qh, b.qh, 4);
  return _mm256_or_si256(unpack_nibbles(b.qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
}

// The 32-quant formats as matrix products (GemmFn): m weight rows times nr activation rows, the
// activation rows in groups of up to kMaxDotRows (R), each weight block decoded once per group.
// Symmetric formats (Q4_0, Q5_0, Q8_0) against Q8_0: per block d_x d_y (q_x . q_y); formats with
// a minimum (Q4_1, Q5_1) against Q8_1: d_x d_y (q_x . q_y) + m_x s_y, s_y = d_y sum(q_y).
//
// The activations' f16 scales do not depend on the weight row, so they are converted once per
// group (`prepare`) into kPrep floats per block: d_y of the R rows, then (formats with a minimum)
// s_y of the R rows, zero past the group's rows. A step then takes them with a broadcast load
// instead of converting them for every weight row; a decode step (one activation row) spent half
// its time there.
//
// Every output is the same chain of operations whatever R, m and its place are: two blocks per
// step into separate accumulators (consecutive FMAs do not wait on each other), the minimum
// terms in two FMA chains (lane k: row k), one hsum at the end. vec_dot is the 1 x 1 product,
// so vec_dot and gemm agree bit for bit and a sequence decoded alone equals it in a batch.
template <class Block, bool kMin>
struct Legacy {
  using YBlock = typename std::conditional<kMin, BlockQ8_1, BlockQ8_0>::type;
  static constexpr int kPrep = kMin ? 2 * kMaxDotRows : kMaxDotRows;  // no s_y without a minimum

  static void prepare(int64_t nb, const uint8_t* y, size_t ys, int nk, float* pre) {
    for (int64_t i = 0; i < nb; ++i) {
      float* p = pre + i * kPrep;
      for (int k = 0; k < kMaxDotRows; ++k) {
        const YBlock* b = reinterpret_cast<const YBlock*>(y + k * ys);
        p[k] = k < nk ? half_to_float(b[i].d) : 0.0f;
        if constexpr (kMin) p[kMaxDotRows + k] = k < nk ? half_to_float(b[i].s) : 0.0f;
      }
    }
  }

  // out[k * os] = x . y_k for the R activation rows of a prepared group.
  template <int R>
  static void run(int64_t nb, const Block* x, const uint8_t* y, size_t ys, const float* pre, float* out, size_t os) {
    const YRows<YBlock, R> yr(y, ys);
    __m256 acc0[R], acc1[R];
    for (int k = 0; k < R; ++k) acc0[k] = acc1[k] = _mm256_setzero_ps();
    __m128 mins0 = _mm_setzero_ps(), mins1 = _mm_setzero_ps();
    auto step = [&](int64_t i, __m256* acc, __m128& mins) {
      const float* p = pre + i * kPrep;
      const __m256i qx = quants(x[i]);
      __m256 vdx;
      if constexpr (kMin) {
        // d and m are adjacent halves: one conversion for both (lane 0: d, lane 1: m).
        uint32_t dm;
        std::memcpy(&dm, &x[i].d, 4);
        const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dm)));
        vdx = _mm256_broadcastss_ps(f);
        mins = _mm_fmadd_ps(_mm_permute_ps(f, 0x55), _mm_loadu_ps(p + kMaxDotRows), mins);
      } else {
        // (as half_to_float, kept in a vector register for the broadcast)
        vdx = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(x[i].d))));
      }
      // Symmetric formats: |q_x| and q_y with q_x's sign (dot_s8_s8, the x half shared by the rows).
      const __m256i ax = kMin ? qx : _mm256_sign_epi8(qx, qx);
      for (int k = 0; k < R; ++k) {
        const __m256i yq = load256(yr.r[k][i].qs);
        const __m256i prod = dot_u8_s8(ax, kMin ? yq : _mm256_sign_epi8(yq, qx));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_mul_ps(vdx, _mm256_broadcast_ss(p + k)), acc[k]);
      }
    };
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
      step(i, acc0, mins0);
      step(i + 1, acc1, mins1);
    }
    if (i < nb) step(i, acc0, mins0);
    alignas(16) float mins[4];
    _mm_store_ps(mins, _mm_add_ps(mins0, mins1));
    for (int k = 0; k < R; ++k) {
      const float s = hsum_ps(_mm256_add_ps(acc0[k], acc1[k]));
      out[k * os] = kMin ? s + mins[k] : s;
    }
  }

  static void gemm(int64_t n, const void* vx, size_t xs, int64_t m, const void* vy, size_t ys, int64_t nr,
                   float* out, size_t os) {
    const int64_t nb = n / kQK;
    // The prepared scales of one group: on the stack up to 512 blocks (16384 values), else heap.
    constexpr int64_t kStackBlocks = 512;
    alignas(32) float stack[kStackBlocks * kPrep];
    std::vector<float> heap(nb > kStackBlocks ? static_cast<size_t>(nb * kPrep) : 0);
    float* pre = nb > kStackBlocks ? heap.data() : stack;
    const auto* x = static_cast<const uint8_t*>(vx);
    const auto* y = static_cast<const uint8_t*>(vy);
    for (int64_t k0 = 0; k0 < nr; k0 += kMaxDotRows) {
      const int nk = static_cast<int>(std::min<int64_t>(kMaxDotRows, nr - k0));
      const uint8_t* yk = y + static_cast<size_t>(k0) * ys;
      prepare(nb, yk, ys, nk, pre);
      float* ok = out + static_cast<size_t>(k0) * os;
      for (int64_t r = 0; r < m; ++r) {
        const auto* xr = reinterpret_cast<const Block*>(x + static_cast<size_t>(r) * xs);
        by_row_count(nk, [&](auto k) { run<decltype(k)::value>(nb, xr, yk, ys, pre, ok + r, os); });
      }
    }
  }

  static float one(int64_t n, const void* x, const void* y) {
    float r;
    gemm(n, x, 0, 1, y, 0, 1, &r, 1);
    return r;
  }
};

}  // namespace

#define TOVA_AVX2_LEGACY(name, Block, kMin)                                                          \
  float vec_dot_##name(int64_t n, const void* x, const void* y) { return Legacy<Block, kMin>::one(n, x, y); } \
  void gemm_##name(int64_t n, const void* x, size_t xs, int64_t m, const void* y, size_t ys, int64_t nr, \
                   float* o, size_t os) {                                                            \
    Legacy<Block, kMin>::gemm(n, x, xs, m, y, ys, nr, o, os);                                        \
  }
TOVA_AVX2_LEGACY(q4_0_q8_0, BlockQ4_0, false)
TOVA_AVX2_LEGACY(q5_0_q8_0, BlockQ5_0, false)
TOVA_AVX2_LEGACY(q8_0_q8_0, BlockQ8_0, false)
TOVA_AVX2_LEGACY(q4_1_q8_1, BlockQ4_1, true)
TOVA_AVX2_LEGACY(q5_1_q8_1, BlockQ5_1, true)
#undef TOVA_AVX2_LEGACY

// --- dot products with float32 y (quantized KV entries against a float query) -------------------

namespace {

// 32 int8 quants times 32 floats, as 8 float lanes.
inline __m256 dot_i8_f32(__m256i q, const float* y) {
  const __m128i lo = _mm256_castsi256_si128(q);
  const __m128i hi = _mm256_extracti128_si256(q, 1);
  __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_loadu_ps(y));
  s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(y + 8), s);
  s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), _mm256_loadu_ps(y + 16), s);
  s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(y + 24), s);
  return s;
}

template <class Block>
float dot_f32_symmetric(int64_t n, const void* vx, const float* y) {
  const auto* x = static_cast<const Block*>(vx);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n / kQK; ++i, y += kQK) {
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[i].d)), dot_i8_f32(quants(x[i]), y), acc);
  }
  return hsum_ps(acc);
}

}  // namespace

float vec_dot_q4_0_f32(int64_t n, const void* x, const float* y) { return dot_f32_symmetric<BlockQ4_0>(n, x, y); }

// Dequantization of the symmetric formats is one float multiply per value (q * d), exactly as
// the portable kernels and gguf-py compute it, so these equal them bit for bit.
template <class Block>
void dequantize_symmetric(const void* vx, float* dst, int64_t n) {
  const auto* x = static_cast<const Block*>(vx);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const __m256 d = _mm256_set1_ps(half_to_float(x[i].d));
    const __m256i q = quants(x[i]);
    const __m128i lo = _mm256_castsi256_si128(q);
    const __m128i hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d));
    _mm256_storeu_ps(dst + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d));
    _mm256_storeu_ps(dst + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d));
    _mm256_storeu_ps(dst + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d));
  }
}

void dequantize_q4_0(const void* x, float* dst, int64_t n) { dequantize_symmetric<BlockQ4_0>(x, dst, n); }

void dequantize_q3_0(const void* x, float* dst, int64_t n) {
  const auto* b = static_cast<const BlockQ3_0*>(x);
  const __m256 four = _mm256_set1_ps(4.0f);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    const __m256 d = _mm256_set1_ps(half_to_float(b[i].d));
    for (int g = 0; g < 4; ++g) {  // (q - 4) exact in float, then one product: as the portable kernel
      const __m128i q = _mm_cvtsi64_si128(static_cast<long long>(q3_0_codes(b[i], g)));
      const __m256 v = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), four);
      _mm256_storeu_ps(dst + 8 * g, _mm256_mul_ps(d, v));
    }
  }
}

// The formats with a minimum: d * q + m, a multiply then an add (not fused), as the portable
// kernels round it.
template <class Block>
void dequantize_with_min(const void* vx, float* dst, int64_t n) {
  const auto* x = static_cast<const Block*>(vx);
  for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
    store_scaled_u8<false>(quants(x[i]), _mm256_set1_ps(half_to_float(x[i].d)),
                           _mm256_set1_ps(half_to_float(x[i].m)), dst);
  }
}

void dequantize_q4_1(const void* x, float* dst, int64_t n) { dequantize_with_min<BlockQ4_1>(x, dst, n); }
void dequantize_q5_0(const void* x, float* dst, int64_t n) { dequantize_symmetric<BlockQ5_0>(x, dst, n); }
void dequantize_q5_1(const void* x, float* dst, int64_t n) { dequantize_with_min<BlockQ5_1>(x, dst, n); }
void dequantize_q8_0(const void* x, float* dst, int64_t n) { dequantize_symmetric<BlockQ8_0>(x, dst, n); }
float vec_dot_q8_0_f32(int64_t n, const void* x, const float* y) { return dot_f32_symmetric<BlockQ8_0>(n, x, y); }

}  // namespace avx2
}  // namespace tova
