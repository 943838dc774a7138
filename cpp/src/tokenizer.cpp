// The tokenizer front end: reading tokenizer.ggml.* from a GGUF, choosing the model, the
// vocabulary tables every model shares (text -> id, special-token splitting, end of generation)
// and the streaming UTF-8 decoder.
#include "tokenizer.h"

#include <algorithm>

#include "common.h"
#include "gguf.h"
#include "tokenizer_bpe.h"
#include "tokenizer_spm.h"
#include "token_texts.h"
#include "unicode.h"

namespace tova {

namespace {

int32_t read_id(const GgufFile& file, const char* key) {
  const int64_t v = file.get_int(key, -1);
  if (v < -1 || v > INT32_MAX)
    throw FormatError(cat(file.path(), ": metadata '", key, "' = ", v, " is not a token id"));
  return static_cast<int32_t>(v);
}

}  // namespace

// ---------------------------------------------------------------------------------- loading

TokenizerData Tokenizer::read_gguf(const GgufFile& file) {
  TokenizerData d;
  d.source = file.path();
  d.model = file.require_string("tokenizer.ggml.model");
  d.pre = file.get_string("tokenizer.ggml.pre", "default");

  const GgufValue* tokens = file.find_array("tokenizer.ggml.tokens", GgufType::STRING);
  if (!tokens)
    throw FormatError(cat(file.path(), ": required metadata 'tokenizer.ggml.tokens' is missing"));
  d.tokens.reserve(tokens->strings.size());
  for (std::string_view t : tokens->strings) d.tokens.emplace_back(t);

  if (const GgufValue* types = file.find_array("tokenizer.ggml.token_type", GgufType::INT32)) {
    d.types.reserve(types->count);
    for (uint64_t k = 0; k < types->count; ++k) {
      const int64_t t = types->array_int(k);
      if (t < 0 || t > static_cast<int64_t>(TokenType::Byte))
        throw FormatError(cat(file.path(), ": tokenizer.ggml.token_type[", k, "] = ", t,
                              ", expected 0..6"));
      d.types.push_back(static_cast<TokenType>(t));
    }
  }
  if (const GgufValue* scores = file.find_array("tokenizer.ggml.scores", GgufType::FLOAT32)) {
    d.scores.reserve(scores->count);
    for (uint64_t k = 0; k < scores->count; ++k)
      d.scores.push_back(static_cast<float>(scores->array_float(k)));
  }
  if (const GgufValue* merges = file.find_array("tokenizer.ggml.merges", GgufType::STRING)) {
    d.merges.reserve(merges->strings.size());
    for (std::string_view m : merges->strings) d.merges.emplace_back(m);
  } else if (d.model == "gpt2") {
    // (files written by converters that did not understand a tokenizer's merges: without them
    // every word falls apart into bytes; llama.cpp refuses them too)
    throw FormatError(cat(file.path(), ": required metadata 'tokenizer.ggml.merges' is missing (a byte-level "
                          "BPE tokenizer needs its merges; convert the model again with a current converter)"));
  }
  d.bos_id = read_id(file, "tokenizer.ggml.bos_token_id");
  d.eos_id = read_id(file, "tokenizer.ggml.eos_token_id");
  d.unk_id = read_id(file, "tokenizer.ggml.unknown_token_id");
  d.eot_id = read_id(file, "tokenizer.ggml.eot_token_id");
  d.eom_id = read_id(file, "tokenizer.ggml.eom_token_id");
  // Fill-in-the-middle tokens (prefix, suffix and middle also under their older keys).
  const char* fim_keys[][2] = {{"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"},
                               {"tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"},
                               {"tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"},
                               {"tokenizer.ggml.fim_pad_token_id", nullptr},
                               {"tokenizer.ggml.fim_rep_token_id", nullptr},
                               {"tokenizer.ggml.fim_sep_token_id", nullptr}};
  for (int k = 0; k < 6; ++k) {
    d.fim_ids[k] = read_id(file, fim_keys[k][0]);
    if (d.fim_ids[k] < 0 && fim_keys[k][1]) d.fim_ids[k] = read_id(file, fim_keys[k][1]);
  }
  // SentencePiece models add BOS and a leading space unless told otherwise; BPE models do not,
  // except Llama 3's (the defaults llama.cpp applies when the keys are absent: older Llama 3
  // files have no add_bos_token key). SentencePiece files without the ids get llama.cpp's
  // defaults: unknown 0, BOS 1, EOS 2.
  const bool spm = d.model == "llama";
  PreTokenizer pre = PreTokenizer::Default;
  const bool llama3 = !spm && parse_pre_tokenizer(d.pre, &pre) && pre == PreTokenizer::Llama3;
  d.add_bos = file.get_bool("tokenizer.ggml.add_bos_token", spm || llama3);
  d.add_space_prefix = file.get_bool("tokenizer.ggml.add_space_prefix", spm);
  if (spm && d.tokens.size() > 2) {
    if (!file.find("tokenizer.ggml.unknown_token_id")) d.unk_id = 0;
    if (!file.find("tokenizer.ggml.bos_token_id")) d.bos_id = 1;
    if (!file.find("tokenizer.ggml.eos_token_id")) d.eos_id = 2;
  }
  return d;
}

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& file) {
  return from_data(read_gguf(file));
}

