// Tokenizers built from GGUF metadata (tokenizer.ggml.*). One interface; each tokenizer model
// (byte-level BPE "gpt2", SentencePiece-style "llama") is a sibling implementation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tova {

class GgufFile;

// Token attributes from tokenizer.ggml.token_type (values as GGUF stores them).
enum class TokenType : int32_t {
  Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Builds the tokenizer the file names (tokenizer.ggml.model); FormatError if unsupported.
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& file);

  // Text -> ids. add_bos: prepend BOS. parse_special: text of control / user-defined tokens
  // ("<|im_start|>") becomes that token; otherwise it is tokenized as plain text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos,
                                      bool parse_special) const = 0;

  // The bytes one token stands for (may be part of a UTF-8 character). Control tokens give
  // their text only when `special` is true, otherwise "".
  virtual std::string token_bytes(int32_t id, bool special = false) const = 0;

  // ids -> text bytes (concatenation of token_bytes).
  std::string decode(const std::vector<int32_t>& ids, bool special = false) const;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  const std::string& token_text(int32_t id) const { return tokens_.at(static_cast<size_t>(id)); }
  TokenType token_type(int32_t id) const { return types_.at(static_cast<size_t>(id)); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  bool add_bos_default() const { return add_bos_; }
  // End of generation: EOS and the model's other end-of-turn tokens (<|im_end|>, <end_of_turn>...).
  bool is_end_of_generation(int32_t id) const;
  const std::vector<int32_t>& end_of_generation_ids() const { return eog_ids_; }
  // Id of a token given its exact text, or -1.
  int32_t find_token(std::string_view text) const;
  const char* model_name() const { return model_name_.c_str(); }

 protected:
  std::string model_name_;          // "gpt2", "llama"
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = false;
  std::vector<int32_t> eog_ids_;
};

// Streaming decode: feed token bytes, get back only complete UTF-8 characters; bytes of a
// character split across tokens are held until the character is complete.
class Utf8Stream {
 public:
  std::string push(const std::string& bytes);
  std::string flush();  // whatever is left (invalid bytes become U+FFFD)
  void reset() { pending_.clear(); }

 private:
  std::string pending_;
};

}  // namespace tova
