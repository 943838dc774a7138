// The CUDA backend: the Backend interface (cpp/src/backend.h) on device 0. Weights are uploaded
// once as they are in the file (quantized blocks), activations and K/V live in device memory,
// and the forward pass (cpp/src/forward.cpp) is the one every backend runs. Slot bookkeeping and
// the policies stay on the host (cpp/src/kv_store.cpp): each attention call copies the slot
// lists in and, when a policy needs them, the probabilities out. Uploads go through pinned
// staging to its device twin in stream order (one copy a recorded step), and the probabilities
// come back through pinned memory (the victims written there by their kernel): a decode step's
// policy calls come after its last layer (kv_attention.h), so the host waits for the device once
// per step, for the logits, not once per layer. Everything runs on one stream of the backend's own; a decode step
// (few rows) is recorded and launched as one CUDA graph, relaunched as it is while the steps
// stay the same (stream.h, recorder.h).
//
// K/V rows are stored in any KvType, as the CPU stores them (kv_write_cuda.cu), in one or two
// tiers; with positions "cache_index" the keys are rotated by rank on the device before each
// attention (rank_keys).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "backend_cuda.h"

#include "act_quant_cuda.h"
#include "buffers.h"
#include "matvec_cuda.h"
#include "ops_cuda.h"

namespace tova {

namespace {

using cuda::check;
using cuda::DeviceBuffer;

// One sequence's K and V on the device: per layer and tier [n_head_kv][tier's slots] rows of the
// tier's types (KvLayout: the upper tier's slots first, the lower's after them).
class CudaKv : public KvPayload {
 public:
  explicit CudaKv(const KvLayout& layout)
      : layout_(layout), format_(cuda::kv_format(layout)), lo_format_(cuda::kv_format(layout.lo)) {
    for (int l = 0; l < static_cast<int>(layout.n_slots.size()); ++l) {
      for (int tier = 0; tier < 2; ++tier)
        for (bool key : {true, false}) {
          rows_[tier][key].emplace_back(new DeviceBuffer);
          rows_[tier][key].back()->reserve(tier_bytes(key, l, tier), "K/V allocation");
        }
      state_.emplace_back(new DeviceBuffer);
      state_.back()->reserve(state_bytes(l), "K/V allocation");  // set by write_kv
    }
    bytes_ = layout.payload_bytes();
    for (int l = 0; l < static_cast<int>(layout.n_slots.size()); ++l) bytes_ += state_bytes(l);
  }
  uint64_t bytes() const override { return bytes_; }
  const cuda::KvFormat& format() const { return format_; }        // the upper tier's
  const cuda::KvFormat& lo_format() const { return lo_format_; }  // the lower tier's (where it has slots)
  const KvLayout& layout() const { return layout_; }
  void* k(int l, int tier = 0) const { return rows_[tier][1][static_cast<size_t>(l)]->get(); }
  void* v(int l, int tier = 0) const { return rows_[tier][0][static_cast<size_t>(l)]->get(); }
  // The per-slot state of the built-in policy the backend runs (AttnRow::rule), a float a slot.
  float* state(int l) const { return static_cast<float*>(state_[static_cast<size_t>(l)]->get()); }
  size_t state_bytes(int l) const { return static_cast<size_t>(layout_.n_slots[static_cast<size_t>(l)]) * sizeof(float); }
  size_t tier_bytes(bool key, int l, int tier) const {
    const KvTierTypes& t = tier == 0 ? static_cast<const KvTierTypes&>(layout_) : layout_.lo;
    const int rows = tier == 0 ? layout_.n_hi(l) : layout_.n_lo_of(l);
    return static_cast<size_t>(layout_.n_head_kv) * static_cast<size_t>(rows) * (key ? t.k_row_bytes : t.v_row_bytes);
  }

 private:
  KvLayout layout_;
  cuda::KvFormat format_, lo_format_;
  std::vector<std::unique_ptr<DeviceBuffer>> rows_[2][2];  // [tier][key]: per layer
  std::vector<std::unique_ptr<DeviceBuffer>> state_;
  uint64_t bytes_ = 0;
};

class CudaBackend : public Backend {
 public:
  // mat.sm_count is set here where it is negative (the device's multiprocessors); and mat.act:
  // a buffer for 8-bit activations unless float_activations.
  CudaBackend(const Model& model, int max_rows, bool graphs, bool replay, bool select_victims,
              const cuda::MatConfig& mat, int attn_runs, bool float_activations)
      : m_(model), max_rows_(max_rows), select_victims_(select_victims), mat_(mat), attn_runs_(attn_runs),
        device_(use_device_0()), stream_(graphs, replay),
        staging_(&stream_, true), readback_(&stream_) {
    // A pending rotation reads its angles from the staging arena: issued before the arena starts over.
    staging_.on_restart([this] {
      if (rope_.n_targets > 0) flush_rope();
    });
    if (m_.hp().head_dim > 256)
      throw ArgumentError(cat("the CUDA backend handles head_dim up to 256; this model has ", m_.hp().head_dim));
    if (mat_.sm_count < 0)
      check(cudaDeviceGetAttribute(&mat_.sm_count, cudaDevAttrMultiProcessorCount, device_), "cudaDeviceGetAttribute");
    upload_weights();
    size_t widest = 0;  // of the products' inputs
    for (int b = 0; b < static_cast<int>(Buf::kCount); ++b) {
      widest = std::max(widest, buf_width(m_.hp(), static_cast<Buf>(b)));
      const size_t bytes = static_cast<size_t>(max_rows) * buf_width(m_.hp(), static_cast<Buf>(b)) * sizeof(float);
      bufs_[b].reserve(bytes, "activation buffers", &stream_);
      check(cudaMemsetAsync(bufs_[b].get(), 0, bytes, stream_.eager()), "activation buffers");
    }
    // The tails' counters: a product's, and the attention's one a row (cuda::Tail, AttnPost).
    const size_t counters = (1 + static_cast<size_t>(max_rows)) * sizeof(unsigned);
    tail_counter_ = static_cast<unsigned*>(tail_counter_buf_.reserve(counters, "tail counters", &stream_));
    attn_counters_ = tail_counter_ + 1;
    check(cudaMemsetAsync(tail_counter_, 0, counters, stream_.eager()), "tail counters");
    if (!float_activations) {
      mat_.act_bytes = cuda::act_rows_bytes(static_cast<int64_t>(widest), max_rows);
      mat_.act = act_.reserve(mat_.act_bytes, "8-bit activations", &stream_);
      mat_.act_state = &act_state_;
    }
    stream_.sync("activation buffers");
  }

  ~CudaBackend() override {
    stream_.abandon();
    cudaStreamSynchronize(stream_.op().stream);  // no copy may still read staging_ or buffers
  }

  const char* name() const override { return "cuda"; }
  int n_threads() const override { return 1; }
  int max_rows() const override { return max_rows_; }