std::unique_ptr<Tokenizer> Tokenizer::from_data(TokenizerData data) {
  if (data.model == "gpt2") return std::make_unique<BpeTokenizer>(std::move(data));
  if (data.model == "llama") return std::make_unique<SpmTokenizer>(std::move(data));
  throw FormatError(cat(data.source, ": tokenizer.ggml.model '", data.model,
                        "' is not supported (supported: gpt2 = byte-level BPE, "
                        "llama = SentencePiece-style)"));
}

std::vector<std::string> Tokenizer::supported_pre_tokenizers() {
  return bpe_pre_tokenizer_names();
}

void Tokenizer::init_vocab(TokenizerData& d) {
  source_ = d.source;
  model_name_ = d.model;
  pre_ = d.pre;
  const size_t n = d.tokens.size();
  if (n == 0) throw FormatError(cat(d.source, ": tokenizer.ggml.tokens is empty"));
  if (n > static_cast<size_t>(INT32_MAX))
    throw FormatError(cat(d.source, ": tokenizer.ggml.tokens has ", n, " entries, too many"));
  if (d.types.empty()) d.types.assign(n, TokenType::Normal);
  if (d.types.size() != n)
    throw FormatError(cat(d.source, ": tokenizer.ggml.token_type has ", d.types.size(),
                          " entries, expected ", n, " (one per token)"));
  if (!d.scores.empty() && d.scores.size() != n)
    throw FormatError(cat(d.source, ": tokenizer.ggml.scores has ", d.scores.size(),
                          " entries, expected ", n, " (one per token)"));
  const std::pair<const char*, int32_t> ids[] = {
      {"bos_token_id", d.bos_id}, {"eos_token_id", d.eos_id}, {"unknown_token_id", d.unk_id},
      {"eot_token_id", d.eot_id}, {"eom_token_id", d.eom_id}, {"fim_pre_token_id", d.fim_ids[0]},
      {"fim_suf_token_id", d.fim_ids[1]}, {"fim_mid_token_id", d.fim_ids[2]}, {"fim_pad_token_id", d.fim_ids[3]},
      {"fim_rep_token_id", d.fim_ids[4]}, {"fim_sep_token_id", d.fim_ids[5]}};
  for (const auto& [key, id] : ids)
    if (id < -1 || id >= static_cast<int64_t>(n))
      throw FormatError(cat(d.source, ": tokenizer.ggml.", key, " = ", id,
                            " is outside the vocabulary of ", n, " tokens"));

  tokens_ = std::move(d.tokens);
  types_ = std::move(d.types);
  bos_id_ = d.bos_id;
  eos_id_ = d.eos_id;
  unk_id_ = d.unk_id;
  add_bos_ = d.add_bos;

  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i)
    token_to_id_[std::string_view(tokens_[i])] = static_cast<int32_t>(i);
  // Types by text, and the end-of-generation tokens, as llama.cpp reads this vocabulary.
  eog_ids_ = recognize_token_texts([this](std::string_view text) { return lookup(text); }, types_,
                                   {d.eos_id, d.eot_id, d.eom_id}, d.fim_ids);

  // Special tokens, longest first (ties by id), and their trie.
  special_rank_.assign(n, -1);
  special_by_rank_.clear();
  for (size_t i = 0; i < n; ++i) {
    const TokenType t = types_[i];
    if ((t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) &&
        !tokens_[i].empty())
      special_by_rank_.push_back(static_cast<int32_t>(i));
    if (t == TokenType::UserDefined && !tokens_[i].empty()) has_user_defined_ = true;
  }
  std::sort(special_by_rank_.begin(), special_by_rank_.end(), [&](int32_t a, int32_t b) {
    const size_t la = tokens_[a].size(), lb = tokens_[b].size();
    return la != lb ? la > lb : a < b;
  });
  trie_root_.fill(-1);
  trie_token_.assign(1, -1);  // node 0: the root (its edges live in trie_root_)
  for (size_t r = 0; r < special_by_rank_.size(); ++r) {
    const int32_t id = special_by_rank_[r];
    special_rank_[id] = static_cast<int32_t>(r);
    const std::string& text = tokens_[id];
    int32_t node = 0;
    for (size_t k = 0; k < text.size(); ++k) {
      const uint8_t byte = static_cast<uint8_t>(text[k]);
      int32_t* slot;
      if (node == 0) {
        slot = &trie_root_[byte];
      } else {
        auto it = trie_next_.try_emplace((static_cast<uint64_t>(node) << 8) | byte, -1).first;
        slot = &it->second;
      }
      if (*slot < 0) {
        *slot = static_cast<int32_t>(trie_token_.size());
        trie_token_.push_back(-1);
      }
      node = *slot;
    }
    if (trie_token_[node] < 0) trie_token_[node] = id;  // duplicate texts: the first rank wins
  }

}

