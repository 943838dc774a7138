// The backend seam: the operations one forward pass needs, on memory the backend owns (host
// memory for the CPU backend, device memory for CUDA). The forward pass (forward.cpp) is written
// once in terms of these operations; the KV slot bookkeeping and the eviction policies
// (kv_store.cpp, kv_attention.cpp) never see a backend's memory layout. A backend owns the K/V
// payload of every sequence (KvPayload) and its activation buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "arch.h"
#include "config.h"
#include "kv_policy.h"
#include "model.h"
#include "rope.h"

namespace tova {

// How one tier's keys and values are stored.
struct KvTierTypes {
  KvType type_k = KvType::F16;      // element type of the keys
  KvType type_v = KvType::F16;      // and of the values
  size_t k_row_bytes = 0;           // bytes of one head_dim vector in type_k
  size_t v_row_bytes = 0;           // and in type_v
  // Keys are stored rotated by the orthonormal Walsh-Hadamard transform of head_dim (queries are
  // rotated alike before scoring, so q.k is unchanged): spreads outlier channels over the block
  // before a 4-bit quantization. Set for quantized keys when head_dim is a power of two.
  bool hadamard_k = false;
  // Values likewise (the weighted sum of rotated values is rotated back: H is its own inverse).
  bool hadamard_v = false;
};

// Shape of one sequence's K/V payload: per layer, n_slots rows per KV head. The first
// n_hi(l) slots of layer l are stored as the upper tier (the fields inherited), the last
// n_lo[l] as the lower tier `lo` (KvConfig::hi_capacity; none when n_lo is empty or 0).
struct KvLayout : KvTierTypes {
  int n_head_kv = 0;
  int head_dim = 0;
  std::vector<int> n_slots;         // per layer
  std::vector<int> n_lo;            // per layer, or empty
  KvTierTypes lo;
  int n_lo_of(int layer) const { return n_lo.empty() ? 0 : n_lo[static_cast<size_t>(layer)]; }
  int n_hi(int layer) const { return n_slots[static_cast<size_t>(layer)] - n_lo_of(layer); }
  bool tiered() const;
  uint64_t payload_bytes() const;   // K and V of every layer
};

// The ggml type id of a KV element type (its block layout and kernels). Q3_0, tova's own value
// format (quant_blocks.h), has none: Error.
GgmlType kv_ggml_type(KvType t);
int kv_block_size(KvType t);               // elements per block (1 for f16, f32)
size_t kv_row_bytes(KvType t, int64_t n);  // bytes of n elements, n a multiple of the block size

// One sequence's K/V memory. Opaque outside its backend.
class KvPayload {
 public:
  virtual ~KvPayload() = default;
  virtual uint64_t bytes() const = 0;
};

// The activation buffers of a step: [rows][width] floats each, rows <= max_rows.
enum class Buf { X, XN, Q, K, V, ATT, O, GATE, UP, kCount };
// The width (floats per row) of a buffer for a model: every backend sizes its buffers by it.
size_t buf_width(const HParams& h, Buf b);

// One query row's attention over a sequence's kept slots (one layer), for all query heads.
struct AttnRow {
  KvPayload* kv = nullptr;
  int layer = 0;
  // The slots attended: in ascending position order with rank_rope (and for the rows of a chunk,
  // each seeing a prefix), else in any order (the walk gives ascending slots: memory order).
  const int32_t* idx = nullptr;
  int n_idx = 0;
  const float* q = nullptr;      // [n_head][head_dim], backend memory
  float* out = nullptr;          // [n_head][head_dim], backend memory
  float* probs = nullptr;        // host [n_head][n_slots]: p written at probs[h * n_slots + idx[j]]; may be null
  // With a backend that reduces_probs(): probs is [n_slots], the mean over the query heads
  // (summed in head order, then times 1 / n_head: KvAttention's arithmetic) at probs[idx[j]].
  bool probs_mean_only = false;
  // With a backend that selects_victims(), for a built-in policy it runs itself (`rule`, see
  // kv_policy.h) instead of probabilities: the row's step of that policy. It updates the
  // per-slot state it keeps (h2o, tova_ema; idx covers every valid slot, new_slot is the token
  // this row inserted and the last new_tail entries of idx the tokens its step wrote (a chunk's
  // last row, idx in position order; 0 otherwise); a slot's state is 0 from its write_kv on),
  // then selects the n_evict
  // slots of idx with the lowest (key, position) among those with evict_pos[j] >= 0 (the
  // position of idx[j]; -1: not a candidate), in that order, into host `victims` (complete
  // after flush_host(); -1 for each the candidates do not cover).
  BuiltinRule rule = BuiltinRule::None;
  int32_t new_slot = -1;
  int new_tail = 0;
  const int32_t* evict_pos = nullptr;
  int n_evict = 0;
  int32_t* victims = nullptr;
  int n_slots = 0;
  // Positions "cache_index": q and the stored keys are unrotated; key j is rotated by rank j
  // and the query by rank n_idx - 1. Null: keys were stored rotated.
  const Rope* rank_rope = nullptr;
};

struct AttnShape {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 1.0f;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual int n_threads() const = 0;
  virtual int max_rows() const = 0;

  virtual std::unique_ptr<KvPayload> new_kv(const KvLayout& layout) = 0;
  // dst = src (same layout): a sequence forked from another.
  virtual void copy_kv(KvPayload& dst, const KvPayload& src) = 0;
  // Moves slot `src` of the upper tier to slot `dst` of the lower tier (KvLayout::lo), K and V
  // of every KV head converted to the lower types. Only called for a tiered layout.
  virtual void demote_kv(KvPayload& kv, int layer, int src, int dst) = 0;
  virtual float* buf(Buf b) = 0;