  std::unique_ptr<KvPayload> new_kv(const KvLayout& layout) override { return std::make_unique<CudaKv>(layout); }

  // Deferred with the K/V writes (before them: a demotion reads the slot a write then fills).
  void demote_kv(KvPayload& payload, int layer, int src, int dst) override {
    if (attn_.on) flush_attend();
    if (prod_.on) flush_product();
    if (norm_.on) flush_norm();
    // (a pending rotation stays so: a demotion moves stored rows, never the step's own)
    auto& kv = static_cast<CudaKv&>(payload);
    pend_stores(kv);
    cuda::KvDemote d;
    d.k_hi = kv.k(layer);
    d.v_hi = kv.v(layer);
    d.k_lo = kv.k(layer, 1);
    d.v_lo = kv.v(layer, 1);
    d.n_hi = kv.layout().n_hi(layer);
    d.n_lo = kv.layout().n_lo_of(layer);
    d.src = src;
    d.dst = dst - d.n_hi;  // the lower tier's own row
    demotes_.push_back(d);
  }
  void copy_kv(KvPayload& dst, const KvPayload& src) override {
    flush_pending();
    auto& d = static_cast<CudaKv&>(dst);
    const auto& s = static_cast<const CudaKv&>(src);
    auto copy = [&](void* to, const void* from, size_t bytes) {
      if (bytes) check(cudaMemcpyAsync(to, from, bytes, cudaMemcpyDeviceToDevice, stream_.eager()), "copy_kv");
    };
    for (int l = 0; l < static_cast<int>(s.layout().n_slots.size()); ++l) {
      for (int tier = 0; tier < 2; ++tier) {
        copy(d.k(l, tier), s.k(l, tier), s.tier_bytes(true, l, tier));
        copy(d.v(l, tier), s.v(l, tier), s.tier_bytes(false, l, tier));
      }
      copy(d.state(l), s.state(l), s.state_bytes(l));
    }
    stream_.sync("copy_kv");
  }

  float* buf(Buf b) override { return static_cast<float*>(bufs_[static_cast<size_t>(b)].get()); }

  void embed(const int32_t* tokens, int n, float scale, float* x) override {
    stream_.begin_step(n <= kGraphRows);  // a step starts with its embedding (forward.cpp)
    const auto* t =
        static_cast<const int32_t*>(staging_.put({{tokens, sizeof(int32_t) * static_cast<size_t>(n)}}, "embed"));
    const Matrix& w = m_.tok_embd;
    cuda::embed(op(), w.type, weight(w), w.row_bytes, w.cols, t, n, scale, x);
  }

  // A norm whose output a product may take in 8 bits waits for it (norm_for_product): the two
  // are then one kernel that also quantizes what it writes. Any other operation launches it first.
  void rms_norm(const float* x, const Vector& w, float* y, int64_t rows, int64_t width, float eps) override {
    norm(const_cast<float*>(x), nullptr, w, y, rows, width, eps);
  }

  void add_rms_norm(float* x, const float* a, const Vector& w, float* y, int64_t rows, int64_t width,
                    float eps) override {
    norm(x, a, w, y, rows, width, eps);
  }

  // Consecutive jobs of one weight type (Q, K and V; gate and up) in one launch, biases added there.
  void matmul(const float* x, int n, const MatJob* jobs, int n_jobs) override {
    if (n_jobs > 0) norm_for_product(x, n, *jobs[0].w);
    for (int j = 0; j < n_jobs;) {
      const GgmlType type = jobs[j].w->type;
      const int64_t cols = jobs[j].w->cols;
      cuda::MatTargets ts;
      for (; j < n_jobs && ts.n < cuda::kMaxTargets && jobs[j].w->type == type && jobs[j].w->cols == cols; ++j)
        add_target(ts, *jobs[j].w, jobs[j].y, jobs[j].bias);
      if (j == n_jobs && defer_product(type, ts, cols, x, n, false, FfnActivation::SiLU)) return;
      cuda::matmul(op(), type, ts, cols, x, n, mat_);
    }
  }

  void matmul_to_host(const Matrix& w, const float* x, int n, float* host_y) override {
    const size_t bytes = static_cast<size_t>(n) * static_cast<size_t>(w.rows) * sizeof(float);
    auto* y = static_cast<float*>(logits_.reserve(bytes, "logits", &stream_));
    norm_for_product(x, n, w);
    cuda::MatTargets ts;
    add_target(ts, w, y, nullptr);
    cuda::matmul(op(), w.type, ts, w.cols, x, n, mat_);
    // host_y is pageable: copied outside the step's graph, after it
    check(cudaMemcpyAsync(host_y, y, bytes, cudaMemcpyDeviceToHost, stream_.eager()), "logits to host");
    stream_.sync("logits to host");
    staging_.reset();  // the stream is idle: every queued upload has run
  }

  // The queries' rotation waits for the keys' (forward.cpp rotates both at the same positions, one
  // after the other): one launch for both; and both wait for the K/V write of those keys, which
  // does them (launch_stores). Any other operation launches it first (op()).
  void rope(const Rope& r, float* x, int n, int n_heads, int head_dim, const int64_t* positions) override {
    if (attn_.on) flush_attend();  // (a pending product stays so: it runs before the rotation whatever comes)
    // Every layer of a step rotates at the same positions: the angles are computed and uploaded
    // once per step and Rope. (First: an upload that starts the arena over issues a pending
    // rotation, which reads its own angles there.)
    Angles& a = angles_[&r];
    const int pairs = r.pairs();
    const bool moved =
        a.positions.size() != static_cast<size_t>(n) || !std::equal(a.positions.begin(), a.positions.end(), positions);
    if (moved) {
      a.positions.assign(positions, positions + n);
      a.table.resize(2 * static_cast<size_t>(n) * pairs);
      float* cs = a.table.data();
      float* sn = cs + static_cast<size_t>(n) * pairs;
      for (int i = 0; i < n; ++i)
        r.angles(positions[i], cs + static_cast<size_t>(i) * pairs, sn + static_cast<size_t>(i) * pairs);
    }
    if (moved || !a.dev || a.generation != staging_.generation() || a.dropped != stream_.dropped()) {
      a.dev = static_cast<const float*>(staging_.put({{a.table.data(), a.table.size() * sizeof(float)}}, "rope"));
      a.generation = staging_.generation();
      a.dropped = stream_.dropped();  // an upload in dropped work never happened
    }
    const float* d = a.dev;
    const bool pairs_up = rope_.n_targets == 1 && rope_.rope == &r && rope_.positions == positions && rope_.n == n &&
                          rope_.head_dim == head_dim && rope_.cs == d;
    if (!pairs_up && rope_.n_targets > 0) flush_rope();
    rope_.targets[rope_.n_targets++] = {x, n_heads};
    if (pairs_up) return;  // both wait: for the K/V write of the keys (launch_stores), or any other operation
    rope_.rope = &r;
    rope_.positions = positions;
    rope_.n = n;
    rope_.head_dim = head_dim;
    rope_.style = r.style();
    rope_.pairs = pairs;
    rope_.cs = d;
    rope_.sn = d + static_cast<size_t>(n) * pairs;
  }

