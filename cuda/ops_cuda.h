// The CUDA backend's operations as host-callable launchers (the kernels are in ops_cuda.cu and
// the other .cu files of cuda/: matrix products, attention, policy step, K/V writes). Every pointer is device memory unless it says host;
// every launcher queues its kernel on queue s (recorded when s is a recorded step's: recorder.h) and
// checks the launch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "arch.h"
#include "backend.h"
#include "config.h"
#include "kv_policy.h"
#include "quant.h"
#include "recorder.h"

namespace tova {
namespace cuda {

// True when the matrix kernels handle weights of this type.
bool matmul_supports(GgmlType t);

// One weight matrix of a product: `rows` rows of `row_bytes` bytes, output y [n][rows], and a
// bias [rows] added to every output row (null: none).
struct MatTarget {
  const uint8_t* w = nullptr;
  size_t row_bytes = 0;
  int64_t rows = 0;
  float* y = nullptr;
  const float* bias = nullptr;
};
// Up to kMaxTargets matrices of one type sharing the input: one launch (a kernel argument).
constexpr int kMaxTargets = 4;
// Kernel arguments here and below are bytes without padding (recorder.h compares them).
struct MatTargets {
  MatTarget t[kMaxTargets];
  int n = 0;
  int unused = 0;
  int64_t max_rows = 0;
};

// A product's input in 8 bits (act_quant_cuda.h): q8_0 (the scale d), q8_1 (d and s = d * sum
// of the quants) in blocks of 32; q8_K (float d and the sums of each 16 quants) in blocks of 256.
enum class ActType { Q8_0, Q8_1, Q8_K };

// n rows of `cols` quants (row i at q + i * cols) with, per block b of row i, d[i * nb + b] and
// s[i * nb + b] (nb = cols / 32: q8_0 / q8_1; cols / 256: q8_K, whose s is unused), and for q8_K
// the sums of 16 quants at bsum[i * cols / 16 + g]. Scales as floats, fp16-rounded where the CPU
// stores fp16.
struct ActRows {
  int8_t* q = nullptr;
  float* d = nullptr;
  float* s = nullptr;
  int* bsum = nullptr;
  int64_t cols = 0;
};

// What the 8-bit buffer holds now: x (n rows of cols) quantized as `type`; x null: nothing
// known. Set by whoever quantizes into it (a product, or the RMS norm that quantizes what it
// writes); a product whose input it is reads it instead of quantizing again. Its owner clears
// it whenever x may have changed since.
struct ActState {
  const float* x = nullptr;
  int n = 0;
  int64_t cols = 0;
  ActType type = ActType::Q8_0;
};


// How the matrix products are launched (CudaBackend: from the device and the environment).
struct MatConfig {
  int tiled_from = 32;  // input rows from which the tiled kernel takes a product (0: never)
  int sm_count = 0;     // the device's multiprocessors: a product of too few rows to fill them
                        // has each row taken by several warps (matvec_cuda.cu; 0: never)
  // Below tiled_from rows, where set: the input quantized to 8 bits here (act_bytes bytes,
  // act_rows_bytes) and integer products, the CPU's default path (matvec_int_cuda.cu), for
  // the types that have them; null: float activations.
  void* act = nullptr;
  size_t act_bytes = 0;
  ActState* act_state = nullptr;  // null: every product quantizes its input
  bool tails = true;  // a decode step's product takes its output's norm or quantizer (Tail)
};

// x[i * width + e] = scale * W_{tokens[i]}[e] (tokens: device int32).
void embed(Queue s, GgmlType t, const uint8_t* w, size_t row_bytes, int64_t width, const int32_t* tokens, int n, float scale,
           float* x);

// y = x / sqrt(mean(x^2) + eps) * w per row (w null: no weight); x == y allowed.
void rms_norm(Queue s, const float* x, const float* w, float* y, int64_t rows, int64_t width, float eps);
// x += a, then y = rms_norm(x) * w: one kernel (y distinct from x and a).
void add_rms_norm(Queue s, float* x, const float* a, const float* w, float* y, int64_t rows, int64_t width, float eps);
// As add_rms_norm (a null: rms_norm), and y quantized in the same kernel into cfg.act as type t
// (the bytes quantize_act writes from y), cfg.act_state set to say so: the next product of y
// reads it instead of quantizing (two launches a layer fewer).
void rms_norm_act(Queue s, float* x, const float* a, const float* w, float* y, int64_t rows, int64_t width, float eps,
                  ActType t, const MatConfig& cfg);

// Rotates n rows of n_heads vectors (head_dim apart) of each target (queries and keys: one
// launch for both) by cos / sin tables [n][pairs]: pairs (2p, 2p+1) or, NeoX, (p, p + pairs).
struct RopeTarget {
  float* x = nullptr;
  int n_heads = 0;
  int unused = 0;
};
void rope(Queue s, RopeStyle style, const RopeTarget* targets, int n_targets, int n, int head_dim, int pairs,
          const float* cs, const float* sn);

// gate = act(gate) * up; x += y.
void act_mul(Queue s, FfnActivation act, float* gate, const float* up, int64_t count);
void add(Queue s, float* x, const float* y, int64_t count);

// How a sequence's K and V rows are stored (its KvLayout, one tier): element types (any KvType;
// keys never Q3_0), bytes of one head_dim row, and whether quantized rows are kept rotated by the
// Walsh-Hadamard transform (KvLayout::hadamard_k / _v).
struct KvFormat {
  KvType k = KvType::F16;
  KvType v = KvType::F16;
  size_t k_row_bytes = 0;
  size_t v_row_bytes = 0;
  bool hadamard_k = false;
  bool hadamard_v = false;
  uint8_t unused[6] = {};
  bool operator==(const KvFormat& o) const {
    return k == o.k && v == o.v && k_row_bytes == o.k_row_bytes && v_row_bytes == o.v_row_bytes &&
           hadamard_k == o.hadamard_k && hadamard_v == o.hadamard_v;
  }
  bool operator!=(const KvFormat& o) const { return !(*this == o); }
};

// A tier's types as the kernels take them.
inline KvFormat kv_format(const KvTierTypes& t) {
  KvFormat f;
  f.k = t.type_k;
  f.v = t.type_v;
  f.k_row_bytes = t.k_row_bytes;
  f.v_row_bytes = t.v_row_bytes;
  f.hadamard_k = t.hadamard_k;
  f.hadamard_v = t.hadamard_v;
  return f;
}

// One K/V row to store: the row at src_k / src_v ([n_head_kv][head_dim] floats) into slot `slot`
// of a layer's K / V (its upper tier: [n_head_kv][n_slots] rows of the format's bytes, n_slots
// the tier's slots).
struct KvWrite {
  void* k = nullptr;
  void* v = nullptr;
  float* state = nullptr;  // the layer's per-slot policy state (AttnDesc::state): 0 for the new token
  const float* src_k = nullptr;
  const float* src_v = nullptr;
  int n_slots = 0;
  int slot = 0;
};
// The RoPE rotation of a step's rows done by the K/V write of those rows (one launch fewer): the
// block that stores write i first rotates row i of q and of k (the keys it stores: writes[i].src_k
// is row i of k), as rope() does (cs / sn [n][pairs]). pairs 0: no rotation.
struct WriteRope {
  RopeTarget q, k;
  const float* cs = nullptr;
  const float* sn = nullptr;
  int32_t pairs = 0;
  int32_t neox = 0;
};
// Stores n rows (writes: device memory) in format f, rotated and quantized as the CPU backend
// stores them (the same bytes): every sequence's rows of a layer in one launch. head_dim <= 256.
void write_kv(Queue s, const KvFormat& f, const KvWrite* writes, int n, int n_head_kv, int head_dim,
              const WriteRope& rope = WriteRope{});
// Error unless write_kv stores rows of head_dim in format f.
void check_write_kv(const KvFormat& f, int head_dim);

// What runs after a decode-step product in the product's own kernel (tail.cuh): its last block to
// finish (counted on `counter`, zero between launches) takes the product's output and does what a
// kernel of its own would have, one launch fewer (a graph node, and the gap before it, fewer).
//   kind Norm: as rms_norm_act / add_rms_norm / rms_norm (x, a, w, y, rows, width, eps), and
//              with quant_block 32 or 256 y also quantized into q (the bytes quantize_act writes);
//   kind Quant: x's rows quantized into q (quantize_act), quant_block elements a block;
//   kind Store: the K/V writes (n_writes of them at `writes`, device memory) as write_kv stores
//              them in format kv, the rotation `rope` first (the product computed q, k and v).
// One block does the tail's rows one after another: for a few rows only (kTailRows).
struct Tail {
  enum Kind : int32_t { None = 0, Norm = 1, Quant = 2, Store = 3 };
  unsigned* counter = nullptr;
  float* x = nullptr;
  const float* a = nullptr;
  const float* w = nullptr;
  float* y = nullptr;
  int64_t width = 0;
  int32_t rows = 0;
  int32_t kind = None;
  uint32_t eps_bits = 0;  // the norm's eps as bits (recorded arguments are compared as bytes)
  int32_t quant_block = 0;
  ActRows q;
  KvFormat kv;
  const KvWrite* writes = nullptr;
  WriteRope rope;
  int32_t n_writes = 0, n_head_kv = 0, head_dim = 0, unused = 0;
};
constexpr int kTailRows = 4;

// y[i * rows + r] = W_r . x[i * cols ...] (+ bias[r]) for i < n and each target: weights in type
// t, x float rows of `cols`. Float accumulation of dequantized weights (as the CPU backend with
// float activations); the bias is added to the finished sum, as the CPU adds it. From
// cfg.tiled_from input rows on the tiled kernel (matmul_tiled_cuda.h), which reads each weight
// once for 64 input rows; below it, the kernels that read it once for up to 8.
// tail: what the product's output then goes through (Tail), in the product's kernel where that
// kernel takes tails (the decode kernels of matvec_cuda.h), else launched after it.
void matmul(Queue s, GgmlType t, const MatTargets& targets, int64_t cols, const float* x, int n,
            const MatConfig& cfg, const Tail& tail = Tail{});

// The gated feed-forward's first product: gate.y = act(W_gate x) * (W_up x) (targets t[0] =
// gate, t[1] = up, one type; up.y is scratch). One kernel that computes both rows of a warp's
// output where the chunked kernel takes the type, else the two products and act_mul.
void matmul_glu(Queue s, GgmlType t, const MatTargets& targets, FfnActivation act, int64_t cols,
                const float* x, int n, const MatConfig& cfg, const Tail& tail = Tail{});

// A tail launched as the kernels of its own it stands for (rms_norm / add_rms_norm / rms_norm_act;
// quantize_act; write_kv): the same floats and bytes.
void tail_apart(Queue s, const Tail& t);
// The norm of rms_norm / add_rms_norm (a null: none added) as a tail counted on `counter`
// (device memory, zero); quantize_output adds rms_norm_act's quantization of y.
Tail norm_tail(unsigned* counter, float* x, const float* a, const float* w, float* y, int rows, int64_t width,
               float eps);
// x (rows of cols) quantized as quantize_act does, as a tail.
Tail quant_tail(unsigned* counter, const float* x, int rows, int64_t cols, ActType type, const MatConfig& cfg);
// The tail's output (a norm's y, a quantizer's x: rows of width) quantized as `type` into cfg.act.
void quantize_output(Tail& t, ActType type, const MatConfig& cfg);
// The K/V writes of write_kv (with its rotation) as a tail.
Tail store_tail(unsigned* counter, const KvFormat& f, const KvWrite* writes, int n, int n_head_kv, int head_dim,
                const WriteRope& rope);


// One slot moved from a layer's upper tier (slot src of n_hi, format hi) to its lower tier (row
// dst of its n_lo, i.e. slot n_hi + dst; format lo), every KV head's key and value converted
// (Backend::demote_kv).
struct KvDemote {
  const void* k_hi = nullptr;
  const void* v_hi = nullptr;
  void* k_lo = nullptr;
  void* v_lo = nullptr;
  int n_hi = 0, n_lo = 0;
  int src = 0, dst = 0;
};
// n demotions (device memory) in one launch, as CpuKv::demote converts them: each row decoded,
// rotated back unless both tiers keep it rotated, rotated for the lower tier where it is rotated
// and the upper was not, stored in the lower types.
void demote_kv(Queue s, const KvFormat& hi, const KvFormat& lo, const KvDemote* demotes, int n, int n_head_kv,
               int head_dim);

// What the attention does after a row's slots are attended (in the row's last block of the
// attention's kernel, as a Tail: tail.cuh, where `counters` is set, [n_rows] zeros; else in
// kernels of their own): the runs combined, then, where `means` is set, each row's head mean and
// policy step (head_mean's means and victims), then, where quant_block is 32 or 256, the rows'
// outputs (row i at quant_x + i * q.cols: the host checks) quantized into q for the product
// that takes them.
struct AttnPost {
  unsigned* counters = nullptr;
  float* means = nullptr;
  int32_t* victims = nullptr;
  const float* quant_x = nullptr;
  ActRows q;
  int32_t quant_block = 0;
  int32_t unused = 0;
};

// One query row of the attention, for every head (attention_cuda.cu).
struct AttnDesc {
  const void* k = nullptr;  // the layer's K: [n_head_kv][n_hi] rows (KvFormat), the upper tier
  const void* v = nullptr;
  const void* k_lo = nullptr;  // and the lower tier: [n_head_kv][n_slots - n_hi] rows (the lower format)
  const void* v_lo = nullptr;
  int n_slots = 0;
  int n_hi = 0;             // slots [0, n_hi) are the upper tier's, the rest the lower's
  int n_idx = 0;
  int64_t idx_off = 0;      // the slots attended: idx[idx_off .. idx_off + n_idx), position order
  const float* q = nullptr; // [n_head][head_dim]
  float* out = nullptr;     // [n_head][head_dim]
  int64_t probs_off = -1;   // probabilities [n_head][n_idx] at probs + probs_off; -1: not wanted
  int64_t mean_off = -1;    // with probs: their mean over heads [n_idx] at means + mean_off (head_mean)
  // With a mean, a built-in policy's step (head_mean; AttnRow::rule): the state of idx's slots
  // updated (h2o, tova_ema; new_slot inserted by this row, and idx's last new_tail entries by its
  // step: AttnRow::new_tail), then the n_evict slots of idx with the
  // lowest (key, position) among those whose position idx[sel_off + j] is >= 0 (-1: not a
  // candidate) at victims[victims_off..].
  BuiltinRule rule = BuiltinRule::None;
  float* state = nullptr;   // [n_slots] of the layer (h2o, tova_ema)
  int32_t new_slot = -1;
  int new_tail = 0;
  int64_t sel_off = -1;
  int64_t victims_off = -1;
  int n_evict = 0;
  // Positions "cache_index" (AttnRow::rank_rope): the keys rotated by rank ([n_head_kv][n_idx]
  // floats rows, rank_keys) are read instead of the stored ones, and the query is rotated by rank
  // n_idx - 1 (angles q_cs / q_sn, rope_pairs each; pairs (2p, 2p + 1), or NeoX (p, p + pairs)).
  float* ranked = nullptr;
  const float* q_cs = nullptr;
  const float* q_sn = nullptr;
  int rope_pairs = 0;
  bool rope_neox = false;
};
// For the rows with `ranked`: key j of each KV head (slot idx[j], stored in format f) decoded,
// rotated back from the Hadamard rotation where stored so, and rotated by RoPE at rank j (angles
// cs / sn [rank][rope_pairs]) into ranked: the CPU's rotate_keys_by_rank (cpu/attention_cpu.cpp).
void rank_keys(Queue s, const KvFormat& f, const AttnDesc* rows, int n_rows, const int32_t* idx, int n_head_kv,
               int head_dim, const float* cs, const float* sn);
// Rows stored in format f (every row's upper tier; f_lo: the lower tier's, where n_hi < n_slots):
// keys of a quantized type scored by the CPU's integer product (the query quantized to the type's
// vec_dot_type), rotated keys met by a query rotated alike, each tier's weighted sum of values
// apart, a rotated tier's sum rotated back, then added (the CPU's order).
// A row's slots are attended in runs (64 slots or more, max_runs at most, a count that depends
// on the row's n_idx alone) by blocks of their own, then combined (AttnPost: by the row's last
// block, else a second launch). max_idx: at
// least the rows' largest n_idx (a larger bound changes nothing but the scratch's strides, and
// the launch only where it has more runs); tiered: some row has a lower tier; scratch:
// attend_scratch_floats(n_rows, n_head, head_dim, max_idx, tiered, max_runs) floats.
constexpr int kAttnMaxRuns = 16;
void attend(Queue s, const KvFormat& f, const KvFormat& f_lo, const AttnDesc* rows, int n_rows, const int32_t* idx, int n_head, int n_head_kv,
            int head_dim, float scale, int max_idx, bool tiered, int max_runs, float* scratch, float* probs,
            const AttnPost& post);
size_t attend_scratch_floats(int n_rows, int n_head, int head_dim, int max_idx, bool tiered, int max_runs);
// For the rows with mean_off >= 0: means[mean_off + j] = (sum over h in order of
// probs[probs_off + h * n_idx + j]) * inv_head, the host's arithmetic (kv_attention.cpp); for
// those with a rule, that policy's step as kv_policy.cpp takes it (state updated in the same
// arithmetic, victims in the same order), -1 for each victim the candidates do not cover.
// victims: device memory or pinned host memory (the backend has them written where the host
// reads them: a few ints a row, no copy).
void head_mean(Queue s, const AttnDesc* rows, int n_rows, int n_head, float inv_head, const float* probs,
               float* means, const int32_t* idx, int32_t* victims);

}  // namespace cuda
}  // namespace tova
