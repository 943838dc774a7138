#include "model.h"

#include <map>

#include "common.h"
#include "cpu/kernels_cpu.h"

namespace tova {

Model::Model(const std::string& path) : file_(path), hp_(load_hparams(file_)) {
  name_ = file_.get_string("general.name", "");
  const HParams& h = hp_;
  const int64_t E = h.n_embd, D = h.head_dim, F = h.n_ff;
  const int64_t q_out = static_cast<int64_t>(h.n_head) * D, kv_out = static_cast<int64_t>(h.n_head_kv) * D;

  tok_embd = matrix("token_embd.weight", E, h.n_vocab);
  output_norm = vector("output_norm.weight", E);
  output = matrix("output.weight", E, h.n_vocab, /*required=*/false);
  if (!output.present()) {
    output = tok_embd;
    tied_output = true;
  }
  rope_freqs = vector("rope_freqs.weight", h.rope_dim / 2, /*required=*/false);
  for (float f : rope_freqs)
    if (!(f > 0.0f))
      throw FormatError(cat(path, ": tensor 'rope_freqs.weight' holds ", f,
                            "; RoPE frequency factors must be positive"));
  layers.resize(static_cast<size_t>(h.n_layer));
  for (int l = 0; l < h.n_layer; ++l) {
    LayerWeights& w = layers[static_cast<size_t>(l)];
    const std::string p = cat("blk.", l, ".");
    w.attn_norm = vector(p + "attn_norm.weight", E);
    if (file_.find_tensor(p + "attn_qkv.weight") && !file_.find_tensor(p + "attn_q.weight"))
      throw FormatError(cat(path, ": tensor '", p, "attn_qkv.weight' holds q, k and v in one matrix, which "
                            "tova does not read (it needs attn_q, attn_k and attn_v)"));
    w.wq = matrix(p + "attn_q.weight", E, q_out);
    w.wk = matrix(p + "attn_k.weight", E, kv_out);
    w.wv = matrix(p + "attn_v.weight", E, kv_out);
    w.wo = matrix(p + "attn_output.weight", q_out, E);
    // Attention biases: qwen2 has q, k and v's; any architecture may carry them and o's (a
    // llama converted with attention_bias), used when present.
    w.bq = vector(p + "attn_q.bias", q_out, h.qkv_bias);
    w.bk = vector(p + "attn_k.bias", kv_out, h.qkv_bias);
    w.bv = vector(p + "attn_v.bias", kv_out, h.qkv_bias);
    w.bo = vector(p + "attn_output.bias", E, /*required=*/false);
    for (const char* ffn : {"ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"})
      if (file_.find_tensor(p + ffn))
        throw FormatError(cat(path, ": tensor '", p, ffn, "': feed-forward biases (a model converted with "
                              "mlp_bias) are not supported"));
    if (h.qk_norm) {
      w.q_norm = vector(p + "attn_q_norm.weight", D);
      w.k_norm = vector(p + "attn_k_norm.weight", D);
    }
    if (h.post_norms) {
      w.attn_post_norm = vector(p + "post_attention_norm.weight", E);
      w.ffn_post_norm = vector(p + "post_ffw_norm.weight", E);
    }
    w.ffn_norm = vector(p + "ffn_norm.weight", E);
    w.w_gate = matrix(p + "ffn_gate.weight", E, F);
    w.w_up = matrix(p + "ffn_up.weight", E, F);
    w.w_down = matrix(p + "ffn_down.weight", F, E);
  }
  tokenizer_ = Tokenizer::from_gguf(file_);
  if (tokenizer_->n_vocab() != h.n_vocab)
    throw FormatError(cat(path, ": tokenizer has ", tokenizer_->n_vocab(),
                          " tokens but the model's vocabulary size is ", h.n_vocab));
}

Matrix Model::matrix(const std::string& name, int64_t cols, int64_t rows, bool required) {
  Matrix m;
  const GgufTensor* t = file_.find_tensor(name);
  if (!t) {
    if (required) throw FormatError(cat(file_.path(), ": required tensor '", name, "' is missing"));
    return m;
  }
  if (t->n_dims != 2 || t->ne[0] != cols || t->ne[1] != rows)
    throw FormatError(cat(file_.path(), ": tensor '", name, "' has shape ", t->shape_string(),
                          ", expected [", cols, ", ", rows, "]"));
  // Computable types have a matrix-product kernel in every backend (the type table's contract).
  m.traits = &require_computable(t->type_id, cat(file_.path(), ": tensor '", name, "'"));
  m.data = t->data;
  m.type = t->type();
  m.cols = cols;
  m.rows = rows;
  m.row_bytes = row_bytes(m.type, cols);
  m.name = name;
  weight_bytes_ += t->nbytes;
  return m;
}

Vector Model::vector(const std::string& name, int64_t n, bool required) {
  const GgufTensor* t = file_.find_tensor(name);
  if (!t) {
    if (required) throw FormatError(cat(file_.path(), ": required tensor '", name, "' is missing"));
    return {};
  }
  if (t->n_elements() != n)
    throw FormatError(cat(file_.path(), ": tensor '", name, "' has shape ", t->shape_string(),
                          ", expected [", n, "]"));
  require_computable(t->type_id, cat(file_.path(), ": tensor '", name, "'"));
  Vector v(static_cast<size_t>(n));
  dequantize_row(t->type(), t->data, v.data(), n);  // on the host, once at load
  weight_bytes_ += t->nbytes;
  return v;
}

std::string Model::quant_summary() const {
  std::map<std::string, uint64_t> bytes;
  auto add = [&](const Matrix& m) {
    if (m.present()) bytes[m.traits->name] += m.row_bytes * static_cast<uint64_t>(m.rows);
  };
  for (const LayerWeights& w : layers) {
    add(w.wq); add(w.wk); add(w.wv); add(w.wo); add(w.w_gate); add(w.w_up); add(w.w_down);
  }
  std::string best;
  uint64_t most = 0;
  for (const auto& [name, b] : bytes)
    if (b > most) { most = b; best = name; }
  return best;
}

}  // namespace tova