  void act_mul(FfnActivation act, float* gate, const float* up, int64_t count) override {
    cuda::act_mul(op(), act, gate, up, count);
  }

  void matmul_glu(const float* x, int n, const Matrix& w_gate, const Matrix& w_up, FfnActivation act, float* gate,
                  float* up) override {
    if (w_gate.type != w_up.type || w_gate.cols != w_up.cols || w_gate.rows != w_up.rows) {
      Backend::matmul_glu(x, n, w_gate, w_up, act, gate, up);  // two products (two types), then act_mul
      return;
    }
    norm_for_product(x, n, w_gate);
    cuda::MatTargets ts;
    add_target(ts, w_gate, gate, nullptr);
    add_target(ts, w_up, up, nullptr);
    if (defer_product(w_gate.type, ts, w_gate.cols, x, n, true, act)) return;
    cuda::matmul_glu(op(), w_gate.type, ts, act, w_gate.cols, x, n, mat_);
  }

  void add(float* x, const float* y, int64_t count) override { cuda::add(op(), x, y, count); }

  // Deferred to the attention that follows (kv_attention.cpp writes a layer's rows, then attends):
  // every sequence's rows go up with the attention rows in one copy and are stored in one launch,
  // a node count per layer that does not change with the batch or with the slots chosen. Any
  // other operation stores them first (op()).
  void write_kv(KvPayload& payload, int layer, const int32_t* slots, int n, const float* k,
                const float* v) override {
    if (attn_.on) flush_attend();  // (a pending product stays so: launch_stores runs it first)
    if (norm_.on) flush_norm();
    // (a pending rotation stays so: launch_stores has the write do it, or launches it first)
    auto& kv = static_cast<CudaKv&>(payload);
    const KvLayout& lo = kv.layout();
    pend_stores(kv);
    const int64_t width = static_cast<int64_t>(lo.n_head_kv) * lo.head_dim;
    for (int i = 0; i < n; ++i) {
      cuda::KvWrite w;
      w.k = kv.k(layer);
      w.v = kv.v(layer);
      w.state = kv.state(layer);
      w.src_k = k + i * width;
      w.src_v = v + i * width;
      w.n_slots = lo.n_hi(layer);  // a new row enters the upper tier
      w.slot = slots[i];
      writes_.push_back(w);
    }
  }

  void attend(const AttnShape& shape, const AttnRow* rows, int n_rows) override;
  void flush_host() override;
  void end_step() override {
    flush_pending();
    stream_.end_step();
  }
  bool defer_policy_calls() const override { return true; }
  bool reduces_probs() const override { return true; }
  bool selects_victims() const override { return select_victims_; }
  std::vector<std::pair<std::string, uint64_t>> counters() const override {
    const cuda::Stream::Stats& s = stream_.stats();
    return {{"cuda_graphs_enabled", stream_.graphs() ? 1 : 0},
            {"cuda_graphs_launched", s.launched},
            {"cuda_graphs_instantiated", s.instantiated},
            {"cuda_graphs_updated", s.updated},
            {"cuda_graphs_replayed", s.replayed},
            {"cuda_graphs_uncaptured", s.uncaptured},
            {"cuda_graph_nodes", s.nodes},
            {"cuda_victims_selected", victims_selected_},
            {"cuda_norms_quantized", norms_quantized_},
            {"cuda_tails", tails_},
            {"cuda_tails_quantized", tails_quantized_},
            {"cuda_ropes_in_writes", ropes_in_writes_},
            {"cuda_stores_in_products", stores_in_products_},
            {"cuda_policy_bytes_to_host", policy_bytes_}};
  }

