// A loaded model: hyperparameters, weights bound in place from the mapped GGUF, the tokenizer.
// Matrices stay in their stored (quantized) type; only small vectors (norms, biases) are
// converted to float32 at load time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "arch.h"
#include "gguf.h"
#include "quant.h"
#include "tokenizer.h"

namespace tova {

// A weight matrix used in place: `rows` rows of `cols` elements, each row `row_bytes` long.
struct Matrix {
  const uint8_t* data = nullptr;
  GgmlType type = GgmlType::F32;
  int64_t cols = 0;  // ne[0], the input size
  int64_t rows = 0;  // ne[1], the output size
  size_t row_bytes = 0;
  const TypeTraits* traits = nullptr;  // the layout of `type` (the type table)
  std::string name;

  bool present() const { return data != nullptr; }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
};

using Vector = std::vector<float>;  // empty when absent

struct LayerWeights {
  Vector attn_norm, attn_post_norm, ffn_norm, ffn_post_norm;
  Vector q_norm, k_norm;  // per-head norms (head_dim)
  Matrix wq, wk, wv, wo;
  Vector bq, bk, bv, bo;  // attention biases (empty: none)
  Matrix w_gate, w_up, w_down;
};

class Model {
 public:
  explicit Model(const std::string& path);

  const GgufFile& file() const { return file_; }
  const HParams& hp() const { return hp_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const std::string& name() const { return name_; }
  const std::string& path() const { return file_.path(); }

  Matrix tok_embd;
  Vector output_norm;
  Matrix output;  // the embedding matrix itself when the model ties them
  // Llama 3.1-style per-pair RoPE frequency divisors (`rope_freqs.weight`); empty when absent.
  Vector rope_freqs;
  bool tied_output = false;
  std::vector<LayerWeights> layers;

  // Bytes of weights in the file (mapped, not copied) and of vectors converted at load.
  uint64_t weight_bytes() const { return weight_bytes_; }
  std::string quant_summary() const;  // most common matrix type, e.g. "Q4_1"

 private:
  Matrix matrix(const std::string& name, int64_t cols, int64_t rows, bool required = true);
  Vector vector(const std::string& name, int64_t n, bool required = true);

  GgufFile file_;
  HParams hp_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::string name_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace tova
