// Byte-level BPE (tokenizer.ggml.model "gpt2": GPT-2, SmolLM2, Qwen2, Llama 3): text is split
// into words by the model's pre-tokenizer pattern (tokenizer.ggml.pre), each word's bytes are
// mapped to GPT-2's printable characters, and adjacent symbols are merged lowest merge rank first.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer.h"

namespace tova {

// The pre-tokenizer patterns, implemented by hand over code point classes with the regexes'
// leftmost-first semantics (text no alternative matches becomes a word of its own).
enum class PreTokenizer {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Gpt2,
  // \p{N} (each digit its own word), then Gpt2 within what is left
  Smollm,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+   (the case-insensitive part ASCII-only, as llama.cpp has it)
  Qwen2,
  // Qwen2 with \p{N}{1,3}; a word that is itself a token is not merged (ignore_merges)
  Llama3,
  // llama.cpp's fallback sequence: [\p{P}\$\+<=>\^~\|]+, then Gpt2, then \p{N}+, then
  // [0-9][0-9][0-9]
  Default,
};

// tokenizer.ggml.pre name -> pattern; false when the name is unknown.
bool parse_pre_tokenizer(std::string_view name, PreTokenizer* kind);
std::vector<std::string> bpe_pre_tokenizer_names();
// Words of `cps` as [begin, end) code point ranges.
std::vector<std::pair<size_t, size_t>> pre_tokenize(PreTokenizer kind,
                                                    const std::vector<uint32_t>& cps);

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(TokenizerData data);

  std::string token_bytes(int32_t id, bool special = false) const override;
  PreTokenizer pre_kind() const { return pre_kind_; }

 protected:
  std::vector<int32_t> encode_with(std::string_view text, bool add_bos, bool parse_special,
                                   const Spans& literal) const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct Workspace;
  void encode_word(std::string_view bytes, std::vector<int32_t>& out, Workspace& ws) const;

  PreTokenizer pre_kind_ = PreTokenizer::Default;
  bool ignore_merges_ = false;
  std::unordered_map<uint64_t, Merge> merges_;  // key: left id << 32 | right id
  std::array<int32_t, 256> byte_token_{};       // token of each byte's character, or -1
  std::array<std::string, 256> byte_char_;      // GPT-2's printable character for each byte
  std::array<int16_t, 324> char_byte_{};        // inverse: code point -> byte, or -1
};

}  // namespace tova
