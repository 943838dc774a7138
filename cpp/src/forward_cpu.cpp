#include "forward_cpu.h"

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

ForwardCpu::ForwardCpu(const Model& model, int max_tokens, bool float_activations)
    : m_(model),
      max_tokens_(max_tokens),
      rope_(model.hp(), model.hp().rope_base, model.rope_freqs),
      rope_swa_(unscaled_rope(model.hp()), model.hp().rope_base_swa),
      mm_(float_activations) {
  const HParams& h = m_.hp();
  const size_t U = static_cast<size_t>(max_tokens);
  const size_t E = static_cast<size_t>(h.n_embd), D = static_cast<size_t>(h.head_dim);
  x_.resize(U * E);
  xn_.resize(U * E);
  q_.resize(U * h.n_head * D);
  k_.resize(U * h.n_head_kv * D);
  v_.resize(U * h.n_head_kv * D);
  att_.resize(U * h.n_head * D);
  o_.resize(U * E);
  gate_.resize(U * h.n_ff);
  up_.resize(U * h.n_ff);
}

void ForwardCpu::run(ThreadPool& pool, KvStore& store, const LayerPolicies& lp,
                     const int32_t* tokens, int n, int64_t t0, bool all_logits, float* logits) {
  TOVA_ASSERT(n >= 1 && n <= max_tokens_);
  const HParams& h = m_.hp();
  const int64_t E = h.n_embd, D = h.head_dim, F = h.n_ff;
  const int64_t QW = h.n_head * D, KW = h.n_head_kv * D;

  // Embeddings: one row of the (quantized) table per token.
  const float emb_scale = h.embed_scale ? std::sqrt(static_cast<float>(E)) : 1.0f;
  for (int i = 0; i < n; ++i) {
    const int32_t tok = tokens[i];
    if (tok < 0 || tok >= h.n_vocab)
      throw ArgumentError(cat("token id ", tok, " is out of range [0, ", h.n_vocab, ")"));
    float* xi = x_.data() + i * E;
    m_.tok_embd.traits->dequantize(m_.tok_embd.row(tok), xi, E);
    if (emb_scale != 1.0f)
      for (int64_t j = 0; j < E; ++j) xi[j] *= emb_scale;
  }

  for (int l = 0; l < h.n_layer; ++l) {
    const LayerWeights& w = m_.layers[static_cast<size_t>(l)];
    const bool swa = h.is_swa_layer(l);
    for (int i = 0; i < n; ++i) rms_norm(x_.data() + i * E, w.attn_norm.data(), xn_.data() + i * E, E, h.rms_eps);
    MatmulJob qkv[3] = {{&w.wq, q_.data()}, {&w.wk, k_.data()}, {&w.wv, v_.data()}};
    mm_.run(pool, xn_.data(), n, qkv, 3);
    for (int i = 0; i < n; ++i) {
      float* q = q_.data() + i * QW;
      float* k = k_.data() + i * KW;
      float* v = v_.data() + i * KW;
      if (h.qkv_bias) {
        for (int64_t j = 0; j < QW; ++j) q[j] += w.bq[static_cast<size_t>(j)];
        for (int64_t j = 0; j < KW; ++j) k[j] += w.bk[static_cast<size_t>(j)];
        for (int64_t j = 0; j < KW; ++j) v[j] += w.bv[static_cast<size_t>(j)];
      }
      if (h.qk_norm) {
        for (int hh = 0; hh < h.n_head; ++hh) rms_norm(q + hh * D, w.q_norm.data(), q + hh * D, D, h.rms_eps);
        for (int hh = 0; hh < h.n_head_kv; ++hh) rms_norm(k + hh * D, w.k_norm.data(), k + hh * D, D, h.rms_eps);
      }
      if (!lp.cache_index) {
        const Rope& rope = swa ? rope_swa_ : rope_;
        rope.apply(q, h.n_head, static_cast<int>(D), t0 + i);
        rope.apply(k, h.n_head_kv, static_cast<int>(D), t0 + i);
      }
    }

    AttentionArgs a;
    a.layer = l;
    a.n_head = h.n_head;
    a.head_dim = static_cast<int>(D);
    a.scale = h.attn_scale > 0 ? h.attn_scale : 1.0f / std::sqrt(static_cast<float>(D));
    a.t0 = t0;
    a.n_tokens = n;
    a.q = q_.data();
    a.k = k_.data();
    a.v = v_.data();
    a.out = att_.data();
    a.policy = lp.policy[static_cast<size_t>(l)];
    a.never_evicts = lp.never_evicts && !swa;
    a.n_sink = lp.n_sink;
    a.protect_below = lp.protect_below;
    a.rank_rope = lp.cache_index ? (swa ? &rope_swa_ : &rope_) : nullptr;
    // Chunked prefill approximates the policy's choices, but a sliding-window layer's window is
    // the model itself: a chunk's rows must not see keys n_swa or more behind them, so those
    // layers always walk row by row once their window is full.
    a.chunked = lp.chunked && !swa;
    attention_.run(pool, store, a);

    mm_.run(pool, w.wo, att_.data(), n, o_.data());
    for (int i = 0; i < n; ++i) {
      float* xi = x_.data() + i * E;
      float* oi = o_.data() + i * E;
      if (h.post_norms) rms_norm(oi, w.attn_post_norm.data(), oi, E, h.rms_eps);
      for (int64_t j = 0; j < E; ++j) xi[j] += oi[j];
      rms_norm(xi, w.ffn_norm.data(), xn_.data() + i * E, E, h.rms_eps);
    }
    MatmulJob gu[2] = {{&w.w_gate, gate_.data()}, {&w.w_up, up_.data()}};
    mm_.run(pool, xn_.data(), n, gu, 2);
    if (h.ffn_act == FfnActivation::SiLU) silu_mul(gate_.data(), up_.data(), n * F);
    else gelu_tanh_mul(gate_.data(), up_.data(), n * F);
    mm_.run(pool, w.w_down, gate_.data(), n, o_.data());
    for (int i = 0; i < n; ++i) {
      float* xi = x_.data() + i * E;
      float* oi = o_.data() + i * E;
      if (h.post_norms) rms_norm(oi, w.ffn_post_norm.data(), oi, E, h.rms_eps);
      for (int64_t j = 0; j < E; ++j) xi[j] += oi[j];
    }
  }

  if (!logits) return;
  const int first = all_logits ? 0 : n - 1;
  const int n_out = n - first;
  for (int i = 0; i < n_out; ++i)
    rms_norm(x_.data() + (first + i) * E, m_.output_norm.data(), xn_.data() + i * E, E, h.rms_eps);
  mm_.run(pool, m_.output, xn_.data(), n_out, logits);
}

}  // namespace tova