// ---------------------------------------------------------------------------------- shared

std::vector<Tokenizer::Fragment> Tokenizer::split_special(std::string_view text, bool parse_special,
                                                          const Spans& literal) const {
  std::vector<Fragment> out;
  const size_t n = text.size();
  if (n == 0) return out;
  if (special_by_rank_.empty() || (!parse_special && !has_user_defined_)) {
    out.push_back({-1, 0, n});
    return out;
  }
  const auto allowed = [&](int32_t id) {
    return parse_special || types_[id] == TokenType::UserDefined;
  };
  // in_literal[i]: byte i lies in a literal span (empty when there is none).
  std::vector<uint8_t> in_literal;
  if (parse_special && !literal.empty()) {
    in_literal.assign(n, 0);
    for (const auto& [b, e] : literal)
      std::fill(in_literal.begin() + static_cast<std::ptrdiff_t>(std::min(b, n)),
                in_literal.begin() + static_cast<std::ptrdiff_t>(std::min(e, n)), 1);
  }
  const auto literal_at = [&](int32_t id, size_t q, size_t len) {
    if (in_literal.empty() || types_[id] == TokenType::UserDefined) return false;
    for (size_t i = q; i < q + len; ++i)
      if (in_literal[i]) return true;
    return false;
  };
  // Which allowed special tokens occur at all (by rank).
  std::vector<uint8_t> seen(special_by_rank_.size(), 0);
  std::vector<int32_t> ranks;
  for (size_t pos = 0; pos < n; ++pos) {
    int32_t node = trie_root_[static_cast<uint8_t>(text[pos])];
    size_t k = pos + 1;
    while (node >= 0) {
      const int32_t id = trie_token_[node];
      if (id >= 0 && allowed(id) && !seen[special_rank_[id]]) {
        seen[special_rank_[id]] = 1;
        ranks.push_back(special_rank_[id]);
      }
      if (k == n) break;
      auto it = trie_next_.find((static_cast<uint64_t>(node) << 8) |
                                static_cast<uint8_t>(text[k++]));
      node = it == trie_next_.end() ? -1 : it->second;
    }
  }
  if (ranks.empty()) {
    out.push_back({-1, 0, n});
    return out;
  }
  // llama.cpp takes the tokens one at a time, longest first, each splitting the text that is
  // still unclaimed at its leftmost occurrences; so an occurrence is taken exactly when none of
  // its bytes were claimed before it in this order. claimed_end[i] is 0 for an unclaimed byte,
  // else the end of the claimed stretch it lies in (where the search may resume).
  std::sort(ranks.begin(), ranks.end());
  std::vector<size_t> claimed_end(n, 0);
  std::vector<Fragment> specials;
  for (int32_t rank : ranks) {
    const int32_t id = special_by_rank_[rank];
    const std::string& tok = tokens_[id];
    const size_t len = tok.size();
    for (size_t from = 0;;) {
      const size_t q = text.find(tok, from);
      if (q == std::string_view::npos) break;
      size_t blocked = q;
      while (blocked < q + len && claimed_end[blocked] == 0) ++blocked;
      if (blocked < q + len) {
        from = claimed_end[blocked];
        continue;
      }
      if (literal_at(id, q, len)) {  // spelled in a message: text, as the bytes around it
        from = q + 1;
        continue;
      }
      std::fill(claimed_end.begin() + q, claimed_end.begin() + q + len, q + len);
      specials.push_back({id, q, q + len});
      from = q + len;
    }
  }
  std::sort(specials.begin(), specials.end(),
            [](const Fragment& a, const Fragment& b) { return a.begin < b.begin; });
  size_t at = 0;
  for (const Fragment& s : specials) {
    if (s.begin > at) out.push_back({-1, at, s.begin});
    out.push_back(s);
    at = s.end;
  }
  if (at < n) out.push_back({-1, at, n});
  return out;
}