 private:
  // The stream for an operation of the step, a pending rotation and K/V rows stored first.
  cuda::Queue op() {
    flush_pending();
    return stream_.op();
  }
  void flush_pending() {
    if (attn_.on) flush_attend();           // deferred first (nothing is deferred with it)
    if (prod_.on) flush_product();          // then (with the norm it takes, if any)
    if (norm_.on) flush_norm();             // (nothing is deferred after it but a rotation)
    if (!writes_.empty() || !demotes_.empty()) flush_writes();  // with the rotation, or after it
    if (rope_.n_targets > 0) flush_rope();
  }
  // Demotions and writes wait together for sequences of one K/V format (every sequence of an
  // engine has the same): those of another are stored first.
  void pend_stores(const CudaKv& kv) {
    const KvLayout& lo = kv.layout();
    if ((!writes_.empty() || !demotes_.empty()) &&
        (kv.format() != writes_format_ || kv.lo_format() != writes_lo_format_ || lo.n_head_kv != writes_heads_ ||
         lo.head_dim != writes_dim_))
      flush_writes();
    writes_format_ = kv.format();
    writes_lo_format_ = kv.lo_format();
    writes_heads_ = lo.n_head_kv;
    writes_dim_ = lo.head_dim;
  }
  // The pending demotions, then the pending writes, from their device copies; a pending rotation
  // done by the writes (rope_for_writes) or launched first.
  void launch_stores(const uint8_t* d_demotes, const uint8_t* d_writes) {
    if (prod_.on) {  // the product of q, k and v (attend left it pending): the writes are its tail
      cuda::WriteRope wr;
      if (demotes_.empty() && !writes_.empty() && take_rope_for_writes(&wr)) {
        const int n = static_cast<int>(writes_.size());
        writes_.clear();
        launch_product(cuda::store_tail(tail_counter_, writes_format_, reinterpret_cast<const cuda::KvWrite*>(d_writes),
                                        n, writes_heads_, writes_dim_, wr));
        ++stores_in_products_;
        return;
      }
      flush_product();
    }
    const cuda::WriteRope rope = rope_for_writes();
    const int n_demotes = static_cast<int>(demotes_.size()), n_writes = static_cast<int>(writes_.size());
    demotes_.clear();
    writes_.clear();
    cuda::demote_kv(stream_.op(), writes_format_, writes_lo_format_, reinterpret_cast<const cuda::KvDemote*>(d_demotes),
                    n_demotes, writes_heads_, writes_dim_);
    cuda::write_kv(stream_.op(), writes_format_, reinterpret_cast<const cuda::KvWrite*>(d_writes), n_writes,
                   writes_heads_, writes_dim_, rope);
  }
  // The pending rotation of queries and keys as the pending K/V writes' (WriteRope): where write i
  // stores the keys of row i of the rotation, every row, and TOVA_CUDA_TAILS is not 0. Else the
  // rotation is launched now (before the writes read the keys).
  cuda::WriteRope rope_for_writes() {
    cuda::WriteRope wr;
    if (!take_rope_for_writes(&wr)) flush_rope();
    return wr;
  }
  // The pending rotation (if any) into *wr where the writes can do it (then no longer pending);
  // false where they cannot (it stays pending).
  bool take_rope_for_writes(cuda::WriteRope* out) {
    cuda::WriteRope& wr = *out;
    if (rope_.n_targets == 0) return true;
    const cuda::RopeTarget& k = rope_.targets[rope_.n_targets - 1];
    const int64_t width = static_cast<int64_t>(k.n_heads) * rope_.head_dim;
    bool fits = mat_.tails && rope_.n_targets == 2 && writes_.size() == static_cast<size_t>(rope_.n) &&
                rope_.head_dim == writes_dim_ && k.n_heads == writes_heads_;
    for (size_t i = 0; fits && i < writes_.size(); ++i) fits = writes_[i].src_k == k.x + static_cast<int64_t>(i) * width;
    if (!fits) return false;
    rope_.n_targets = 0;
    wr.q = rope_.targets[0];
    wr.k = k;
    wr.cs = rope_.cs;
    wr.sn = rope_.sn;
    wr.pairs = rope_.pairs;
    wr.neox = rope_.style == RopeStyle::NeoX ? 1 : 0;
    ++ropes_in_writes_;
    return true;
  }
  void norm(float* x, const float* a, const Vector& w, float* y, int64_t rows, int64_t width, float eps) {
    // The norm of a pending product's output (the residual it is added to, or the product's
    // rows normed in place) is its tail.
    const bool tail = prod_.on && prod_.one_output() && !norm_.on && (a ? a : x) == prod_.ts.t[0].y &&
                      rows == prod_.n && width == prod_.ts.t[0].rows;
    if (!tail) flush_pending();
    norm_ = PendingNorm{true, x, a, w.empty() ? nullptr : vec(w), y, rows, width, eps, tail};
    if (!mat_.act || (mat_.tiled_from > 0 && rows >= mat_.tiled_from)) flush_norm();  // no 8-bit product follows
  }
  cuda::Tail norm_as_tail() const {
    return cuda::norm_tail(tail_counter_, norm_.x, norm_.a, norm_.w, norm_.y, static_cast<int>(norm_.rows),
                           norm_.width, norm_.eps);
  }
  void flush_norm() {
    norm_.on = false;
    if (norm_.tail)
      launch_product(norm_as_tail());
    else if (norm_.a)
      cuda::add_rms_norm(stream_.op(), norm_.x, norm_.a, norm_.w, norm_.y, norm_.rows, norm_.width, norm_.eps);
    else
      cuda::rms_norm(stream_.op(), norm_.x, norm_.w, norm_.y, norm_.rows, norm_.width, norm_.eps);
  }
  // Before a product of x: the 8-bit buffer's content forgotten (x may have changed since), and
  // a pending norm that wrote x launched as the kernel that quantizes it for this product, where
  // the product takes the integer path (else op() launches the plain norm).
  // Whether a product of n input rows with weights w takes its input in 8 bits (matvec_int).
  bool takes_8bit_input(int n, const Matrix& w) const {
    return mat_.act && cuda::matvec_int_supports(w.type) && (mat_.tiled_from == 0 || n < mat_.tiled_from);
  }
  void norm_for_product(const float* x, int n, const Matrix& w) {
    if (attn_.on && quantized_by_attention(x, n, w)) return;
    if (prod_.on && quantized_by_product(x, n, w)) return;
    act_state_ = cuda::ActState{};
    if (!norm_.on || norm_.y != x || norm_.rows != n || norm_.width != w.cols || !takes_8bit_input(n, w)) return;
    norm_.on = false;
    cuda::rms_norm_act(stream_.op(), norm_.x, norm_.a, norm_.w, norm_.y, norm_.rows, norm_.width, norm_.eps,
                       cuda::matvec_int_act(w.type), mat_);
    ++norms_quantized_;
  }
  // Whether this product's input is quantized by the pending product's tail (its norm's output,
  // or its own output): the pending product launched either way.
  bool quantized_by_product(const float* x, int n, const Matrix& w) {
    const bool q8 = takes_8bit_input(n, w);
    cuda::Tail t;
    if (norm_.on) {  // the pending product's (norm() attached it)
      norm_.on = false;
      t = norm_as_tail();
      if (!q8 || norm_.y != x || norm_.rows != n || norm_.width != w.cols) {
        launch_product(t);
        return false;
      }
      cuda::quantize_output(t, cuda::matvec_int_act(w.type), mat_);
      ++norms_quantized_;
    } else {
      if (!q8 || !prod_.one_output() || prod_.ts.t[0].y != x || prod_.n != n || prod_.ts.t[0].rows != w.cols) {
        flush_product();
        return false;
      }
      t = cuda::quant_tail(tail_counter_, x, n, w.cols, cuda::matvec_int_act(w.type), mat_);
    }
    launch_product(t);
    act_state_ = cuda::ActState{x, n, w.cols, cuda::matvec_int_act(w.type)};
    ++tails_quantized_;
    return true;
  }
  // Whether this product's input is the pending attention's output, quantized by the attention's
  // rows' last blocks (AttnPost): the attention launched either way.
  bool quantized_by_attention(const float* x, int n, const Matrix& w) {
    const bool fits = takes_8bit_input(n, w) && attn_.out == x && attn_.n_rows == n && attn_.width == w.cols &&
                      w.cols % cuda::act_block(cuda::matvec_int_act(w.type)) == 0;
    if (fits) {
      const cuda::ActType t = cuda::matvec_int_act(w.type);
      attn_.post.quant_x = x;
      attn_.post.q = cuda::act_rows(t, n, w.cols, mat_.act, mat_.act_bytes);
      attn_.post.quant_block = cuda::act_block(t);
    }
    flush_attend();
    if (!fits) return false;
    act_state_ = cuda::ActState{x, n, w.cols, cuda::matvec_int_act(w.type)};
    ++tails_quantized_;
    return true;
  }
  // The attention and the copies back after it.
  void flush_attend() {
    attn_.on = false;
    const PendingAttend& a = attn_;
    cuda::attend(stream_.op(), a.format, a.lo_format, a.desc, a.n_rows, a.idx, a.shape.n_head, a.shape.n_head_kv,
                 a.shape.head_dim, a.shape.scale, a.max_idx, a.tiered, attn_runs_, a.scratch, a.probs, a.post);
    if (a.mean_back_bytes > 0)
      cuda::copy_async(stream_.op(), a.host + a.n_full, a.post.means, a.mean_back_bytes, cudaMemcpyDeviceToHost,
                       "probabilities");
    if (a.n_full > 0)
      cuda::copy_async(stream_.op(), a.host, a.probs, static_cast<size_t>(a.n_full) * sizeof(float),
                       cudaMemcpyDeviceToHost, "probabilities");
  }
  // A decode step's product (a target, or glu's two) waits for what follows (prod_); false: launch it now.
  bool defer_product(GgmlType type, const cuda::MatTargets& ts, int64_t cols, const float* x, int n, bool glu,
                     FfnActivation act) {
    if (!mat_.tails || n > cuda::kTailRows || (mat_.tiled_from > 0 && n >= mat_.tiled_from)) return false;
    flush_pending();  // nothing launched after the product may wait with it
    prod_ = PendingProduct{true, glu, type, ts, act, cols, x, n};
    return true;
  }
  void flush_product() {
    if (norm_.on && norm_.tail)
      flush_norm();  // the product with its norm
    else
      launch_product(cuda::Tail{});
  }
  void launch_product(const cuda::Tail& tail) {
    prod_.on = false;
    if (tail.kind != cuda::Tail::None) ++tails_;
    if (prod_.glu)
      cuda::matmul_glu(stream_.op(), prod_.type, prod_.ts, prod_.act, prod_.cols, prod_.x, prod_.n, mat_, tail);
    else
      cuda::matmul(stream_.op(), prod_.type, prod_.ts, prod_.cols, prod_.x, prod_.n, mat_, tail);
  }
  void flush_rope() {
    if (prod_.on) flush_product();  // the rotation reads what the product writes
    const int n = rope_.n_targets;
    rope_.n_targets = 0;
    cuda::rope(stream_.op(), rope_.style, rope_.targets, n, rope_.n, rope_.head_dim, rope_.pairs, rope_.cs, rope_.sn);
  }
  void flush_writes() {
    static_assert(sizeof(cuda::KvDemote) % alignof(cuda::KvWrite) == 0 && sizeof(cuda::KvWrite) % alignof(cuda::KvWrite) == 0,
                  "rows of demotions and writes stay aligned");
    const size_t demote_bytes = demotes_.size() * sizeof(cuda::KvDemote);
    const auto* d = static_cast<const uint8_t*>(staging_.put(
        {{demotes_.data(), demote_bytes}, {writes_.data(), writes_.size() * sizeof(cuda::KvWrite)}}, "write_kv"));
    launch_stores(d, d + demote_bytes);
  }
  void add_target(cuda::MatTargets& ts, const Matrix& w, float* y, const Vector* bias) const {
    cuda::MatTarget& t = ts.t[ts.n++];
    t.w = weight(w);
    t.row_bytes = w.row_bytes;
    t.rows = w.rows;
    t.y = y;
    t.bias = bias && !bias->empty() ? vec(*bias) : nullptr;
    ts.max_rows = std::max(ts.max_rows, w.rows);
  }
  // The cos and sin tables of ranks [0, n) (n >= need, grown geometrically) of a Rope on the
  // device, [n][pairs] each; for positions "cache_index".
  std::pair<const float*, const float*> rank_angles(const Rope& r, int need) {
    RankAngles& a = rank_angles_[&r];  // one per Rope: models with sliding layers alternate two
    if (a.n < need) {
      const int n = std::max(need, 2 * a.n);
      const size_t pairs = static_cast<size_t>(r.pairs());
      a.table.resize(2 * static_cast<size_t>(n) * pairs);
      for (int k = 0; k < n; ++k)
        r.angles(k, a.table.data() + k * pairs, a.table.data() + (static_cast<size_t>(n) + k) * pairs);
      a.n = n;
    }
    const auto* cs = static_cast<const float*>(
        a.dev.upload_if_changed(a.table.data(), a.table.size() * sizeof(float), staging_, "rope ranks"));
    return {cs, cs + static_cast<size_t>(a.n) * static_cast<size_t>(r.pairs())};
  }
  void upload_weights();
  const uint8_t* weight(const Matrix& w) const {
    auto it = weights_.find(w.data);
    if (it == weights_.end()) throw Error(cat("CUDA backend: matrix '", w.name, "' was not uploaded"));
    return static_cast<const uint8_t*>(it->second->get());
  }
  const float* vec(const Vector& v) const {
    auto it = vectors_.find(v.data());
    if (it == vectors_.end()) throw Error("CUDA backend: a weight vector was not uploaded");
    return static_cast<const float*>(it->second->get());
  }

