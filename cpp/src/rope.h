// Rotary position embedding: the angles of every rotated pair at a position (normal and NeoX
// layouts, linear and YaRN scaling, per-pair frequency factors). The definition every backend
// uses; the CPU applies it directly, other backends upload its tables.
#pragma once

#include <cstdint>
#include <vector>

#include "arch.h"

namespace tova {

// Rotates `n_heads` vectors of `head_dim` at absolute position `pos` in place.
class Rope {
 public:
  // freq_factors: empty, or one divisor per pair (a model's `rope_freqs.weight`).
  Rope(const HParams& hp, float base, const std::vector<float>& freq_factors = {});
  void apply(float* x, int n_heads, int head_dim, int64_t pos) const;
  // cos and sin (magnitude-corrected) of every rotated pair at a position: pairs() values each.
  void angles(int64_t pos, float* cs, float* sn) const;
  // Rotates n_heads vectors by precomputed angles.
  void rotate(float* x, int n_heads, int head_dim, const float* cs, const float* sn) const;
  int pairs() const { return dim_ / 2; }
  RopeStyle style() const { return style_; }

 private:
  RopeStyle style_;
  int dim_;
  std::vector<float> inv_freq_;    // per pair
  std::vector<float> ramp_mix_;    // YaRN: per pair, 1 = extrapolate, 0 = interpolate
  float freq_scale_ = 1.0f;        // 1 / factor for linear and YaRN
  float mscale_ = 1.0f;            // YaRN magnitude correction
  bool yarn_ = false;
};

}  // namespace tova