// ---- chat messages as text: the marks ---------------------------------------------------------
namespace {
// U+FDD0 and U+FDD1 in UTF-8; U+FFFD replaces them in a message.
constexpr std::string_view kOpenMark = "\xEF\xB7\x90", kCloseMark = "\xEF\xB7\x91",
                           kReplacement = "\xEF\xBF\xBD";

bool mark_at(std::string_view text, size_t i, std::string_view mark) {
  return text.compare(i, mark.size(), mark) == 0;
}

// Appends text with the marks it holds replaced by U+FFFD.
void append_unmarked(std::string& out, std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    if (mark_at(text, i, kOpenMark) || mark_at(text, i, kCloseMark)) {
      out += kReplacement;
      i += kOpenMark.size();
    } else {
      out += text[i++];
    }
  }
}
}  // namespace

std::string Tokenizer::mark_literal(std::string_view message_text) const {
  std::string out;
  out.reserve(message_text.size());
  for (const Fragment& f : split_special(message_text, /*parse_special=*/true)) {
    const std::string_view piece = message_text.substr(f.begin, f.end - f.begin);
    const bool spelled = f.token >= 0 && types_[f.token] != TokenType::UserDefined;
    if (spelled) out += kOpenMark;
    append_unmarked(out, piece);
    if (spelled) out += kCloseMark;
  }
  return out;
}

std::vector<int32_t> Tokenizer::encode_chat(std::string_view marked, bool add_bos) const {
  std::string text;
  text.reserve(marked.size());
  Spans literal;
  size_t open = std::string_view::npos;  // where the current span began in `text`
  for (size_t i = 0; i < marked.size();) {
    if (mark_at(marked, i, kOpenMark)) {
      if (open == std::string_view::npos) open = text.size();
      i += kOpenMark.size();
    } else if (mark_at(marked, i, kCloseMark)) {
      if (open != std::string_view::npos) literal.emplace_back(open, text.size());
      open = std::string_view::npos;
      i += kCloseMark.size();
    } else {
      text += marked[i++];
    }
  }
  if (open != std::string_view::npos) literal.emplace_back(open, text.size());  // (cut by a template)
  return encode_with(text, add_bos, /*parse_special=*/true, literal);
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= n_vocab())
    throw ArgumentError(cat("token id ", id, " is outside the vocabulary [0, ", n_vocab(),
                            ") of ", source_));
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id, special);
  return out;
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

int32_t Tokenizer::find_token(std::string_view text) const { return lookup(text); }

// ---------------------------------------------------------------------------------- Utf8Stream

std::string Utf8Stream::push(const std::string& bytes) {
  pending_ += bytes;
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const unicode::Decoded d = unicode::decode(pending_, pos);
    if (d.status == unicode::DecodeStatus::Truncated) break;  // wait for the rest
    if (d.status == unicode::DecodeStatus::Ok)
      out.append(pending_, pos, d.length);
    else
      unicode::append_utf8(out, unicode::kReplacement);
    pos += d.length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out = unicode::sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

bool Tokenizer::special_token_bytes(int32_t id, bool special, std::string& out) const {
  const std::string& text = tokens_[static_cast<size_t>(id)];
  switch (types_[static_cast<size_t>(id)]) {
    case TokenType::UserDefined:
      out = text;
      return true;
    case TokenType::Control:
    case TokenType::Unknown:
    case TokenType::Unused:
      out = special ? text : std::string();
      return true;
    default:
      return false;
  }
}

}  // namespace tova
