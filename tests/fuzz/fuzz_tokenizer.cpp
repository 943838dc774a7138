// The tokenizers on hostile text: a byte-level BPE (gpt2) and a SentencePiece (llama) tokenizer
// built from small vocabularies here, each encoding the input with and without special-token
// parsing. Every id must be in the vocabulary, and byte-level BPE must give valid UTF-8 text
// back exactly (invalid bytes become U+FFFD first, as in llama.cpp: then the sanitized text).
// A chat message's text marked by mark_literal reads as plain text through encode_chat.
#include <exception>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "tokenizer.h"
#include "unicode.h"

namespace {

using tova::TokenType;

std::unique_ptr<tova::Tokenizer> make_bpe() {
  tova::TokenizerData d;
  d.model = "gpt2";
  d.pre = "smollm";
  d.source = "fuzz-bpe";
  // The 256 byte symbols of byte-level BPE (printable bytes map to themselves, others to U+0100+).
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    d.tokens.push_back(tova::unicode::to_utf8(direct ? static_cast<uint32_t>(b) : 256u + extra++));
  }
  const char* words[] = {"th", "he", "the", "in", "er", "an", "Ġt", "Ġthe", "on", "re"};
  for (const char* w : words) d.tokens.push_back(w);
  d.merges = {"t h", "h e", "t he", "i n", "e r", "a n", "Ġ t", "Ġt he", "o n", "r e"};
  d.tokens.push_back("<|im_start|>");
  d.tokens.push_back("<|im_end|>");
  d.types.assign(d.tokens.size(), TokenType::Normal);
  d.types[d.types.size() - 1] = d.types[d.types.size() - 2] = TokenType::Control;
  d.eos_id = static_cast<int32_t>(d.tokens.size() - 1);
  return tova::Tokenizer::from_data(std::move(d));
}

std::unique_ptr<tova::Tokenizer> make_spm() {
  tova::TokenizerData d;
  d.model = "llama";
  d.source = "fuzz-spm";
  d.add_space_prefix = true;
  d.tokens = {"<unk>", "<s>", "</s>"};
  d.types = {TokenType::Unknown, TokenType::Control, TokenType::Control};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    d.tokens.push_back(hex);
    d.types.push_back(TokenType::Byte);
  }
  const char* pieces[] = {"▁", "▁the", "▁a", "e", "t", "h", "he", "th", "▁t", "o", "n", "on", "é", "日本"};
  for (const char* p : pieces) {
    d.tokens.push_back(p);
    d.types.push_back(TokenType::Normal);
  }
  d.scores.resize(d.tokens.size());
  for (size_t i = 0; i < d.scores.size(); ++i) d.scores[i] = -static_cast<float>(i);
  d.unk_id = 0;
  d.bos_id = 1;
  d.eos_id = 2;
  return tova::Tokenizer::from_data(std::move(d));
}

// `text` without the chat marks (U+FDD0, U+FDD1) mark_literal puts around spelled tokens.
std::string unmarked(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, 3, "\xEF\xB7\x90") == 0 || text.compare(i, 3, "\xEF\xB7\x91") == 0) {
      i += 3;
    } else {
      out += text[i++];
    }
  }
  return out;
}

void check_ids(const tova::Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids)
    if (id < 0 || id >= tok.n_vocab()) __builtin_trap();
}

void check(const tova::Tokenizer& tok, const std::string& text, bool exact) {
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = tok.encode(text, special, special);
    check_ids(tok, ids);
    const std::string back = tok.decode(ids, special);
    if (exact && !special && back != tova::unicode::sanitize_utf8(text)) __builtin_trap();
  }
  // Chat: any marks at all (paired or not) read safely; a message's marked text reads as plain.
  check_ids(tok, tok.encode_chat(text, true));
  const std::string marked = tok.mark_literal(text);
  if (tok.encode_chat(marked, false) != tok.encode(unmarked(marked), false, false)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto bpe = make_bpe();
  static const auto spm = make_spm();
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    check(*bpe, text, true);
    check(*spm, text, false);
  } catch (const std::exception&) {
  }
  return 0;
}
