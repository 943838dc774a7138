// The kernel check's matrix products and element-wise kernels: every weight type by the chunked
// kernel and the per-element one (misaligned input rows send the product there), odd row counts,
// several targets in one launch (one with a bias), 1, 3 and 11 input rows (one warp a row and
// rows split among warps) and 70 (the tiled kernel); the integer products of 8-bit activations
// against the CPU's scalar kernels (and the quantized input byte for byte); the gated
// activations, alone and fused into the gate / up product; embedding rows; RMS norm, alone and
// after a residual add; residual adds. The CPU side dequantizes with its own kernels and sums in
// double precision.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "act_quant_cuda.h"
#include "cpu/kernels_cpu.h"
#include "kernel_check.h"
#include "quant_blocks.h"

namespace tova {
namespace kcheck {

// Rows long enough for 4 warps a row where the device has many multiprocessors.
int64_t check_cols(const TypeTraits& tt) {
  return tt.block_size == 1 ? 131 : tt.block_size * (tt.block_size >= 256 ? 5 : 35);
}

// The launch shapes the kernel check tries below the tiled kernel's threshold: every row by one
// warp, and by as many warps as a device of many multiprocessors would take.
const cuda::MatConfig kMatConfigs[2] = {{kTiledFrom, 0}, {kTiledFrom, 1 << 16}};

void check_matmul(GgmlType t, std::mt19937& rng, std::vector<std::string>& bad) {
  const TypeTraits& tt = type_traits(t);
  const int64_t cols = check_cols(tt);
  const int64_t rows = 37;
  std::vector<float> w;
  const std::vector<uint8_t> raw = random_rows(t, rows, cols, rng, w);
  const std::vector<float> bias = random_floats(static_cast<size_t>(rows), rng);
  DeviceBuffer dw, dx, db, dy[3];
  const auto* w_dev = to_device(dw, raw);
  const float* b_dev = to_device(db, bias);
  // Three targets in one launch: all 37 rows with a bias, the first 20 and the last 9 without.
  const int64_t first[3] = {0, 0, rows - 9}, count[3] = {rows, 20, 9};
  bool ok = true;
  for (int n : {1, 3, 11, 70}) {  // 70: the tiled kernel (two tiles of input rows)
    for (int run = 0; run < (n >= kTiledFrom ? 2 : 4) && ok; ++run) {
      const int misaligned = run % 2, config = run / 2;
      std::vector<float> x = random_floats(static_cast<size_t>(n * cols + 1), rng);
      const float* x_dev = to_device(dx, x) + misaligned;  // +1 float: the per-element kernel
      cuda::MatTargets ts;
      ts.n = 3;
      for (int j = 0; j < 3; ++j) {
        cuda::MatTarget& tg = ts.t[j];
        tg.w = w_dev + static_cast<size_t>(first[j]) * row_bytes(t, cols);
        tg.row_bytes = row_bytes(t, cols);
        tg.rows = count[j];
        tg.y = static_cast<float*>(dy[j].reserve(static_cast<size_t>(n * count[j]) * sizeof(float), "kernel check"));
        tg.bias = j == 0 ? b_dev : nullptr;
        ts.max_rows = std::max(ts.max_rows, count[j]);
      }
      cuda::matmul(0, t, ts, cols, x_dev, n, kMatConfigs[config]);
      for (int j = 0; j < 3 && ok; ++j) {
        const std::vector<float> y = to_host(ts.t[j].y, static_cast<size_t>(n * count[j]));
        for (int i = 0; i < n && ok; ++i)
          for (int64_t rr = 0; rr < count[j] && ok; ++rr) {
            const int64_t r = first[j] + rr;
            double want = j == 0 ? bias[static_cast<size_t>(r)] : 0.0, mag = std::fabs(want);
            for (int64_t e = 0; e < cols; ++e) {
              const double p = static_cast<double>(w[static_cast<size_t>(r * cols + e)]) *
                               x[static_cast<size_t>(misaligned + i * cols + e)];
              want += p;
              mag += std::fabs(p);
            }
            const double got = y[static_cast<size_t>(i * count[j] + rr)];
            if (!(std::fabs(got - want) <= 1e-5 * mag + 1e-6)) {
              bad.push_back(cat("matmul ", tt.name, n >= kTiledFrom ? " (tiled kernel)" : misaligned ? " (per-element kernel)" : "",
                                config ? " (rows split among warps)" : "", " target ", j, " n=", n,
                                " row ", r, " input ", i, ": ", got, " vs ", want));
              ok = false;
            }
          }
      }
    }
  }
  // Embedding rows: exactly the CPU's dequantized values, scaled.
  const std::vector<int32_t> tokens = {36, 0, 5, 5, 17};
  DeviceBuffer dt, de;
  const auto* t_dev = to_device(dt, tokens);
  auto* e_dev = static_cast<float*>(de.reserve(tokens.size() * static_cast<size_t>(cols) * sizeof(float), "kernel check"));
  cuda::embed(0, t, w_dev, row_bytes(t, cols), cols, t_dev, static_cast<int>(tokens.size()), 0.5f, e_dev);
  const std::vector<float> emb = to_host(e_dev, tokens.size() * static_cast<size_t>(cols));
  for (size_t i = 0; i < tokens.size(); ++i)
    for (int64_t e = 0; e < cols; ++e) {
      const float want = w[static_cast<size_t>(tokens[i] * cols + e)] * 0.5f;
      if (emb[i * static_cast<size_t>(cols) + static_cast<size_t>(e)] != want) {
        bad.push_back(cat("embed ", tt.name, " token ", tokens[i], " element ", e));
        return;
      }
    }
}

// y == rms_norm(x) * g (g null: no weight), rows of `width`, within float rounding.
bool norm_matches(const std::vector<float>& x, const std::vector<float>& y, const float* g, int64_t width) {
  for (size_t r0 = 0; r0 < x.size(); r0 += static_cast<size_t>(width)) {
    double ss = 0.0;
    for (int64_t e = 0; e < width; ++e) ss += static_cast<double>(x[r0 + static_cast<size_t>(e)]) * x[r0 + static_cast<size_t>(e)];
    const double s = 1.0 / std::sqrt(ss / static_cast<double>(width) + 1e-6);
    for (int64_t e = 0; e < width; ++e) {
      const double want = x[r0 + static_cast<size_t>(e)] * s * (g ? g[e] : 1.0f);
      if (std::fabs(y[r0 + static_cast<size_t>(e)] - want) > 1e-5 * (1.0 + std::fabs(want))) return false;
    }
  }
  return true;
}

void check_elementwise(std::mt19937& rng, std::vector<std::string>& bad) {
  const int64_t rows = 5, width = 333;
  const size_t count = static_cast<size_t>(rows * width);
  const std::vector<float> x = random_floats(count, rng, -3.0f, 3.0f);
  const std::vector<float> g = random_floats(static_cast<size_t>(width), rng, 0.5f, 1.5f);
  DeviceBuffer dx, dg, dy, du;
  const float* x_dev = to_device(dx, x);
  const float* g_dev = to_device(dg, g);
  auto* y_dev = static_cast<float*>(dy.reserve(count * sizeof(float), "kernel check"));
  for (int weighted = 0; weighted < 2; ++weighted) {
    cuda::rms_norm(0, x_dev, weighted ? g_dev : nullptr, y_dev, rows, width, 1e-6f);
    if (!norm_matches(x, to_host(y_dev, count), weighted ? g.data() : nullptr, width))
      bad.push_back(cat("rms_norm", weighted ? " (weighted)" : ""));
  }
  const std::vector<float> up = random_floats(count, rng, -2.0f, 2.0f);
  const float* up_dev = to_device(du, up);
  for (FfnActivation act : {FfnActivation::SiLU, FfnActivation::GeluTanh}) {
    auto* gate = const_cast<float*>(to_device(dy, x));
    cuda::act_mul(0, act, gate, up_dev, static_cast<int64_t>(count));
    const std::vector<float> got = to_host(gate, count);
    for (size_t i = 0; i < count; ++i) {
      const double v = x[i];
      const double a = act == FfnActivation::SiLU
                           ? v / (1.0 + std::exp(-v))
                           : 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
      const double want = a * up[i];
      if (std::fabs(got[i] - want) > 1e-5 * (1.0 + std::fabs(want))) {
        bad.push_back(cat("act_mul ", act == FfnActivation::SiLU ? "silu" : "gelu", " element ", i));
        return;
      }
    }
  }
  std::vector<float> want(count);
  for (size_t i = 0; i < count; ++i) want[i] = x[i] + up[i];
  auto* sum = const_cast<float*>(to_device(dy, x));
  cuda::add(0, sum, up_dev, static_cast<int64_t>(count));
  if (to_host(sum, count) != want) bad.push_back("add");
  // The residual and the next norm in one kernel: x exactly as add leaves it, the norm of it.
  DeviceBuffer dn;
  auto* xs = const_cast<float*>(to_device(dy, x));
  auto* n_dev = static_cast<float*>(dn.reserve(count * sizeof(float), "kernel check"));
  cuda::add_rms_norm(0, xs, up_dev, g_dev, n_dev, rows, width, 1e-6f);
  if (to_host(xs, count) != want) bad.push_back("add_rms_norm: the sum");
  if (!norm_matches(want, to_host(n_dev, count), g.data(), width)) bad.push_back("add_rms_norm: the norm");
}

// The RMS norm that quantizes what it writes (rms_norm_act) against the norm and the quantizer
// apart: y bit for bit, and the 8-bit bytes (quants, scales, sums of 16) byte for byte, for each
// 8-bit type, with and without the residual added, with and without a weight; the product's
// state says y is there.
void check_norm_act(std::mt19937& rng, std::vector<std::string>& bad) {
  const int64_t rows = 3, width = 768;  // 24 blocks of 32, 3 of 256: more blocks than warps
  const size_t count = static_cast<size_t>(rows * width);
  const std::vector<float> x = random_floats(count, rng, -3.0f, 3.0f);
  const std::vector<float> r = random_floats(count, rng, -1.0f, 1.0f);
  const std::vector<float> g = random_floats(static_cast<size_t>(width), rng, 0.5f, 1.5f);
  DeviceBuffer dx[2], dr, dg, dy[2], da[2];
  const float* r_dev = to_device(dr, r);
  const float* g_dev = to_device(dg, g);
  const size_t act_bytes = cuda::act_rows_bytes(width, static_cast<int>(rows));
  for (cuda::ActType t : {cuda::ActType::Q8_0, cuda::ActType::Q8_1, cuda::ActType::Q8_K})
    for (int add = 0; add < 2; ++add)
      for (int weighted = 0; weighted < 2; ++weighted) {
        const std::string what = cat("rms_norm_act type ", static_cast<int>(t), add ? " +residual" : "",
                                     weighted ? " weighted" : "");
        float* y[2];
        void* act[2];
        for (int k = 0; k < 2; ++k) {
          y[k] = static_cast<float*>(dy[k].reserve(count * sizeof(float), "kernel check"));
          act[k] = da[k].reserve(act_bytes, "kernel check");
          check(cudaMemset(act[k], 0, act_bytes), "kernel check");
        }
        // Apart: the norm, then the quantizer.
        auto* x0 = const_cast<float*>(to_device(dx[0], x));
        cuda::add_rms_norm(0, x0, add ? r_dev : nullptr, weighted ? g_dev : nullptr, y[0], rows, width, 1e-6f);
        cuda::quantize_act(0, t, y[0], static_cast<int>(rows), width, act[0], act_bytes);
        // Together.
        auto* x1 = const_cast<float*>(to_device(dx[1], x));
        cuda::ActState state;
        cuda::MatConfig cfg;
        cfg.act = act[1];
        cfg.act_bytes = act_bytes;
        cfg.act_state = &state;
        cuda::rms_norm_act(0, x1, add ? r_dev : nullptr, weighted ? g_dev : nullptr, y[1], rows, width, 1e-6f, t, cfg);
        if (to_host(x0, count) != to_host(x1, count) || to_host(y[0], count) != to_host(y[1], count))
          bad.push_back(what + ": the norm differs");
        else if (to_host(static_cast<const uint8_t*>(act[0]), act_bytes) !=
                 to_host(static_cast<const uint8_t*>(act[1]), act_bytes))
          bad.push_back(what + ": the 8-bit bytes differ");
        else if (state.x != y[1] || state.n != rows || state.cols != width || state.type != t)
          bad.push_back(what + ": the state does not say y is there");
      }
}

// The integer products (8-bit activations, matvec_int_cuda.cu) against the CPU's scalar kernels:
// the input quantized on the device equals the CPU's quantize of the type's vec_dot_type (quants,
// scales, sums), and each output equals the CPU's vec_dot (+ bias) up to the order of the block
// sums; gate/up in one kernel against act(gate) * up of those; one warp a row and rows split
// among warps.
void check_matmul_int(GgmlType t, std::mt19937& rng, std::vector<std::string>& bad) {
  const TypeTraits& tt = type_traits(t);
  const TypeTraits& at = type_traits(tt.vec_dot_type);
  const CpuKernels& wk = tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(t));
  const CpuKernels& ak = tier_kernels(CpuTier::Scalar, static_cast<uint32_t>(tt.vec_dot_type));
  const int64_t cols = check_cols(tt), rows = 37;
  std::vector<float> w, w_up;
  const std::vector<uint8_t> raw = random_rows(t, rows, cols, rng, w), raw_up = random_rows(t, rows, cols, rng, w_up);
  const std::vector<float> bias = random_floats(static_cast<size_t>(rows), rng);
  DeviceBuffer dw, dwu, dx, db, dy[3], dact;
  const auto* w_dev = to_device(dw, raw);
  const auto* wu_dev = to_device(dwu, raw_up);
  const float* b_dev = to_device(db, bias);
  const size_t rb = row_bytes(t, cols), ab = row_bytes(tt.vec_dot_type, cols);
  for (int n : {1, 3, 11}) {
    const std::vector<float> x = random_floats(static_cast<size_t>(n * cols), rng);
    const float* x_dev = to_device(dx, x);
    // The CPU's quantized input, and the device's.
    std::vector<uint8_t> xq(ab * static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) ak.quantize(x.data() + i * cols, xq.data() + i * ab, cols);
    cuda::MatConfig cfg{kTiledFrom, 0, nullptr, cuda::act_rows_bytes(cols, n)};
    cfg.act = dact.reserve(cfg.act_bytes, "kernel check");
    const cuda::ActType act_type = tt.vec_dot_type == GgmlType::Q8_K   ? cuda::ActType::Q8_K
                                   : tt.vec_dot_type == GgmlType::Q8_1 ? cuda::ActType::Q8_1
                                                                       : cuda::ActType::Q8_0;
    const cuda::ActRows a = cuda::quantize_act(0, act_type, x_dev, n, cols, cfg.act, cfg.act_bytes);
    const int64_t blk = at.block_size, nb = cols / blk;
    const std::vector<int8_t> q = to_host(a.q, static_cast<size_t>(n * cols));
    const std::vector<float> d = to_host(a.d, static_cast<size_t>(n * nb));
    const std::vector<float> sq = to_host(a.s, static_cast<size_t>(n * nb));
    const std::vector<int> bsum = to_host(a.bsum, static_cast<size_t>(n * cols / 16));
    bool same = true;
    for (int i = 0; i < n; ++i)
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* cb = xq.data() + i * ab + b * at.type_size;
        const int8_t* cq = nullptr;
        float cd = 0.0f, cs = 0.0f;
        const int16_t* cbs = nullptr;
        if (tt.vec_dot_type == GgmlType::Q8_K) {
          const auto* k = reinterpret_cast<const BlockQ8_K*>(cb);
          cq = k->qs, cd = k->d, cbs = k->bsums;
        } else if (tt.vec_dot_type == GgmlType::Q8_1) {
          const auto* k = reinterpret_cast<const BlockQ8_1*>(cb);
          cq = k->qs, cd = fp16_to_fp32(k->d), cs = fp16_to_fp32(k->s);
        } else {
          const auto* k = reinterpret_cast<const BlockQ8_0*>(cb);
          cq = k->qs, cd = fp16_to_fp32(k->d);
        }
        const size_t at_b = static_cast<size_t>(i * nb + b);
        same &= std::memcmp(cq, q.data() + i * cols + b * blk, static_cast<size_t>(blk)) == 0 && cd == d[at_b];
        if (tt.vec_dot_type == GgmlType::Q8_1) same &= cs == sq[at_b];
        if (cbs)
          for (int g = 0; g < blk / 16; ++g) same &= cbs[g] == bsum[static_cast<size_t>(i * cols / 16 + b * blk / 16 + g)];
      }
    if (!same) {
      bad.push_back(cat("quantize_act ", at.name, " n=", n, ": not the CPU's quants and scales"));
      return;
    }
    for (int config = 0; config < 2; ++config) {
      cfg.sm_count = config ? 1 << 16 : 0;
      // Three targets as check_matmul's; then gate and up.
      const int64_t first[3] = {0, 0, rows - 9}, count[3] = {rows, 20, 9};
      cuda::MatTargets ts;
      ts.n = 3;
      for (int j = 0; j < 3; ++j) {
        cuda::MatTarget& tg = ts.t[j];
        tg.w = w_dev + static_cast<size_t>(first[j]) * rb;
        tg.row_bytes = rb;
        tg.rows = count[j];
        tg.y = static_cast<float*>(dy[j].reserve(static_cast<size_t>(n * count[j]) * sizeof(float), "kernel check"));
        tg.bias = j == 0 ? b_dev : nullptr;
        ts.max_rows = std::max(ts.max_rows, count[j]);
      }
      cuda::matmul(0, t, ts, cols, x_dev, n, cfg);
      auto want_of = [&](const std::vector<uint8_t>& wraw, const std::vector<float>& wf, int64_t r, int i, double* mag) {
        *mag = 0.0;
        for (int64_t e = 0; e < cols; ++e)
          *mag += std::fabs(static_cast<double>(wf[static_cast<size_t>(r * cols + e)]) * x[static_cast<size_t>(i * cols + e)]);
        return static_cast<double>(wk.vec_dot(cols, wraw.data() + r * rb, xq.data() + i * ab));
      };
      for (int j = 0; j < 3; ++j) {
        const std::vector<float> y = to_host(ts.t[j].y, static_cast<size_t>(n * count[j]));
        for (int i = 0; i < n; ++i)
          for (int64_t rr = 0; rr < count[j]; ++rr) {
            double mag = 0.0;
            const int64_t r = first[j] + rr;
            const double want = want_of(raw, w, r, i, &mag) + (j == 0 ? bias[static_cast<size_t>(r)] : 0.0);
            const double got = y[static_cast<size_t>(i * count[j] + rr)];
            if (!(std::fabs(got - want) <= 1e-5 * mag + 1e-5)) {
              bad.push_back(cat("integer matmul ", tt.name, config ? " (rows split among warps)" : "", " target ", j,
                                " n=", n, " row ", r, " input ", i, ": ", got, " vs ", want));
              return;
            }
          }
      }
      cuda::MatTargets glu;
      glu.n = 2;
      glu.max_rows = rows;
      glu.t[0] = {w_dev, rb, rows, static_cast<float*>(dy[0].reserve(static_cast<size_t>(n * rows) * sizeof(float), "kernel check")),
                  nullptr};
      glu.t[1] = {wu_dev, rb, rows, static_cast<float*>(dy[1].reserve(static_cast<size_t>(n * rows) * sizeof(float), "kernel check")),
                  nullptr};
      cuda::matmul_glu(0, t, glu, FfnActivation::SiLU, cols, x_dev, n, cfg);
      const std::vector<float> y = to_host(glu.t[0].y, static_cast<size_t>(n * rows));
      for (int i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          double mg = 0.0, mu = 0.0;
          const double g = want_of(raw, w, r, i, &mg), u = want_of(raw_up, w_up, r, i, &mu);
          const double a_g = g / (1.0 + std::exp(-g)), want = a_g * u, got = y[static_cast<size_t>(i * rows + r)];
          const double tol = 1e-5 * (1.2 * (mg + 1e-3) * std::fabs(u) + (std::fabs(a_g) + 1e-3) * mu) + 1e-5;
          if (!(std::fabs(got - want) <= tol)) {
            bad.push_back(cat("integer matmul_glu ", tt.name, config ? " (rows split among warps)" : "", " n=", n,
                              " row ", r, " input ", i, ": ", got, " vs ", want));
            return;
          }
        }
    }
  }
}

