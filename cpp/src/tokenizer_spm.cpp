#include "tokenizer_spm.h"

#include <algorithm>
#include <cstdio>

#include "common.h"
#include "unicode.h"

namespace tova {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte a "<0xNN>" token stands for, or -1.
int parse_byte_token(const std::string& text) {
  if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>') return -1;
  const int hi = hex_digit(text[3]), lo = hex_digit(text[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

struct SpmTokenizer::Workspace {
  struct Symbol {
    uint32_t begin, len;  // bytes of the escaped text; len 0: merged into its left neighbour
    int32_t prev, next;
  };
  struct Candidate {
    float score;
    int32_t left, right;
    uint32_t size;  // bytes of the pair when queued; a different sum later means it is stale
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::string escaped;
};

SpmTokenizer::SpmTokenizer(TokenizerData data) {
  add_space_prefix_ = data.add_space_prefix;
  scores_ = std::move(data.scores);
  init_vocab(data);
  if (!scores_.empty() && scores_.size() != tokens_.size())
    throw FormatError(cat(source_, ": tokenizer.ggml.scores has ", scores_.size(),
                          " entries, expected ", tokens_.size(), " (one per token)"));
  byte_token_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_token_[b] = lookup(name);
  }
}

std::vector<int32_t> SpmTokenizer::encode_with(std::string_view text, bool add_bos,
                                               bool parse_special, const Spans& literal) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  Workspace ws;
  bool after_special = true;  // the start of the text counts as following a special token
  for (const Fragment& frag : split_special(text, parse_special, literal)) {
    if (frag.token >= 0) {
      out.push_back(frag.token);
      after_special = true;
      continue;
    }
    // Invalid UTF-8 becomes U+FFFD, as in the BPE tokenizer. (llama.cpp would cut characters
    // by lead byte alone and could swallow the next character's bytes into a broken one.)
    const std::string valid =
        unicode::sanitize_utf8(text.substr(frag.begin, frag.end - frag.begin));
    std::string& s = ws.escaped;
    s.clear();
    if (add_space_prefix_ && after_special) s += kSpace;
    for (char c : valid) {
      if (c == ' ')
        s += kSpace;
      else
        s += c;
    }
    encode_text(s, out, ws);
    after_special = false;
  }
  return out;
}

void SpmTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out,
                               Workspace& ws) const {
  auto& sym = ws.symbols;
  sym.clear();
  // Characters cut by their lead byte alone, as llama.cpp does (the text is valid UTF-8 here).
  for (size_t pos = 0; pos < text.size();) {
    const size_t len =
        std::min(unicode::sequence_length(static_cast<uint8_t>(text[pos])), text.size() - pos);
    const int32_t k = static_cast<int32_t>(sym.size());
    sym.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), k - 1, k + 1});
    pos += len;
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  // Highest score first; equal scores leftmost first.
  const auto later = [](const Workspace::Candidate& a, const Workspace::Candidate& b) {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  auto& heap = ws.heap;
  heap.clear();
  const auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const uint32_t size = sym[l].len + sym[r].len;
    const int32_t id = lookup(text.substr(sym[l].begin, size));
    if (id < 0) return;
    heap.push_back({score(id), l, r, size});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (size_t k = 1; k < sym.size(); ++k)
    consider(static_cast<int32_t>(k - 1), static_cast<int32_t>(k));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Workspace::Candidate c = heap.back();
    heap.pop_back();
    auto& l = sym[c.left];
    auto& r = sym[c.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != c.size) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }

  for (int32_t k = 0; k >= 0; k = sym[k].next) {
    const std::string_view piece = text.substr(sym[k].begin, sym[k].len);
    const int32_t id = lookup(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    // Only unmerged single characters get here (a merge always makes a token).
    for (char c : piece) {
      int32_t b = byte_token_[static_cast<uint8_t>(c)];
      if (b < 0) b = lookup(std::string_view(&c, 1));
      if (b < 0) b = unk_id_;
      if (b >= 0) out.push_back(b);
    }
  }
}

std::string SpmTokenizer::token_bytes(int32_t id, bool special) const {
  check_id(id);
  std::string out;
  if (special_token_bytes(id, special, out)) return out;
  const std::string& text = tokens_[id];
  if (types_[id] == TokenType::Byte) {
    const int b = parse_byte_token(text);
    return b < 0 ? text : std::string(1, static_cast<char>(b));
  }
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, kSpace.size(), kSpace) == 0) {
      out += ' ';
      pos += kSpace.size();
    } else {
      out += text[pos++];
    }
  }
  return out;
}

}  // namespace tova