  // Steps of at most this many rows (decode steps, a batch of sequences' next tokens) are
  // recorded as CUDA graphs; prefill chunks are issued directly.
  static constexpr int kGraphRows = 256;
  // The steps in which an attention call's bound on slots and its upload grow (attend).
  static constexpr int kSlotStep = 64;

  // Device 0 made current, or a clear error where there is none (before any member touches CUDA).
  static int use_device_0() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      cudaGetLastError();  // not sticky: a later engine may still ask
      throw Error(cat("device 'cuda': no usable CUDA device (", e != cudaSuccess ? cudaGetErrorString(e) : "none found",
                      ")"));
    }
    check(cudaSetDevice(0), "cudaSetDevice");
    return 0;
  }

  const Model& m_;
  int max_rows_;
  bool select_victims_;  // the built-in tova, h2o and tova_ema run here (AttnRow::rule)
  cuda::MatConfig mat_;  // how the matrix products are launched (the tiled kernel's threshold, the device's size)
  int attn_runs_;        // the most runs a row's slots are split into for the attention (cuda::attend)
  uint64_t victims_selected_ = 0;
  uint64_t policy_bytes_ = 0;  // probabilities, head means and victims copied back
  int device_;
  cuda::Stream stream_;  // first: destroyed after every buffer and staging arena
  std::unordered_map<const uint8_t*, std::unique_ptr<DeviceBuffer>> weights_;
  std::unordered_map<const float*, std::unique_ptr<DeviceBuffer>> vectors_;
  DeviceBuffer bufs_[static_cast<size_t>(Buf::kCount)];
  cuda::Staging staging_;  // pinned bytes of the step's uploads, and their device twin
  DeviceBuffer logits_;
  DeviceBuffer act_;  // the products' input in 8 bits (mat_.act)
  cuda::ActState act_state_;  // what act_ holds (mat_.act_state)
  struct PendingNorm {        // a norm not launched yet (rms_norm, add_rms_norm)
    bool on = false;
    float* x = nullptr;
    const float* a = nullptr;  // null: no residual added
    const float* w = nullptr;
    float* y = nullptr;
    int64_t rows = 0, width = 0;
    float eps = 0.0f;
    bool tail = false;  // of the pending product (prod_), whose output it takes
  } norm_;
  struct PendingAttend {  // an attention not launched yet (attend, flush_attend)
    bool on = false;
    cuda::KvFormat format, lo_format;
    const cuda::AttnDesc* desc = nullptr;
    int n_rows = 0;
    const int32_t* idx = nullptr;
    AttnShape shape;
    int max_idx = 0;
    bool tiered = false;
    float* scratch = nullptr;
    float* probs = nullptr;
    cuda::AttnPost post;
    const float* out = nullptr;  // row i's output at out + i * width; null: not so (no quantization)
    int64_t width = 0;
    float* host = nullptr;       // the probabilities (n_full floats), then the head means coming back
    int64_t n_full = 0;
    size_t mean_back_bytes = 0;
  } attn_;
  struct PendingProduct {  // a decode step's product not launched yet (defer_product)
    bool on = false;
    bool glu = false;  // matmul_glu (targets gate, up), else matmul (one target)
    GgmlType type = GgmlType::F32;
    cuda::MatTargets ts;
    FfnActivation act = FfnActivation::SiLU;
    int64_t cols = 0;
    const float* x = nullptr;
    int n = 0;
    bool one_output() const { return glu || ts.n == 1; }  // else q, k and v: the K/V write is its tail
  } prod_;
  DeviceBuffer tail_counter_buf_;
  unsigned* tail_counter_ = nullptr;  // the blocks of a kernel with a tail that have finished
  unsigned* attn_counters_ = nullptr;  // and of the attention, a row at a time (max_rows_ of them)
  uint64_t tails_ = 0, tails_quantized_ = 0, ropes_in_writes_ = 0, stores_in_products_ = 0;
  uint64_t norms_quantized_ = 0;
  std::vector<cuda::KvWrite> writes_;     // K/V rows not stored yet (write_kv)
  std::vector<cuda::KvDemote> demotes_;  // slots not moved down yet (demote_kv)
  cuda::KvFormat writes_format_, writes_lo_format_;
  int writes_heads_ = 0, writes_dim_ = 0;
  struct Angles {  // a Rope's cos / sin table at the positions last asked, and its device copy
    std::vector<int64_t> positions;
    std::vector<float> table;
    const float* dev = nullptr;  // in staging_'s twin, while its generation is the one here
    uint64_t generation = 0, dropped = 0;
  };
  std::unordered_map<const Rope*, Angles> angles_;
  struct PendingRope {  // a rotation not launched yet (rope)
    int n_targets = 0;
    cuda::RopeTarget targets[2];
    const Rope* rope = nullptr;
    const int64_t* positions = nullptr;
    int n = 0, head_dim = 0, pairs = 0;
    RopeStyle style = RopeStyle::Normal;
    const float* cs = nullptr;
    const float* sn = nullptr;
  } rope_;
  DeviceBuffer attn_scratch_, attn_probs_, attn_means_, attn_ranked_;
  struct RankAngles {  // rank_angles()
    int n = 0;
    std::vector<float> table;
    DeviceBuffer dev;
  };
  std::unordered_map<const Rope*, RankAngles> rank_angles_;
  std::vector<cuda::AttnDesc> descs_;
  std::vector<int64_t> ranked_at_;  // per row: its keys rotated by rank in attn_ranked_ (floats), or -1
  std::vector<int32_t> idx_;
  // Probabilities on their way back: copied into readback_ in stream order, scattered to the
  // policies' [n_head][n_slots] arrays by flush_host().
  struct PendingProbs {
    const float* src = nullptr;  // pinned, [n_head][n_idx]
    float* dst = nullptr;        // the AttnRow's probs
    int n_slots = 0, n_idx = 0, n_head = 0;  // n_head 1: the head mean (AttnRow::probs_mean_only)
    size_t idx_off = 0;          // the row's slots in pending_idx_
    const int32_t* victims_src = nullptr;  // or the victims selected (pinned), n_idx of them
    int32_t* victims_dst = nullptr;        // for the AttnRow's victims
  };
  cuda::Staging readback_;
  std::vector<PendingProbs> pending_;
  std::vector<int32_t> pending_idx_;
};

