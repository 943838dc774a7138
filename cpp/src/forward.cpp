#include "forward.h"

#include <cmath>
#include <cstring>

#include "common.h"

namespace tova {

namespace {

// Sliding-window layers rotate with their own base and no context-extension scaling: the
// scaling (Gemma 3 4B+: linear, factor 8) belongs to the global layers only (Hugging Face
// Gemma3 applies rope_scaling to the global rotary embedding alone; llama.cpp fixes the
// sliding layers' frequency scale at 1).
HParams unscaled_rope(const HParams& hp) {
  HParams h = hp;
  h.rope_scaling = RopeScaling::None;
  h.rope_scale_factor = 1.0f;
  return h;
}

}  // namespace

Forward::Forward(const Model& model, Backend& backend, const LayerPolicies& policies)
    : m_(model),
      be_(backend),
      lp_(policies),
      rope_(model.hp(), model.hp().rope_base, model.rope_freqs),
      rope_swa_(unscaled_rope(model.hp()), model.hp().rope_base_swa) {
  cancel_.enabled = backend.cancels_mid_step();
}

void Forward::run(std::vector<SeqBatch>& batch) {
  try {
    step(batch);
  } catch (...) {
    // Host writes the backend still owes (kv_attention.h) target this step's scratch, valid now
    // and perhaps not after the next step's first layer: complete them before leaving.
    try {
      be_.flush_host();
      be_.end_step();
    } catch (...) {
    }
    throw;
  }
  be_.end_step();
}

void Forward::step(std::vector<SeqBatch>& batch) {
  const HParams& h = m_.hp();
  const int64_t E = h.n_embd, D = h.head_dim;
  tokens_.clear();
  positions_.clear();
  rows_.clear();
  for (SeqBatch& b : batch) {
    TOVA_ASSERT(b.n >= 1);
    SeqRows r;
    r.store = b.store;
    r.seq = b.seq;
    r.row0 = static_cast<int>(tokens_.size());
    r.n = b.n;
    r.t0 = b.t0;
    r.protect_below = b.protect_below;
    r.cancel = b.cancel;
    rows_.push_back(r);
    for (int i = 0; i < b.n; ++i) {
      const int32_t tok = b.tokens[i];
      if (tok < 0 || tok >= h.n_vocab)
        throw ArgumentError(cat("token id ", tok, " is out of range [0, ", h.n_vocab, ")"));
      tokens_.push_back(tok);
      positions_.push_back(b.t0 + i);
    }
  }
  const int n = static_cast<int>(tokens_.size());
  TOVA_ASSERT(n >= 1 && n <= be_.max_rows());
  float* x = be_.buf(Buf::X);
  float* xn = be_.buf(Buf::XN);
  float* q = be_.buf(Buf::Q);
  float* k = be_.buf(Buf::K);
  float* v = be_.buf(Buf::V);
  float* att = be_.buf(Buf::ATT);
  float* o = be_.buf(Buf::O);
  float* gate = be_.buf(Buf::GATE);
  float* up = be_.buf(Buf::UP);

  be_.embed(tokens_.data(), n, h.embed_scale ? std::sqrt(static_cast<float>(E)) : 1.0f, x);
  AttnShape shape;
  shape.n_head = h.n_head;
  shape.n_head_kv = h.n_head_kv;
  shape.head_dim = static_cast<int>(D);
  shape.scale = h.attn_scale > 0 ? h.attn_scale : 1.0f / std::sqrt(static_cast<float>(D));

  attention_.begin_step();
  be_.rms_norm(x, m_.layers[0].attn_norm, xn, n, E, h.rms_eps);
  for (int l = 0; l < h.n_layer; ++l) {
    // Every sequence cancelled (a long prompt chunk's request): the rest of the step is nobody's.
    if (l > 0 && cancel_.check(rows_)) break;
    const LayerWeights& w = m_.layers[static_cast<size_t>(l)];
    const bool swa = h.is_swa_layer(l);
    const Rope& rope = swa ? rope_swa_ : rope_;
    const Backend::MatJob qkv[3] = {{&w.wq, q, &w.bq}, {&w.wk, k, &w.bk}, {&w.wv, v, &w.bv}};
    be_.matmul(xn, n, qkv, 3);
    if (h.qk_norm) {
      be_.rms_norm(q, w.q_norm, q, static_cast<int64_t>(n) * h.n_head, D, h.rms_eps);
      be_.rms_norm(k, w.k_norm, k, static_cast<int64_t>(n) * h.n_head_kv, D, h.rms_eps);
    }
    if (!lp_.cache_index) {
      be_.rope(rope, q, n, h.n_head, static_cast<int>(D), positions_.data());
      be_.rope(rope, k, n, h.n_head_kv, static_cast<int>(D), positions_.data());
    }
    LayerRule rule;
    rule.layer = l;
    rule.policy = lp_.policy[static_cast<size_t>(l)];
    rule.never_evicts = lp_.never_evicts && !swa;
    // Chunked prefill approximates the policy's choices, but a sliding-window layer's window is
    // the model itself: a chunk's rows must not see keys n_swa or more behind them, so those
    // layers always walk row by row once their window is full.
    rule.chunked = lp_.chunked && !swa;
    rule.rank_rope = lp_.cache_index ? &rope : nullptr;
    attention_.run(be_, shape, rule, rows_, q, k, v, att, &cancel_);

    const Backend::MatJob wo[1] = {{&w.wo, o, &w.bo}};
    be_.matmul(att, n, wo, 1);
    if (h.post_norms) be_.rms_norm(o, w.attn_post_norm, o, n, E, h.rms_eps);
    be_.add_rms_norm(x, o, w.ffn_norm, xn, n, E, h.rms_eps);
    be_.matmul_glu(xn, n, w.w_gate, w.w_up, h.ffn_act, gate, up);
    const Backend::MatJob down[1] = {{&w.w_down, o}};
    be_.matmul(gate, n, down, 1);
    if (h.post_norms) be_.rms_norm(o, w.ffn_post_norm, o, n, E, h.rms_eps);
    if (l + 1 < h.n_layer)  // the residual, and the next layer's input norm
      be_.add_rms_norm(x, o, m_.layers[static_cast<size_t>(l) + 1].attn_norm, xn, n, E, h.rms_eps);
    else
      be_.add(x, o, n * E);
  }
  for (size_t i = 0; i < batch.size(); ++i) batch[i].error = rows_[i].error;
  logits(batch);
  // The policies' calls of the step's last rows (kv_attention.h): after the logits, whose copy
  // back is where a device backend waits anyway. A sequence failing here has logits written that
  // its error tells the caller to ignore.
  attention_.finish_step(be_, shape, rows_);
  for (size_t i = 0; i < batch.size(); ++i) batch[i].error = rows_[i].error;
}

// Output norm and projection for the rows whose logits are wanted: the last rows of several
// sequences in one product, all rows of a sequence straight into its buffer.
void Forward::logits(std::vector<SeqBatch>& batch) {
  const HParams& h = m_.hp();
  const int64_t E = h.n_embd;
  const size_t V = static_cast<size_t>(h.n_vocab);
  float* x = be_.buf(Buf::X);
  float* xn = be_.buf(Buf::XN);
  // The last row of each sequence normed into xn[k]: consecutive rows (a batch of decode steps)
  // in one call.
  int k = 0, run_row = 0, run_k = 0, run_n = 0;
  auto norm_run = [&] {
    if (run_n > 0) be_.rms_norm(x + run_row * E, m_.output_norm, xn + run_k * E, run_n, E, h.rms_eps);
  };
  for (size_t i = 0; i < batch.size(); ++i) {
    const SeqBatch& b = batch[i];
    if (!b.logits || b.all_logits || b.error) continue;
    const int row = rows_[i].row0 + b.n - 1;
    if (run_n > 0 && row == run_row + run_n) {
      ++run_n;
    } else {
      norm_run();
      run_row = row;
      run_k = k;
      run_n = 1;
    }
    ++k;
  }
  norm_run();
  if (k > 0) {
    staging_.resize(static_cast<size_t>(k) * V);
    be_.matmul_to_host(m_.output, xn, k, staging_.data());
    int j = 0;
    for (SeqBatch& b : batch) {
      if (!b.logits || b.all_logits || b.error) continue;
      std::memcpy(b.logits, staging_.data() + static_cast<size_t>(j++) * V, V * sizeof(float));
    }
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    SeqBatch& b = batch[i];
    if (!b.logits || !b.all_logits || b.error) continue;
    const int row0 = rows_[i].row0;
    be_.rms_norm(x + row0 * E, m_.output_norm, xn, b.n, E, h.rms_eps);
    be_.matmul_to_host(m_.output, xn, b.n, b.logits);
  }
}

}  // namespace tova
