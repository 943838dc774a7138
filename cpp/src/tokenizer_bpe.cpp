#include "tokenizer_bpe.h"

#include <algorithm>

#include "common.h"
#include "unicode.h"

namespace tova {

// ---------------------------------------------------------------------------------- pre-tokenizers

namespace {

struct PreName {
  const char* name;
  PreTokenizer kind;
};
// llama.cpp's names for the same patterns.
constexpr PreName kPreNames[] = {
    {"default", PreTokenizer::Default},   {"gpt2", PreTokenizer::Gpt2},
    {"gpt-2", PreTokenizer::Gpt2},        {"smollm", PreTokenizer::Smollm},
    {"starcoder", PreTokenizer::Smollm},  {"refact", PreTokenizer::Smollm},
    {"codeshell", PreTokenizer::Smollm},  {"qwen2", PreTokenizer::Qwen2},
    {"deepseek-r1-qwen", PreTokenizer::Qwen2}, {"llama3", PreTokenizer::Llama3},
    {"llama-v3", PreTokenizer::Llama3},   {"llama-bpe", PreTokenizer::Llama3},
};

using Range = std::pair<size_t, size_t>;

// Code points and their class flags, the matchers' input.
struct Text {
  const uint32_t* cp;
  const uint8_t* fl;
};

inline bool is_l(uint8_t f) { return (f & unicode::kCategoryMask) == unicode::kLetter; }
inline bool is_n(uint8_t f) { return (f & unicode::kCategoryMask) == unicode::kNumber; }
inline bool is_w(uint8_t f) { return (f & unicode::kWhitespaceBit) != 0; }
// [^\s\p{L}\p{N}]
inline bool is_other(uint8_t f) { return !is_w(f) && !is_l(f) && !is_n(f); }
inline bool is_newline(uint32_t c) { return c == '\r' || c == '\n'; }

template <class Pred>
size_t run(const Text& t, size_t i, size_t e, Pred pred) {
  while (i < e && pred(t.fl[i])) ++i;
  return i;
}

// A matcher returns the end of its pattern's match at i (i < e), or i when it does not match
// there. Fragments are matched in isolation: lookahead stops at e, as it does in llama.cpp and
// in the HF pre-tokenizer pipelines.

// 's|'t|'re|'ve|'m|'ll|'d, optionally ASCII case-insensitive.
size_t match_contraction(const Text& t, size_t i, size_t e, bool fold) {
  if (t.cp[i] != '\'' || i + 1 >= e) return i;
  const auto low = [&](size_t k) {
    const uint32_t c = t.cp[k];
    return fold && c >= 'A' && c <= 'Z' ? c + 32 : c;
  };
  const uint32_t a = low(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 < e) {
    const uint32_t b = low(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  }
  return i;
}

// \s+(?!\S)|\s+ at whitespace i: the run, less its last character when that one is followed
// by a non-space (it goes with the next word), unless the run is that single character.
size_t match_space_tail(const Text& t, size_t i, size_t e) {
  const size_t j = run(t, i + 1, e, is_w);
  if (j == e || j - 1 == i) return j;
  return j - 1;
}

size_t match_gpt2(const Text& t, size_t i, size_t e) {
  const size_t m = match_contraction(t, i, e, false);
  if (m > i) return m;
  const uint8_t f = t.fl[i];
  const bool space = t.cp[i] == ' ' && i + 1 < e;
  const uint8_t g = space ? t.fl[i + 1] : 0;
  if (is_l(f)) return run(t, i + 1, e, is_l);  //  ?\p{L}+
  if (space && is_l(g)) return run(t, i + 2, e, is_l);
  if (is_n(f)) return run(t, i + 1, e, is_n);  //  ?\p{N}+
  if (space && is_n(g)) return run(t, i + 2, e, is_n);
  if (is_other(f)) return run(t, i + 1, e, is_other);  //  ?[^\s\p{L}\p{N}]+
  if (space && is_other(g)) return run(t, i + 2, e, is_other);
  return match_space_tail(t, i, e);
}

size_t match_llama3_family(const Text& t, size_t i, size_t e, size_t max_digits) {
  const size_t m = match_contraction(t, i, e, true);
  if (m > i) return m;
  const uint8_t f = t.fl[i];
  const uint32_t c = t.cp[i];
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (is_l(f)) return run(t, i + 1, e, is_l);
  if (!is_newline(c) && !is_n(f) && i + 1 < e && is_l(t.fl[i + 1]))
    return run(t, i + 2, e, is_l);
  // \p{N}{1,max_digits}
  if (is_n(f)) {
    size_t j = i + 1;
    while (j < e && j - i < max_digits && is_n(t.fl[j])) ++j;
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t k = (c == ' ' && i + 1 < e && is_other(t.fl[i + 1])) ? i + 1 : i;
  if (is_other(t.fl[k])) {
    size_t j = run(t, k + 1, e, is_other);
    while (j < e && is_newline(t.cp[j])) ++j;
    return j;
  }
  // i is whitespace. \s*[\r\n]+: the run up to and including its last newline.
  const size_t j = run(t, i + 1, e, is_w);
  for (size_t p = j; p-- > i;)
    if (is_newline(t.cp[p])) return p + 1;
  return match_space_tail(t, i, e);  // \s+(?!\S)|\s+
}

size_t match_qwen2(const Text& t, size_t i, size_t e) { return match_llama3_family(t, i, e, 1); }
size_t match_llama3(const Text& t, size_t i, size_t e) { return match_llama3_family(t, i, e, 3); }

size_t match_single_number(const Text& t, size_t i, size_t e) { return is_n(t.fl[i]) ? i + 1 : i; }
size_t match_numbers(const Text& t, size_t i, size_t e) { return run(t, i, e, is_n); }

// [\p{P}\$\+<=>\^~\|]+
size_t match_punct_run(const Text& t, size_t i, size_t e) {
  const auto punct = [&](size_t k) {
    const uint32_t c = t.cp[k];
    return (t.fl[k] & unicode::kCategoryMask) == unicode::kPunctuation || c == '$' ||
           c == '+' || c == '<' || c == '=' || c == '>' || c == '^' || c == '~' || c == '|';
  };
  while (i < e && punct(i)) ++i;
  return i;
}

// [0-9][0-9][0-9]
size_t match_three_digits(const Text& t, size_t i, size_t e) {
  if (i + 3 > e) return i;
  for (size_t k = i; k < i + 3; ++k)
    if (t.cp[k] < '0' || t.cp[k] > '9') return i;
  return i + 3;
}

using Matcher = size_t (*)(const Text&, size_t, size_t);

// One regex pass over every current word: matches become words, and so does each stretch of
// text between matches (as llama.cpp's regex split does).
std::vector<Range> split_stage(const Text& t, const std::vector<Range>& words, Matcher match) {
  std::vector<Range> out;
  out.reserve(words.size() * 2);
  for (const auto& [b, e] : words) {
    size_t gap = b;
    for (size_t i = b; i < e;) {
      const size_t m = match(t, i, e);
      if (m > i) {
        if (gap < i) out.emplace_back(gap, i);
        out.emplace_back(i, m);
        i = gap = m;
      } else {
        ++i;
      }
    }
    if (gap < e) out.emplace_back(gap, e);
  }
  return out;
}

// GPT-2's byte -> printable character table: printable Latin-1 bytes stand for themselves, the
// others take code points from U+0100 on, in byte order.
std::array<uint32_t, 256> gpt2_byte_chars() {
  std::array<uint32_t, 256> table{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[b] = printable ? b : next++;
  }
  return table;
}

}  // namespace

bool parse_pre_tokenizer(std::string_view name, PreTokenizer* kind) {
  for (const PreName& p : kPreNames) {
    if (name == p.name) {
      *kind = p.kind;
      return true;
    }
  }
  return false;
}

std::vector<std::string> bpe_pre_tokenizer_names() {
  std::vector<std::string> out;
  for (const PreName& p : kPreNames) out.emplace_back(p.name);
  return out;
}

std::vector<Range> pre_tokenize(PreTokenizer kind, const std::vector<uint32_t>& cps) {
  std::vector<uint8_t> fl(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) fl[i] = unicode::flags(cps[i]);
  const Text t{cps.data(), fl.data()};
  std::vector<Range> words;
  if (!cps.empty()) words.emplace_back(0, cps.size());
  switch (kind) {
    case PreTokenizer::Gpt2:
      return split_stage(t, words, match_gpt2);
    case PreTokenizer::Smollm:
      return split_stage(t, split_stage(t, words, match_single_number), match_gpt2);
    case PreTokenizer::Qwen2:
      return split_stage(t, words, match_qwen2);
    case PreTokenizer::Llama3:
      return split_stage(t, words, match_llama3);
    case PreTokenizer::Default:
      words = split_stage(t, words, match_punct_run);
      words = split_stage(t, words, match_gpt2);
      words = split_stage(t, words, match_numbers);
      return split_stage(t, words, match_three_digits);
  }
  return words;
}

// ---------------------------------------------------------------------------------- BPE model

struct BpeTokenizer::Workspace {
  struct Symbol {
    int32_t id;  // token of the symbol's text, or -1 (a byte whose character is not a token)
    int32_t prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t left, right;
    int32_t left_id, right_id, result;
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::string mapped;
};

BpeTokenizer::BpeTokenizer(TokenizerData data) {
  if (!parse_pre_tokenizer(data.pre, &pre_kind_)) {
    std::string names;
    for (const PreName& p : kPreNames) names += cat(names.empty() ? "" : ", ", p.name);
    throw FormatError(cat(data.source, ": tokenizer.ggml.pre '", data.pre,
                          "' is not a supported pre-tokenizer (supported: ", names, ")"));
  }
  ignore_merges_ = pre_kind_ == PreTokenizer::Llama3;
  std::vector<std::string> merges = std::move(data.merges);
  init_vocab(data);

  const std::array<uint32_t, 256> chars = gpt2_byte_chars();
  char_byte_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    byte_char_[b] = unicode::to_utf8(chars[b]);
    byte_token_[b] = lookup(byte_char_[b]);
    char_byte_[chars[b]] = static_cast<int16_t>(b);
  }

  // A merge's parts and result must be tokens (as Hugging Face's BPE requires when it loads a
  // tokenizer): a merge naming anything else is a malformed file, refused at load.
  merges_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const std::string& m = merges[r];
    const size_t sep = m.find(' ', 1);
    if (sep == std::string::npos)
      throw FormatError(cat(source_, ": tokenizer.ggml.merges[", r, "] = '", m,
                            "' is not two symbols separated by a space"));
    const std::string_view left(m.data(), sep), right(m.data() + sep + 1, m.size() - sep - 1);
    const int32_t a = lookup(left), b = lookup(right);
    const int32_t result = lookup(std::string(left) + std::string(right));
    if (a < 0 || b < 0 || result < 0) {
      const std::string name = a < 0 ? std::string(left) : b < 0 ? std::string(right)
                                                               : std::string(left) + std::string(right);
      throw FormatError(cat(source_, ": tokenizer.ggml.merges[", r, "] = '", m.substr(0, 80),
                            m.size() > 80 ? "...'" : "'", " names '", name.substr(0, 80),
                            "', which is not in the vocabulary (a merge's parts and result must be tokens)"));
    }
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
                         static_cast<uint32_t>(b);
    merges_.try_emplace(key, Merge{static_cast<int32_t>(r), result});
  }
}

std::vector<int32_t> BpeTokenizer::encode_with(std::string_view text, bool add_bos,
                                               bool parse_special, const Spans& literal) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  Workspace ws;
  std::string word;
  for (const Fragment& frag : split_special(text, parse_special, literal)) {
    if (frag.token >= 0) {
      out.push_back(frag.token);
      continue;
    }
    // Invalid UTF-8 becomes U+FFFD here, as in llama.cpp.
    const std::vector<uint32_t> cps =
        unicode::to_code_points(text.substr(frag.begin, frag.end - frag.begin));
    for (const auto& [b, e] : pre_tokenize(pre_kind_, cps)) {
      word.clear();
      for (size_t k = b; k < e; ++k) unicode::append_utf8(word, cps[k]);
      encode_word(word, out, ws);
    }
  }
  return out;
}

void BpeTokenizer::encode_word(std::string_view bytes, std::vector<int32_t>& out,
                               Workspace& ws) const {
  // A byte whose character is not in the vocabulary (SmolLM2 has no token for 0xF1, say) is
  // dropped, as llama.cpp and HF tokenizers drop it.
  const auto emit = [&](int32_t id) {
    if (id >= 0) out.push_back(id);
  };
  if (ignore_merges_) {
    ws.mapped.clear();
    for (char c : bytes) ws.mapped += byte_char_[static_cast<uint8_t>(c)];
    const int32_t id = lookup(ws.mapped);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const int32_t n = static_cast<int32_t>(bytes.size());
  if (n == 1) {
    emit(byte_token_[static_cast<uint8_t>(bytes[0])]);
    return;
  }
  auto& sym = ws.symbols;
  sym.resize(static_cast<size_t>(n));
  for (int32_t k = 0; k < n; ++k)
    sym[k] = {byte_token_[static_cast<uint8_t>(bytes[k])], k - 1, k + 1 < n ? k + 1 : -1, true};

  // Lowest rank first; equal ranks leftmost first.
  const auto later = [](const Workspace::Candidate& a, const Workspace::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };
  auto& heap = ws.heap;
  heap.clear();
  const auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || sym[l].id < 0 || sym[r].id < 0) return;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(sym[l].id)) << 32) |
                         static_cast<uint32_t>(sym[r].id);
    const auto it = merges_.find(key);
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, l, r, sym[l].id, sym[r].id, it->second.result});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t k = 0; k + 1 < n; ++k) consider(k, k + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Workspace::Candidate c = heap.back();
    heap.pop_back();
    auto& l = sym[c.left];
    auto& r = sym[c.right];
    // Stale: one side was merged into something else since this pair was queued.
    if (!l.alive || !r.alive || l.next != c.right || l.id != c.left_id || r.id != c.right_id)
      continue;
    l.id = c.result;
    l.next = r.next;
    r.alive = false;
    if (r.next >= 0) sym[r.next].prev = c.left;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }
  for (int32_t k = 0; k >= 0; k = sym[k].next) emit(sym[k].id);
}

std::string BpeTokenizer::token_bytes(int32_t id, bool special) const {
  check_id(id);
  std::string out;
  if (special_token_bytes(id, special, out)) return out;
  const std::string& text = tokens_[id];
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const unicode::Decoded d = unicode::decode(text, pos);
    if (d.status == unicode::DecodeStatus::Ok && d.cp < char_byte_.size() && char_byte_[d.cp] >= 0)
      out.push_back(static_cast<char>(char_byte_[d.cp]));
    else  // not a byte character: the text stands for itself
      out.append(text, pos, d.length);
    pos += d.length;
  }
  return out;
}

}  // namespace tova