void CudaBackend::upload_weights() {
  auto matrix = [&](const Matrix& w) {
    if (!w.present() || weights_.count(w.data)) return;  // a tied output is the embedding itself
    if (!cuda::matmul_supports(w.type))
      throw ArgumentError(cat("the CUDA backend has no kernel for tensor '", w.name, "' of type ",
                              type_traits(w.type).name));
    auto buf = std::make_unique<DeviceBuffer>();
    buf->upload_now(w.data, w.row_bytes * static_cast<size_t>(w.rows), "weight upload", &stream_);
    weights_.emplace(w.data, std::move(buf));
  };
  auto vector = [&](const Vector& v) {
    if (v.empty() || vectors_.count(v.data())) return;
    auto buf = std::make_unique<DeviceBuffer>();
    buf->upload_now(v.data(), v.size() * sizeof(float), "weight upload", &stream_);
    vectors_.emplace(v.data(), std::move(buf));
  };
  matrix(m_.tok_embd);
  matrix(m_.output);
  vector(m_.output_norm);
  for (const LayerWeights& L : m_.layers) {
    for (const Matrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) matrix(*w);
    for (const Vector* v : {&L.attn_norm, &L.attn_post_norm, &L.ffn_norm, &L.ffn_post_norm, &L.q_norm, &L.k_norm,
                            &L.bq, &L.bk, &L.bv, &L.bo})
      vector(*v);
  }
}

