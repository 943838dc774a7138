// The kernel check of the decode products' tails (cuda::Tail): a product that runs its output's
// norm or quantizer in its last block against the product and then the tail's own kernels
// (cuda::tail_apart).
#include <cstring>

#include "act_quant_cuda.h"
#include "kernel_check.h"

namespace tova {
namespace kcheck {

namespace {

struct TailCase {
  const char* what;
  bool glu;      // matmul_glu, its output quantized (Tail::Quant); else matmul and a norm
  bool in_place; // the norm of the product's output in place; else of a residual it is added to
  int quant;     // -1: the norm not quantized; else the ActType its output is quantized as
  bool ints;     // the integer product (8-bit input); else the float one
};

constexpr TailCase kCases[] = {
    {"residual norm, float product", false, false, -1, false},
    {"residual norm, integer product", false, false, -1, true},
    {"residual norm quantized q8_K", false, false, static_cast<int>(cuda::ActType::Q8_K), true},
    {"norm in place quantized q8_0", false, true, static_cast<int>(cuda::ActType::Q8_0), true},
    {"gated product quantized q8_1", true, false, static_cast<int>(cuda::ActType::Q8_1), true},
};

}  // namespace

// Each case for 1 and 3 input rows, one warp a row and rows split among warps: the product's
// output, the residual, the norm's output and the 8-bit buffer equal bit for bit and byte for
// byte; the counter is back at zero after every launch (the next launch's count starts there).
void check_tails(std::mt19937& rng, Bad& bad) {
  const GgmlType t = GgmlType::Q4_K;
  const int64_t cols = 256, rows = 512;  // the tails' rows: two q8_K blocks, 16 of q8_0
  std::vector<float> wg, wu;
  const std::vector<uint8_t> raw = random_rows(t, rows, cols, rng, wg), raw_up = random_rows(t, rows, cols, rng, wu);
  const std::vector<float> g = random_floats(static_cast<size_t>(rows), rng, 0.5f, 1.5f);
  DeviceBuffer dw, du, dg, dx, dcount, dy[2], dup[2], dres[2], dout[2], dact[2];
  const auto* w_dev = to_device(dw, raw);
  const auto* u_dev = to_device(du, raw_up);
  const float* g_dev = to_device(dg, g);
  auto* counter = static_cast<unsigned*>(dcount.reserve(sizeof(unsigned), "kernel check"));
  check(cudaMemset(counter, 0, sizeof(unsigned)), "kernel check");
  const size_t rb = row_bytes(t, cols);
  for (const TailCase& c : kCases)
    for (int n : {1, 3})
      for (int split = 0; split < 2; ++split) {
        const std::string what = cat("tail: ", c.what, " n=", n, split ? " (rows split among warps)" : "");
        const size_t out = static_cast<size_t>(n * rows);
        const std::vector<float> x = random_floats(static_cast<size_t>(n * cols), rng);
        const std::vector<float> res = random_floats(out, rng, -2.0f, 2.0f);
        const float* x_dev = to_device(dx, x);
        const size_t act_bytes = cuda::act_rows_bytes(rows, n);
        float* y[2];
        float* res_dev[2];
        float* norm_out[2];
        void* act[2];
        for (int k = 0; k < 2; ++k) {  // k 0: the product, then the tail apart; 1: the tail in the product
          y[k] = static_cast<float*>(dy[k].reserve(out * sizeof(float), "kernel check"));
          res_dev[k] = to_device(dres[k], res);
          norm_out[k] = static_cast<float*>(dout[k].reserve(out * sizeof(float), "kernel check"));
          check(cudaMemset(norm_out[k], 0, out * sizeof(float)), "kernel check");
          act[k] = dact[k].reserve(act_bytes, "kernel check");
          check(cudaMemset(act[k], 0, act_bytes), "kernel check");
          cuda::MatConfig cfg{kTiledFrom, split ? 1 << 16 : 0, c.ints ? act[k] : nullptr, act_bytes};
          cuda::Tail tail;
          if (c.glu) {
            cfg.act = act[k];
            tail = cuda::quant_tail(counter, y[k], n, rows, static_cast<cuda::ActType>(c.quant), cfg);
          } else {
            tail = c.in_place ? cuda::norm_tail(counter, y[k], nullptr, g_dev, y[k], n, rows, 1e-6f)
                              : cuda::norm_tail(counter, res_dev[k], y[k], g_dev, norm_out[k], n, rows, 1e-5f);
            if (c.quant >= 0) cuda::quantize_output(tail, static_cast<cuda::ActType>(c.quant), cfg);
          }
          cuda::MatTargets ts;
          ts.max_rows = rows;
          ts.t[ts.n++] = {w_dev, rb, rows, y[k], nullptr};
          if (c.glu)
            ts.t[ts.n++] = {u_dev, rb, rows,
                            static_cast<float*>(dup[k].reserve(out * sizeof(float), "kernel check")), nullptr};
          const cuda::Tail in_kernel = k == 1 ? tail : cuda::Tail{};
          if (c.glu)
            cuda::matmul_glu(0, t, ts, FfnActivation::SiLU, cols, x_dev, n, cfg, in_kernel);
          else
            cuda::matmul(0, t, ts, cols, x_dev, n, cfg, in_kernel);
          if (k == 0) cuda::tail_apart(0, tail);
        }
        if (to_host(y[0], out) != to_host(y[1], out))
          bad.push_back(what + ": the product's output differs");
        else if (to_host(res_dev[0], out) != to_host(res_dev[1], out))
          bad.push_back(what + ": the residual differs");
        else if (to_host(norm_out[0], out) != to_host(norm_out[1], out))
          bad.push_back(what + ": the norm's output differs");
        else if (to_host(static_cast<const uint8_t*>(act[0]), act_bytes) !=
                 to_host(static_cast<const uint8_t*>(act[1]), act_bytes))
          bad.push_back(what + ": the 8-bit bytes differ");
        else if (to_host(counter, 1)[0] != 0u)
          bad.push_back(what + ": the tail's counter was not put back to zero");
      }
}

}  // namespace kcheck
}  // namespace tova