// The gated product: gate = act(W_gate x) * (W_up x) in one kernel (or, misaligned input, the
// per-element products and act_mul), against double sums on the CPU.
void check_glu(GgmlType t, std::mt19937& rng, std::vector<std::string>& bad) {
  const TypeTraits& tt = type_traits(t);
  const int64_t cols = check_cols(tt);
  const int64_t rows = 37;
  std::vector<float> wg, wu;
  const std::vector<uint8_t> raw_g = random_rows(t, rows, cols, rng, wg), raw_u = random_rows(t, rows, cols, rng, wu);
  DeviceBuffer dg, du, dx, dy, ds;
  for (FfnActivation act : {FfnActivation::SiLU, FfnActivation::GeluTanh})
    for (int n : {1, 3, 11, 70})
      for (int run = 0; run < (n >= kTiledFrom ? 2 : 4); ++run) {
        const int misaligned = run % 2, config = run / 2;
        const std::vector<float> x = random_floats(static_cast<size_t>(n * cols + 1), rng, -0.3f, 0.3f);
        const float* x_dev = to_device(dx, x) + misaligned;
        cuda::MatTargets ts;
        ts.n = 2;
        ts.max_rows = rows;
        ts.t[0] = {to_device(dg, raw_g), row_bytes(t, cols), rows,
                   static_cast<float*>(dy.reserve(static_cast<size_t>(n * rows) * sizeof(float), "kernel check")),
                   nullptr};
        ts.t[1] = {to_device(du, raw_u), row_bytes(t, cols), rows,
                   static_cast<float*>(ds.reserve(static_cast<size_t>(n * rows) * sizeof(float), "kernel check")),
                   nullptr};
        cuda::matmul_glu(0, t, ts, act, cols, x_dev, n, kMatConfigs[config]);
        const std::vector<float> y = to_host(ts.t[0].y, static_cast<size_t>(n * rows));
        for (int i = 0; i < n; ++i)
          for (int64_t r = 0; r < rows; ++r) {
            double g = 0, u = 0, mg = 0, mu = 0;
            for (int64_t e = 0; e < cols; ++e) {
              const double xv = x[static_cast<size_t>(misaligned + i * cols + e)];
              g += wg[static_cast<size_t>(r * cols + e)] * xv;
              u += wu[static_cast<size_t>(r * cols + e)] * xv;
              mg += std::fabs(wg[static_cast<size_t>(r * cols + e)] * xv);
              mu += std::fabs(wu[static_cast<size_t>(r * cols + e)] * xv);
            }
            const double a = act == FfnActivation::SiLU
                                 ? g / (1.0 + std::exp(-g))
                                 : 0.5 * g * (1.0 + std::tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
            const double want = a * u, got = y[static_cast<size_t>(i * rows + r)];
            const double tol = 1e-5 * (1.2 * (mg + 1e-3) * std::fabs(u) + (std::fabs(a) + 1e-3) * mu) + 1e-6;
            if (!(std::fabs(got - want) <= tol)) {
              bad.push_back(cat("matmul_glu ", tt.name, act == FfnActivation::SiLU ? " silu" : " gelu",
                                misaligned ? " (per-element kernel)" : "", config ? " (rows split among warps)" : "",
                                " n=", n, " row ", r, " input ", i, ": ",
                                got, " vs ", want));
              return;
            }
          }
      }
}

}  // namespace kcheck
}  // namespace tova
