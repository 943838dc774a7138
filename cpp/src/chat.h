// Chat: the built-in prompt formats of the supported model families (ChatML as SmolLM2 and Qwen
// use it, Gemma's turns, Llama 3's headers), recognized from the GGUF's tokenizer.chat_template or,
// when a file has none, from its special tokens. The conversation kept in the engine's sequence
// (ChatFeed, ChatSession) is in chat_session.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine.h"

namespace tova {

enum class ChatFamily { ChatML, Gemma, Llama3 };

const char* chat_family_name(ChatFamily f);  // "chatml", "gemma", "llama3"
// ArgumentError naming the known families when `name` is none of them.
ChatFamily parse_chat_family(const std::string& name);

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// Everything needed to turn messages into prompt text the way the model's own template does.
struct ChatFormat {
  ChatFamily family = ChatFamily::ChatML;
  std::string bos;             // BOS token text the template starts with (Gemma, Llama 3); "" for ChatML
  std::string default_system;  // ChatML: the system turn the template adds when there is none
};

// The built-in family a template text is written for, or nullopt when it is none of them.
std::optional<ChatFamily> chat_family_from_template(const std::string& tmpl);
// The literal system prompt a ChatML template inserts when the conversation has none ("" if the
// template has no such default), e.g. SmolLM2's "You are a helpful AI assistant named SmolLM...".
std::string chatml_default_system(const std::string& tmpl);
// The family whose turn-marking tokens are in the vocabulary, or nullopt.
std::optional<ChatFamily> chat_family_from_vocab(const Tokenizer& tok);

struct ChatFormatChoice {
  ChatFormat format;
  bool recognized = true;  // false: neither the template nor the vocabulary said; a guess
  std::string source;      // "template", "vocabulary", "--chat-format", or "fallback"
};

// The format for `model`: `forced` (a family name; "" = none) wins, then the file's
// tokenizer.chat_template, then the special tokens of the vocabulary, else ChatML (recognized =
// false, so that callers can warn).
ChatFormatChoice choose_chat_format(const Model& model, const std::string& forced);

// The prompt text for a conversation, equal to what the family's Hugging Face template renders
// (jinja's `trim` is done on ASCII and Unicode whitespace as Python's str.strip does).
// ArgumentError for a conversation the template would reject (Gemma: roles not alternating).
std::string render_chat(const ChatFormat& format, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt);

}  // namespace tova
