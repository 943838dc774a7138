// The kernel check of the decode products' tails (cuda::Tail): a product that runs its output's
// norm or quantizer in its last block against the product and then the tail's own kernels
// (cuda::tail_apart).
#include <algorithm>
#include <cstring>

#include "act_quant_cuda.h"
#include "backend.h"
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

// The K/V writes as the tail of the product of q, k and v (Tail::Store, with the rotation
// WriteRope) against the product, then write_kv with it: q, k, v and every byte stored the same,
// for float and quantized (rotated) keys, 1 and 3 rows; the counter back at zero.
void check_store_tail(std::mt19937& rng, Bad& bad) {
  const GgmlType t = GgmlType::Q4_K;
  const int64_t cols = 256;
  const int head_dim = 64, n_head = 4, n_head_kv = 2, n_slots = 5, pairs = 16;  // a partial rotation
  const int64_t q_rows = n_head * head_dim, kv_rows = n_head_kv * head_dim;
  std::vector<float> wdeq;
  const std::vector<uint8_t> raw = random_rows(t, q_rows + 2 * kv_rows, cols, rng, wdeq);
  DeviceBuffer dw, dx, dcs, dsn, dcount, dqkv[2][3], dcache[2][2], dwrites[2];
  const auto* w_dev = to_device(dw, raw);
  auto* counter = static_cast<unsigned*>(dcount.reserve(sizeof(unsigned), "kernel check"));
  check(cudaMemset(counter, 0, sizeof(unsigned)), "kernel check");
  const size_t rb = row_bytes(t, cols);
  const int32_t slots[] = {4, 0, 2};
  for (int quant = 0; quant < 2; ++quant)
    for (int n : {1, 3}) {
      cuda::KvFormat f;
      f.k = quant ? KvType::Q8_0 : KvType::F16;
      f.v = quant ? KvType::Q4_1 : KvType::F32;
      f.k_row_bytes = kv_row_bytes(f.k, head_dim);
      f.v_row_bytes = kv_row_bytes(f.v, head_dim);
      f.hadamard_k = f.hadamard_v = quant != 0;
      const size_t k_bytes = f.k_row_bytes * n_head_kv * n_slots, v_bytes = f.v_row_bytes * n_head_kv * n_slots;
      const std::vector<float> x = random_floats(static_cast<size_t>(n * cols), rng);
      const float* x_dev = to_device(dx, x);
      const float* cs = to_device(dcs, random_floats(static_cast<size_t>(n * pairs), rng));
      const float* sn = to_device(dsn, random_floats(static_cast<size_t>(n * pairs), rng));
      std::vector<float> out[2][3];
      std::vector<uint8_t> cache[2][2];
      for (int fused = 0; fused < 2; ++fused) {
        cuda::MatTargets ts;
        float* y[3];
        for (int j = 0; j < 3; ++j) {
          const int64_t rows = j == 0 ? q_rows : kv_rows, first = j == 0 ? 0 : q_rows + (j - 1) * kv_rows;
          y[j] = static_cast<float*>(dqkv[fused][j].reserve(static_cast<size_t>(n * rows) * sizeof(float), "kernel check"));
          ts.t[ts.n++] = {w_dev + static_cast<size_t>(first) * rb, rb, rows, y[j], nullptr};
          ts.max_rows = std::max(ts.max_rows, rows);
        }
        auto* kc = to_device(dcache[fused][0], std::vector<uint8_t>(k_bytes, 0));
        auto* vc = to_device(dcache[fused][1], std::vector<uint8_t>(v_bytes, 0));
        std::vector<cuda::KvWrite> writes(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) {
          cuda::KvWrite& w = writes[static_cast<size_t>(i)];
          w.k = kc;
          w.v = vc;
          w.src_k = y[1] + static_cast<int64_t>(i) * kv_rows;
          w.src_v = y[2] + static_cast<int64_t>(i) * kv_rows;
          w.n_slots = n_slots;
          w.slot = slots[i];
        }
        const cuda::KvWrite* w_dev_rows = to_device(dwrites[fused], writes);
        const cuda::WriteRope wr{{y[0], n_head, 0}, {y[1], n_head_kv, 0}, cs, sn, pairs, 1};
        const cuda::Tail tail = cuda::store_tail(counter, f, w_dev_rows, n, n_head_kv, head_dim, wr);
        const cuda::MatConfig cfg{kTiledFrom, 0, nullptr, 0};
        cuda::matmul(0, t, ts, cols, x_dev, n, cfg, fused ? tail : cuda::Tail{});
        if (!fused) cuda::tail_apart(0, tail);
        for (int j = 0; j < 3; ++j) out[fused][j] = to_host(y[j], static_cast<size_t>(n * ts.t[j].rows));
        cache[fused][0] = to_host(static_cast<const uint8_t*>(kc), k_bytes);
        cache[fused][1] = to_host(static_cast<const uint8_t*>(vc), v_bytes);
      }
      const std::string what = cat("tail: K/V writes after the q/k/v product, ", quant ? "quantized rotated" : "float",
                                   " K/V, n=", n);
      for (int j = 0; j < 3; ++j)
        if (out[0][j] != out[1][j]) bad.push_back(cat(what, ": output ", j, " differs"));
      if (cache[0][0] != cache[1][0] || cache[0][1] != cache[1][1]) bad.push_back(what + ": the stored bytes differ");
      if (to_host(counter, 1)[0] != 0u) bad.push_back(what + ": the counter was not put back to zero");
    }
}

}  // namespace kcheck
}  // namespace tova
