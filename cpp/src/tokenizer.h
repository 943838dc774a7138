// Tokenizers built from GGUF metadata (tokenizer.ggml.*). One interface; each tokenizer model
// (byte-level BPE "gpt2", SentencePiece-style "llama") is a sibling implementation.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tova {

class GgufFile;

// Token attributes from tokenizer.ggml.token_type (values as GGUF stores them).
enum class TokenType : int32_t {
  Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
};

// Everything a tokenizer is built from, as read from tokenizer.ggml.* (from_gguf fills it; tests
// and tools may build one by hand).
struct TokenizerData {
  std::string source = "<memory>";  // the file, for error messages
  std::string model;                // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre;                  // tokenizer.ggml.pre ("default" when absent)
  std::vector<std::string> tokens;
  std::vector<TokenType> types;     // empty: every token Normal
  std::vector<float> scores;        // empty: every score 0
  std::vector<std::string> merges;  // "left right", highest priority first (gpt2 only)
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, eot_id = -1, eom_id = -1;
  int32_t fim_ids[6] = {-1, -1, -1, -1, -1, -1};  // per FimKind (token_texts.h): the file's, or -1
  bool add_bos = false;
  bool add_space_prefix = false;    // llama: prepend a space to text that follows BOS or a special
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Builds the tokenizer the file names (tokenizer.ggml.model); FormatError if unsupported.
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& file);
  // The same from already-read data (FormatError names data.source).
  static std::unique_ptr<Tokenizer> from_data(TokenizerData data);
  // The tokenizer.ggml.* fields of a file, checked for consistency.
  static TokenizerData read_gguf(const GgufFile& file);
  // Pre-tokenizer names (tokenizer.ggml.pre) the gpt2 model accepts.
  static std::vector<std::string> supported_pre_tokenizers();

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text -> ids. add_bos: prepend BOS. parse_special: text of control / user-defined tokens
  // ("<|im_start|>") becomes that token; otherwise it is tokenized as plain text.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const {
    return encode_with(text, add_bos, parse_special, {});
  }

  // Chat messages are text: a message that spells a control token ("<|im_end|>") must not
  // become that token, while the template's own markers around it must. mark_literal() wraps
  // each spelling of a control / unknown token in a message's text between two marks (U+FDD0
  // ... U+FDD1, Unicode noncharacters; any the text already had become U+FFFD) and leaves other
  // text as it is; render the marked messages, then encode_chat() reads the prompt with special
  // tokens parsed except between marks, which it drops: the spelled token is tokenized as
  // plain text, in context, as encode(..., false) would.
  std::string mark_literal(std::string_view message_text) const;
  std::vector<int32_t> encode_chat(std::string_view marked, bool add_bos) const;

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
  const std::string& pre_tokenizer() const { return pre_; }
  int32_t unk_id() const { return unk_id_; }

 protected:
  Tokenizer() = default;

  // [begin, end) byte ranges of the text read as plain text whatever parse_special says
  // (sorted, not overlapping); user-defined tokens are still cut there, as plain text cuts them.
  using Spans = std::vector<std::pair<size_t, size_t>>;
  virtual std::vector<int32_t> encode_with(std::string_view text, bool add_bos, bool parse_special,
                                           const Spans& literal) const = 0;

  // A piece of the input: special token `token`, or (token < 0) text bytes [begin, end).
  struct Fragment {
    int32_t token;
    size_t begin, end;
  };
  // Moves the vocabulary out of `data`, checks it, and builds the lookup tables.
  void init_vocab(TokenizerData& data);
  // The bytes of a token whose type alone decides them (user-defined: its text; control,
  // unknown, unused: its text only when `special`); false for the other types.
  bool special_token_bytes(int32_t id, bool special, std::string& out) const;
  // Cuts the special tokens out of `text` the way llama.cpp does: tokens in order of decreasing
  // length, each taking its leftmost non-overlapping occurrences in what earlier ones left.
  // User-defined tokens are always cut; control and unknown tokens only with parse_special, and
  // not where they overlap a `literal` span.
  std::vector<Fragment> split_special(std::string_view text, bool parse_special,
                                      const Spans& literal = {}) const;
  // Token with exactly this text, or -1 (the last one when texts repeat, as llama.cpp does).
  int32_t lookup(std::string_view text) const {
    auto it = token_to_id_.find(text);
    return it == token_to_id_.end() ? -1 : it->second;
  }
  void check_id(int32_t id) const;  // ArgumentError unless 0 <= id < n_vocab

  std::string model_name_;          // "gpt2", "llama"
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = false;
  std::vector<int32_t> eog_ids_;
  std::string pre_;
  std::string source_;
  int32_t unk_id_ = -1;
  // Views into tokens_ (never resized after init_vocab; the class is not copyable).
  std::unordered_map<std::string_view, int32_t> token_to_id_;

 private:
  // Byte trie over the special tokens' texts, for split_special. Node k ends token
  // trie_token_[k] (or -1); edges are keyed by node << 8 | byte; the root's are an array.
  std::vector<int32_t> trie_token_;
  std::unordered_map<uint64_t, int32_t> trie_next_;
  std::array<int32_t, 256> trie_root_{};
  std::vector<int32_t> special_rank_;     // per token: its place in the longest-first order, or -1
  std::vector<int32_t> special_by_rank_;  // the special tokens in that order
  bool has_user_defined_ = false;
};

// Streaming decode: feed token bytes, get back only complete UTF-8 characters; bytes of a
// character split across tokens are held until the character is complete. Output is always
// valid UTF-8: bytes that can never form a character become U+FFFD as soon as that is known.
class Utf8Stream {
 public:
  std::string push(const std::string& bytes);
  std::string flush();  // whatever is left (invalid bytes become U+FFFD)
  void reset() { pending_.clear(); }

 private:
  std::string pending_;
};

}  // namespace tova
