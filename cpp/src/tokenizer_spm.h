// SentencePiece-style tokenizer (tokenizer.ggml.model "llama": Llama 2, Gemma): spaces become
// U+2581, the text is cut into UTF-8 characters, and adjacent symbols whose concatenation is a
// token are merged highest score first (llama.cpp's algorithm, which is what the reference
// outputs come from, not SentencePiece's Viterbi search). Characters that end up in no token fall
// back to the byte tokens <0xNN>.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer.h"

namespace tova {

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(TokenizerData data);

  std::string token_bytes(int32_t id, bool special = false) const override;
  bool add_space_prefix() const { return add_space_prefix_; }

 protected:
  std::vector<int32_t> encode_with(std::string_view text, bool add_bos, bool parse_special,
                                   const Spans& literal) const override;

 private:
  struct Workspace;
  // `text` has its spaces already escaped to U+2581.
  void encode_text(std::string_view text, std::vector<int32_t>& out, Workspace& ws) const;
  float score(int32_t id) const { return scores_.empty() ? 0.0f : scores_[id]; }

  std::vector<float> scores_;
  std::array<int32_t, 256> byte_token_{};  // <0xNN>, or -1
  bool add_space_prefix_ = false;
};

}  // namespace tova