void CudaBackend::attend(const AttnShape& shape, const AttnRow* rows, int n_rows) {
  if (attn_.on) flush_attend();
  // A pending product (q, k and v) stays so when the K/V writes can be its tail (launch_stores).
  if (prod_.on && !(mat_.tails && !norm_.on && demotes_.empty() && !writes_.empty())) flush_product();
  if (norm_.on) flush_norm();
  // (a pending rotation: launch_stores, below, has it done before the attention reads q and k)
  descs_.clear();
  idx_.clear();
  ranked_at_.clear();
  int max_idx = 1;
  bool tiered = false;  // some row's layer has a lower KV tier
  // Probabilities on the device: rows copied back whole first ([0, n_full)), then the others
  // (below).
  int64_t n_full = 0, n_probs = 0, n_mean = 0, n_mean_back = 0;
  cuda::KvFormat format, lo_format;
  const Rope* rank_rope = nullptr;  // positions "cache_index": the rows' Rope (one layer: one Rope)
  int64_t n_ranked = 0;             // floats of keys rotated by rank
  for (int i = 0; i < n_rows; ++i) {
    const AttnRow& r = rows[i];
    if (r.rank_rope && rank_rope && r.rank_rope != rank_rope)
      throw Error("CUDA backend: attention rows of different RoPEs in one call");
    if (r.rank_rope) rank_rope = r.rank_rope;
    const auto& kv = static_cast<const CudaKv&>(*r.kv);
    if (r.rank_rope && kv.layout().n_lo_of(r.layer) > 0)  // EngineParams refuses the pair; rank_keys reads one tier
      throw Error("CUDA backend: positions 'cache_index' with two KV tiers");
    if (i > 0 && (kv.format() != format || kv.lo_format() != lo_format))
      throw Error("CUDA backend: attention rows of different KV types in one call");
    format = kv.format();
    lo_format = kv.lo_format();
    cuda::AttnDesc d;
    d.k = kv.k(r.layer);
    d.v = kv.v(r.layer);
    d.k_lo = kv.k(r.layer, 1);
    d.v_lo = kv.v(r.layer, 1);
    d.n_slots = kv.layout().n_slots[static_cast<size_t>(r.layer)];
    d.n_hi = kv.layout().n_hi(r.layer);
    d.n_idx = r.n_idx;
    d.idx_off = static_cast<int64_t>(idx_.size());
    d.q = r.q;
    d.out = r.out;
    if (r.probs && !r.probs_mean_only) {
      d.probs_off = n_full;
      n_full += static_cast<int64_t>(shape.n_head) * r.n_idx;
    }
    ranked_at_.push_back(r.rank_rope ? n_ranked : -1);  // where its keys rotated by rank go (below)
    if (r.rank_rope) n_ranked += static_cast<int64_t>(shape.n_head_kv) * r.n_idx * shape.head_dim;
    idx_.insert(idx_.end(), r.idx, r.idx + r.n_idx);
    descs_.push_back(d);
    max_idx = std::max(max_idx, r.n_idx);
    tiered = tiered || d.n_hi < d.n_slots;
  }
  const float* rank_cs = nullptr;
  const float* rank_sn = nullptr;
  if (rank_rope) {
    auto* ranked = static_cast<float*>(
        attn_ranked_.reserve(static_cast<size_t>(n_ranked) * sizeof(float), "keys rotated by rank", &stream_));
    std::tie(rank_cs, rank_sn) = rank_angles(*rank_rope, max_idx);
    const int pairs = rank_rope->pairs();
    for (int i = 0; i < n_rows; ++i) {
      cuda::AttnDesc& d = descs_[static_cast<size_t>(i)];
      if (ranked_at_[static_cast<size_t>(i)] < 0) continue;
      d.ranked = ranked + ranked_at_[static_cast<size_t>(i)];
      d.q_cs = rank_cs + static_cast<size_t>(d.n_idx - 1) * pairs;
      d.q_sn = rank_sn + static_cast<size_t>(d.n_idx - 1) * pairs;
      d.rope_pairs = pairs;
      d.rope_neox = rank_rope->style() == RopeStyle::NeoX;
    }
  }
  // Then the rows whose head mean goes back, then those whose victims alone go back (their
  // means stay on the device, after the others'; their candidates' positions follow the slots).
  n_probs = n_full;
  int64_t n_victims = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < n_rows; ++i) {
      const AttnRow& r = rows[i];
      const bool select = r.rule != BuiltinRule::None;
      if (pass == 0 ? !(r.probs && r.probs_mean_only) : !select) continue;
      cuda::AttnDesc& d = descs_[static_cast<size_t>(i)];
      d.probs_off = n_probs;
      n_probs += static_cast<int64_t>(shape.n_head) * r.n_idx;
      d.mean_off = n_mean;
      n_mean += r.n_idx;
      if (!select) continue;
      const auto& kv = static_cast<const CudaKv&>(*r.kv);
      d.rule = r.rule;
      d.state = kv.state(r.layer);
      d.new_slot = r.new_slot;
      d.new_tail = r.new_tail;
      if (r.n_evict <= 0) continue;
      d.sel_off = static_cast<int64_t>(idx_.size());
      idx_.insert(idx_.end(), r.evict_pos, r.evict_pos + r.n_idx);
      d.n_evict = r.n_evict;
      d.victims_off = n_victims;
      n_victims += r.n_evict;
    }
    if (pass == 0) n_mean_back = n_mean;
  }
  victims_selected_ += static_cast<uint64_t>(n_victims);
  // A cache that grows (filling up, or policy "full") changes a row's slot count every step; the
  // launch (the bound max_idx) and the size of the upload below follow it in steps of
  // kSlotStep slots (the attention's runs are 64 slots: the launch shape is the same), so that
  // the steps in between record the same operations and relaunch their graph (recorder.h).
  max_idx = (max_idx + kSlotStep - 1) / kSlotStep * kSlotStep;
  idx_.resize((idx_.size() + kSlotStep - 1) / kSlotStep * kSlotStep, 0);  // never read
  if (descs_.empty()) {
    flush_pending();
    return;
  }
  // What comes back goes into pinned memory: the probabilities and head means by copies in stream
  // order (the device buffers are rewritten by the next layer's call, after these copies), the
  // victims written there by the kernel that selects them (pinned memory is the device's to
  // address under unified addressing): no copy a layer on the path of a decode step.
  // flush_host() waits once and scatters them. Taken before this call's uploads: making room
  // waits for the stream, which then forgets what was staged.
  static_assert(sizeof(float) == sizeof(int32_t), "the victims follow the floats in the readback");
  const size_t bytes = static_cast<size_t>(n_full + n_mean_back + n_victims) * sizeof(float);
  float* host = nullptr;
  if (n_probs > 0) {
    if (!pending_.empty() && !readback_.fits(bytes)) {
      // Full mid-step: wait this once, and make room for a whole step of them next time.
      const size_t need = readback_.used() + bytes;
      flush_host();
      readback_.grow(2 * need, "probabilities");
    }
    host = static_cast<float*>(readback_.take(bytes, "probabilities"));
    policy_bytes_ += bytes;
  }
  auto* host_victims = reinterpret_cast<int32_t*>(host + n_full + n_mean_back);
  // The demotions and K/V rows to store, the attention rows and their slot lists in one copy;
  // the slots moved and the rows stored (two launches) before the attention reads them.
  static_assert(sizeof(cuda::KvDemote) % alignof(cuda::KvWrite) == 0 &&
                    sizeof(cuda::KvWrite) % alignof(cuda::AttnDesc) == 0 &&
                    sizeof(cuda::AttnDesc) % alignof(int32_t) == 0,
                "each part of the copy stays aligned");
  const size_t demote_bytes = demotes_.size() * sizeof(cuda::KvDemote);
  const size_t write_bytes = writes_.size() * sizeof(cuda::KvWrite);
  const size_t desc_bytes = descs_.size() * sizeof(cuda::AttnDesc);
  const auto* d_rows = static_cast<const uint8_t*>(staging_.put({{demotes_.data(), demote_bytes},
                                                                {writes_.data(), write_bytes},
                                                                {descs_.data(), desc_bytes},
                                                                {idx_.data(), idx_.size() * sizeof(int32_t)}},
                                                               "attention rows"));
  const uint8_t* d_writes = d_rows + demote_bytes;
  const auto* d_desc = reinterpret_cast<const cuda::AttnDesc*>(d_writes + write_bytes);
  const auto* d_idx = reinterpret_cast<const int32_t*>(d_writes + write_bytes + desc_bytes);
  launch_stores(d_rows, d_writes);
  if (rank_rope)
    cuda::rank_keys(op(), format, d_desc, n_rows, d_idx, shape.n_head_kv, shape.head_dim, rank_cs, rank_sn);
  auto* scratch = static_cast<float*>(attn_scratch_.reserve(
      cuda::attend_scratch_floats(n_rows, shape.n_head, shape.head_dim, max_idx, tiered, attn_runs_) * sizeof(float),
      "attention scratch", &stream_));
  auto* probs = static_cast<float*>(attn_probs_.reserve(static_cast<size_t>(std::max<int64_t>(n_probs, 1)) *
                                                            sizeof(float), "attention probabilities", &stream_));
  // The runs combined, the head means and the policies' steps in the attention's kernel (the
  // rows' last blocks), unless TOVA_CUDA_TAILS=0.
  cuda::AttnPost post;
  post.counters = mat_.tails ? attn_counters_ : nullptr;
  float* means = nullptr;
  if (n_mean > 0) {
    means = static_cast<float*>(
        attn_means_.reserve(static_cast<size_t>(n_mean) * sizeof(float), "attention means", &stream_));
    post.means = means;
    post.victims = n_victims > 0 ? host_victims : nullptr;
  }
  // Launched when the next operation comes (flush_attend): a product of the rows' outputs (all
  // rows one after another in one buffer) then has them quantized by the attention's kernel.
  flush_pending();
  attn_ = PendingAttend{true, format, lo_format, d_desc, n_rows, d_idx, shape, max_idx, tiered, scratch, probs, post,
                        nullptr, static_cast<int64_t>(shape.n_head) * shape.head_dim, host, n_full,
                        static_cast<size_t>(n_mean_back) * sizeof(float)};
  if (mat_.tails) {
    attn_.out = descs_[0].out;
    for (int i = 1; i < n_rows && attn_.out; ++i)
      if (descs_[static_cast<size_t>(i)].out != attn_.out + i * attn_.width) attn_.out = nullptr;
  }
  if (n_probs == 0) return;
  for (int i = 0; i < n_rows; ++i) {
    const AttnRow& r = rows[i];
    const cuda::AttnDesc& d = descs_[static_cast<size_t>(i)];
    if (d.n_evict > 0) {
      PendingProbs p;
      p.victims_src = host_victims + d.victims_off;
      p.victims_dst = r.victims;
      p.n_idx = d.n_evict;
      pending_.push_back(p);
      continue;
    }
    if (!r.probs) continue;
    PendingProbs p;
    p.src = r.probs_mean_only ? host + n_full + d.mean_off : host + d.probs_off;
    p.dst = r.probs;
    p.n_slots = r.n_slots;
    p.n_idx = r.n_idx;
    p.n_head = r.probs_mean_only ? 1 : shape.n_head;
    p.idx_off = pending_idx_.size();
    pending_idx_.insert(pending_idx_.end(), r.idx, r.idx + r.n_idx);
    pending_.push_back(p);
  }
}

