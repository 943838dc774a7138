#include "chat.h"

#include "common.h"

namespace tova {

namespace {

struct FamilyName {
  ChatFamily family;
  const char* name;
};
constexpr FamilyName kFamilies[] = {
    {ChatFamily::ChatML, "chatml"}, {ChatFamily::Gemma, "gemma"}, {ChatFamily::Llama3, "llama3"}};

// Decodes the code point starting at s[i] (its byte length in *len); invalid bytes count as one
// byte each, so trimming never splits or drops them.
uint32_t code_point_at(const std::string& s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xe ? 3 : (b >> 3) == 0x1e ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return 0xfffd;
  }
  uint32_t cp = n == 1 ? b : b & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xc0) != 0x80) {
      *len = 1;
      return 0xfffd;
    }
    cp = cp << 6 | (c & 0x3f);
  }
  *len = n;
  return cp;
}

// Python's str.isspace(), which jinja's `trim` (str.strip) uses.
bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
         c == 0x202f || c == 0x205f || c == 0x3000;
}

std::string py_strip(const std::string& s) {
  size_t begin = 0, len = 0;
  while (begin < s.size() && is_py_space(code_point_at(s, begin, &len))) begin += len;
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;  // the last code point's first byte
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80 && end - start < 4) --start;
    const uint32_t cp = code_point_at(s, start, &len);
    if (start + len != end || !is_py_space(cp)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// SmolLM2's template (and Qwen's): a system turn of the template's own when the first message
// is not a system message.
std::string render_chatml(const ChatFormat& f, const std::vector<ChatMessage>& msgs, bool add_gen) {
  std::string out;
  if (!msgs.empty() && msgs[0].role != "system" && !f.default_system.empty())
    out += "<|im_start|>system\n" + f.default_system + "<|im_end|>\n";
  for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (add_gen) out += "<|im_start|>assistant\n";
  return out;
}

// Gemma's documented format: <start_of_turn>user / model, turns closed by <end_of_turn>; no
// system role: a system message becomes the start of the first user turn.
std::string render_gemma(const ChatFormat& f, const std::vector<ChatMessage>& msgs, bool add_gen) {
  std::string out = f.bos;
  std::string first_prefix;
  size_t first = 0;
  if (!msgs.empty() && msgs[0].role == "system") {
    first_prefix = msgs[0].content + "\n\n";
    first = 1;
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const bool even = (i - first) % 2 == 0;
    if ((m.role == "user") != even)
      throw ArgumentError(cat("Gemma chat: conversation roles must alternate user/assistant/user/"
                              "assistant/... (message ", i, " is '", m.role, "')"));
    const std::string role = m.role == "assistant" ? "model" : m.role;
    out += "<start_of_turn>" + role + "\n" + (i == first ? first_prefix : std::string()) +
           py_strip(m.content) + "<end_of_turn>\n";
  }
  if (add_gen) out += "<start_of_turn>model\n";
  return out;
}

std::string render_llama3(const ChatFormat& f, const std::vector<ChatMessage>& msgs, bool add_gen) {
  std::string out;
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (i == 0) out += f.bos;
    out += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" + py_strip(msgs[i].content) +
           "<|eot_id|>";
  }
  if (add_gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

const char* chat_family_name(ChatFamily f) {
  for (const auto& e : kFamilies)
    if (e.family == f) return e.name;
  return "?";
}

ChatFamily parse_chat_family(const std::string& name) {
  std::string known;
  for (const auto& e : kFamilies) {
    if (name == e.name) return e.family;
    known += known.empty() ? e.name : cat(", ", e.name);
  }
  throw ArgumentError(cat("unknown chat format '", name, "' (known: ", known, ")"));
}

std::optional<ChatFamily> chat_family_from_template(const std::string& tmpl) {
  if (tmpl.find("<start_of_turn>") != std::string::npos) return ChatFamily::Gemma;
  if (tmpl.find("<|start_header_id|>") != std::string::npos) return ChatFamily::Llama3;
  if (tmpl.find("<|im_start|>") != std::string::npos) return ChatFamily::ChatML;
  return std::nullopt;
}

std::string chatml_default_system(const std::string& tmpl) {
  // A literal string in the template: '<|im_start|>system' + newline (real or escaped) + plain
  // text + '<|im_end|>'. Text holding quotes, braces or '+' is template code, not a literal.
  // One pass whatever the template holds: the next '<|im_end|>' and the next character a literal
  // cannot hold only move forward (a hostile template of many heads and no end took minutes).
  const std::string head = "<|im_start|>system";
  size_t end = 0, bad = 0;
  for (size_t at = tmpl.find(head); at != std::string::npos; at = tmpl.find(head, at + 1)) {
    size_t p = at + head.size();
    if (tmpl.compare(p, 1, "\n") == 0) {
      p += 1;
    } else if (tmpl.compare(p, 2, "\\n") == 0) {
      p += 2;
    } else {
      continue;
    }
    if (end < p) end = tmpl.find("<|im_end|>", p);
    if (end == std::string::npos) break;
    if (bad < p) bad = tmpl.find_first_of("'\"{}+", p);
    if (end == p || bad < end) continue;
    const std::string text = tmpl.substr(p, end - p);
    std::string out;  // undo the jinja string escapes a literal may use
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\\' && i + 1 < text.size()) {
        const char c = text[++i];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
      } else {
        out += text[i];
      }
    }
    return out;
  }
  return "";
}

std::optional<ChatFamily> chat_family_from_vocab(const Tokenizer& tok) {
  if (tok.find_token("<start_of_turn>") >= 0 && tok.find_token("<end_of_turn>") >= 0)
    return ChatFamily::Gemma;
  if (tok.find_token("<|im_start|>") >= 0 && tok.find_token("<|im_end|>") >= 0)
    return ChatFamily::ChatML;
  if (tok.find_token("<|start_header_id|>") >= 0 && tok.find_token("<|eot_id|>") >= 0)
    return ChatFamily::Llama3;
  return std::nullopt;
}

ChatFormatChoice choose_chat_format(const Model& model, const std::string& forced) {
  ChatFormatChoice c;
  const std::string tmpl = model.file().get_string("tokenizer.chat_template", "");
  const Tokenizer& tok = model.tokenizer();
  if (!forced.empty()) {
    c.format.family = parse_chat_family(forced);
    c.source = "--chat-format";
  } else if (auto f = tmpl.empty() ? std::nullopt : chat_family_from_template(tmpl)) {
    c.format.family = *f;
    c.source = "template";
    if (*f == ChatFamily::ChatML) c.format.default_system = chatml_default_system(tmpl);
  } else if (auto v = chat_family_from_vocab(tok)) {
    c.format.family = *v;
    c.source = "vocabulary";
    c.recognized = tmpl.empty();  // a template we cannot read is worth a warning even so
  } else {
    c.format.family = ChatFamily::ChatML;
    c.source = "fallback";
    c.recognized = false;
  }
  if (c.format.family != ChatFamily::ChatML && tok.bos_id() >= 0)
    c.format.bos = tok.token_text(tok.bos_id());
  return c;
}

std::string render_chat(const ChatFormat& format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  switch (format.family) {
    case ChatFamily::ChatML: return render_chatml(format, messages, add_generation_prompt);
    case ChatFamily::Gemma: return render_gemma(format, messages, add_generation_prompt);
    case ChatFamily::Llama3: return render_llama3(format, messages, add_generation_prompt);
  }
  throw Error("render_chat: unknown chat family");
}

}  // namespace tova
