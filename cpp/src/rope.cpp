#include "rope.h"

#include <algorithm>
#include <cmath>

#include "common.h"

namespace tova {

Rope::Rope(const HParams& hp, float base, const std::vector<float>& freq_factors)
    : style_(hp.rope_style), dim_(hp.rope_dim) {
  const int pairs = dim_ / 2;
  TOVA_ASSERT(freq_factors.empty() || freq_factors.size() == static_cast<size_t>(pairs));
  inv_freq_.resize(static_cast<size_t>(pairs));
  for (int i = 0; i < pairs; ++i) {
    double f = std::pow(static_cast<double>(base), -2.0 * i / dim_);
    if (!freq_factors.empty()) f /= freq_factors[static_cast<size_t>(i)];
    inv_freq_[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  if (hp.rope_scaling == RopeScaling::Linear) {
    freq_scale_ = 1.0f / hp.rope_scale_factor;
  } else if (hp.rope_scaling == RopeScaling::Yarn) {
    // YaRN (Peng et al. 2023): pairs whose wavelength is short compared with the original
    // context keep their frequency (extrapolate), long ones are interpolated by the factor, a
    // linear ramp in between; attention logits are rescaled through cos/sin by mscale.
    yarn_ = true;
    freq_scale_ = 1.0f / hp.rope_scale_factor;
    const double two_pi = 2.0 * M_PI;
    auto corr_dim = [&](double n_rot) {
      return dim_ * std::log(hp.rope_orig_ctx / (n_rot * two_pi)) / (2.0 * std::log(base));
    };
    double lo = std::max(0.0, std::floor(corr_dim(hp.yarn_beta_fast)));
    double hi = std::min(static_cast<double>(dim_ - 1), std::ceil(corr_dim(hp.yarn_beta_slow)));
    ramp_mix_.resize(static_cast<size_t>(pairs));
    for (int i = 0; i < pairs; ++i) {
      double y = (i - lo) / std::max(0.001, hi - lo);
      double ramp = 1.0 - std::min(1.0, std::max(0.0, y));
      ramp_mix_[static_cast<size_t>(i)] = static_cast<float>(ramp * hp.yarn_ext_factor);
    }
    mscale_ = hp.yarn_attn_factor * (1.0f + 0.1f * std::log(1.0f / freq_scale_));
  }
}

void Rope::angles(int64_t pos, float* cs, float* sn) const {
  const int pairs = dim_ / 2;
  const double p = static_cast<double>(pos);
  for (int i = 0; i < pairs; ++i) {
    // double angle: exact for long positions
    double theta_extrap = p * inv_freq_[static_cast<size_t>(i)];
    double theta = theta_extrap * freq_scale_;
    if (yarn_) {
      double mix = ramp_mix_[static_cast<size_t>(i)];
      theta = theta * (1.0 - mix) + theta_extrap * mix;
    }
    cs[i] = static_cast<float>(std::cos(theta)) * mscale_;
    sn[i] = static_cast<float>(std::sin(theta)) * mscale_;
  }
}

void Rope::rotate(float* x, int n_heads, int head_dim, const float* cs, const float* sn) const {
  const int pairs = dim_ / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<size_t>(h) * head_dim;
    if (style_ == RopeStyle::Normal) {
      for (int i = 0; i < pairs; ++i) {
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * cs[i] - b * sn[i];
        v[2 * i + 1] = a * sn[i] + b * cs[i];
      }
    } else {
      for (int i = 0; i < pairs; ++i) {
        float a = v[i], b = v[i + pairs];
        v[i] = a * cs[i] - b * sn[i];
        v[i + pairs] = a * sn[i] + b * cs[i];
      }
    }
  }
}

void Rope::apply(float* x, int n_heads, int head_dim, int64_t pos) const {
  float cs[512], sn[512];
  TOVA_ASSERT(dim_ / 2 <= 512);
  angles(pos, cs, sn);
  rotate(x, n_heads, head_dim, cs, sn);
}

}  // namespace tova