void CudaBackend::flush_host() {
  flush_pending();  // (an error path's call: rows before a failed attention)
  if (pending_.empty()) {
    stream_.submit();  // an error path's call: what the step recorded still runs, as it would uncaptured
    return;
  }
  try {
    stream_.sync("probabilities to host");
  } catch (...) {  // nothing arrived: forget it (the step fails)
    pending_.clear();
    pending_idx_.clear();
    throw;
  }
  // Scatter each head's probabilities (or their mean) to the slots they belong to (the CPU
  // backend's layout).
  for (const PendingProbs& p : pending_) {
    if (p.victims_dst) {
      std::copy(p.victims_src, p.victims_src + p.n_idx, p.victims_dst);
      continue;
    }
    const int32_t* idx = pending_idx_.data() + p.idx_off;
    for (int h = 0; h < p.n_head; ++h) {
      float* row = p.dst + static_cast<size_t>(h) * p.n_slots;
      const float* src = p.src + static_cast<size_t>(h) * p.n_idx;
      for (int j = 0; j < p.n_idx; ++j) row[idx[j]] = src[j];
    }
  }
  pending_.clear();
  pending_idx_.clear();
  readback_.reset();
  staging_.reset();  // the stream is idle: every queued upload has run
}

}  // namespace

int cuda_devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a missing driver
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(const Model& model, int max_rows, bool float_activations) {
  auto off = [](const char* name) {
    const char* v = std::getenv(name);
    return v && std::strcmp(v, "0") == 0;
  };
  auto number = [](const char* name, long lo, long hi, long fallback, const char* what) {
    const char* v = std::getenv(name);
    if (!v) return fallback;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (end == v || *end != '\0' || n < lo || n > hi)
      throw ArgumentError(cat(name, "='", v, "': ", what, " from ", lo, " to ", hi));
    return n;
  };
  // TOVA_CUDA_GRAPHS=0: every operation issued directly; TOVA_CUDA_REPLAY=0: every recorded step
  // captured, none relaunched as it is (stream.h); TOVA_CUDA_VICTIMS=0: the head mean goes
  // back to the host's policy instead of the victims the device selected (tests compare the two).
  // The launch shapes, for comparing them on a device (bench/cuda_check.sh):
  // TOVA_CUDA_TILED_FROM=N: the tiled matrix product from N input rows on (default 32; 0: never);
  // TOVA_CUDA_ROW_SPLIT=0: every row of a matrix-vector product taken by one warp; =N: rows
  // split among warps as for a device of N multiprocessors (default: this device's count);
  // TOVA_CUDA_ATTN_RUNS=N: a row's slots attended in at most N runs (default and most:
  // cuda::kAttnMaxRuns; 1: one block per row and K/V head); TOVA_CUDA_TAILS=0: the norm or
  // quantizer after a decode product launched as a kernel of its own (cuda::Tail).
  cuda::MatConfig mat;
  mat.tiled_from = static_cast<int>(number("TOVA_CUDA_TILED_FROM", 0, 1 << 20, 32, "a number of rows (0: never)"));
  mat.sm_count = static_cast<int>(number("TOVA_CUDA_ROW_SPLIT", 0, 1 << 20, -1, "0 (off) or a multiprocessor count"));
  mat.tails = !off("TOVA_CUDA_TAILS");
  const int runs = static_cast<int>(number("TOVA_CUDA_ATTN_RUNS", 1, cuda::kAttnMaxRuns, cuda::kAttnMaxRuns, "runs"));
  return std::make_unique<CudaBackend>(model, max_rows, !off("TOVA_CUDA_GRAPHS"), !off("TOVA_CUDA_REPLAY"),
                                       !off("TOVA_CUDA_VICTIMS"), mat, runs, float_activations);
}

}  // namespace tova