  // x[i] = scale * tok_embd[tokens[i]]  (tokens in host memory, checked by the caller)
  virtual void embed(const int32_t* tokens, int n, float scale, float* x) = 0;
  // y = rms_norm(x) * w over rows of `width` (w empty: no weight); x == y allowed
  virtual void rms_norm(const float* x, const Vector& w, float* y, int64_t rows, int64_t width,
                        float eps) = 0;
  // y_j[i] = W_j x[i] (+ b_j, added to the finished product) for weights sharing one input, n rows
  struct MatJob {
    const Matrix* w = nullptr;
    float* y = nullptr;
    const Vector* bias = nullptr;  // null or empty: none
  };
  virtual void matmul(const float* x, int n, const MatJob* jobs, int n_jobs) = 0;
  // logits[i] = W x[i], written to host memory
  virtual void matmul_to_host(const Matrix& w, const float* x, int n, float* host_y) = 0;
  // rotates n rows of n_heads vectors, row i at positions[i] (host)
  virtual void rope(const Rope& r, float* x, int n, int n_heads, int head_dim,
                    const int64_t* positions) = 0;
  // gate = act(gate) * up
  virtual void act_mul(FfnActivation act, float* gate, const float* up, int64_t count) = 0;
  // The gated feed-forward's first half: gate = act(W_gate x) * (W_up x) for n rows (up: scratch
  // of the up product), which a device backend does in one kernel; a product and act_mul otherwise.
  virtual void matmul_glu(const float* x, int n, const Matrix& w_gate, const Matrix& w_up, FfnActivation act,
                          float* gate, float* up) {
    const MatJob jobs[2] = {{&w_gate, gate}, {&w_up, up}};
    matmul(x, n, jobs, 2);
    act_mul(act, gate, up, static_cast<int64_t>(n) * w_gate.rows);
  }
  // x += y
  virtual void add(float* x, const float* y, int64_t count) = 0;
  // x += y, then xn = rms_norm(x) * w (rows of `width`): a residual and the next norm, which a
  // device backend does in one kernel; these two operations otherwise.
  virtual void add_rms_norm(float* x, const float* y, const Vector& w, float* xn, int64_t rows, int64_t width,
                            float eps) {
    add(x, y, rows * width);
    rms_norm(x, w, xn, rows, width, eps);
  }

  // Writes rows k[i], v[i] ([n_head_kv][head_dim] each) into `slots[i]` of a layer.
  virtual void write_kv(KvPayload& kv, int layer, const int32_t* slots, int n, const float* k,
                        const float* v) = 0;
  // The attention of every row (independent rows; parallel inside). The rows' host `probs` may
  // be written later, in the backend's own time: they are complete when flush_host() returns.
  virtual void attend(const AttnShape& shape, const AttnRow* rows, int n_rows) = 0;
  // Completes every host write attend() has left pending (a device backend waits for its copies).
  virtual void flush_host() {}
  // The step is over (forward.cpp, also after an error): a device backend issues what it still
  // holds back (a captured graph: the next step may run on another thread, which may not end a
  // capture this one began). The host need not wait.
  virtual void end_step() {}
  // Whether the policy calls of a step's last rows should wait for the end of the step
  // (kv_attention.h): a device backend then reads the probabilities back once per step. The
  // CPU backend calls them at once (no per-layer scratch kept), unless TOVA_DEFER_POLICY_CALLS=1
  // asks it to defer too (the tests compare both orders).
  virtual bool defer_policy_calls() const { return false; }
  // True when attend() can hand back the head mean of the probabilities instead of every head's
  // (AttnRow::probs_mean_only), for policies that read nothing else (TOVA_POLICY_MEAN_ONLY): a
  // device backend then copies n_head times fewer floats back.
  virtual bool reduces_probs() const { return false; }
  // True when attend() can run the built-in tova, h2o and tova_ema itself (AttnRow::rule): a
  // device backend then keeps their state and copies back the slots to evict, not a float per
  // kept slot.
  virtual bool selects_victims() const { return false; }
  // True when a step's sequences may stop taking part between two layers (a request cancelled
  // during a long prompt chunk): the host computes each layer before it moves on. A backend that
  // records the step to issue it later says false, and its steps run to their end.
  virtual bool cancels_mid_step() const { return false; }
  // What the backend counts about its own work, by name (the CUDA backend: graphs launched,
  // instantiated, updated); for tests and benchmark reports.
  virtual std::vector<std::pair<std::string, uint64_t>> counters() const { return {}; }
};

// CUDA devices this build can use: 0 when built without CUDA (TOVA_CUDA=OFF), without a driver
// or without a GPU.
int cuda_device_count();
bool cuda_built();
// True when the CUDA backend runs on the CPU simulator of cuda/sim (a TOVA_CUDA_SIM build for
// tests without a GPU): "cuda" then proves correctness, never speed.
bool cuda_simulated();
// Runs every CUDA kernel on random inputs against its CPU twin (cuda/kernel_check_cuda.cu);
// the mismatches found, empty when all agree. Error without CUDA or without a GPU.
std::vector<std::string> cuda_kernel_check();

// The backend of a kind (backend.cpp): max_rows tokens per step; n_threads 0 = all cores (at
// most 16; the CPU backend's compute threads).
std::unique_ptr<Backend> make_backend(BackendKind kind, const Model& model, int max_rows, int n_threads,
                                      bool float_activations);

}  // namespace tova
