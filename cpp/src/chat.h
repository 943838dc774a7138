// Chat: the built-in prompt formats of the supported model families (ChatML as SmolLM2 and Qwen
// use it, Gemma's turns, Llama 3's headers), recognized from the GGUF's tokenizer.chat_template or,
// when a file has none, from its special tokens; and ChatSession, a conversation kept in the
// engine's fixed-memory sequence that evaluates only each turn's new tokens.
#pragma once

#include <cstdint>
#include <memory>
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

// Counters of a ChatSession, for /stats and the tests.
struct ChatCounters {
  int64_t turns = 0;         // replies started
  int64_t fed_tokens = 0;    // prompt tokens evaluated over all turns (only what was new)
  int64_t last_fed_tokens = 0;
  int64_t full_refeeds = 0;  // turns whose rendering did not extend what the sequence held: reset + re-read
};

// A conversation held in the engine's one sequence. Each turn renders the whole conversation and
// evaluates only the text past what the sequence already holds (a string-level prefix check);
// when the rendering does not start with it (a changed system prompt, a template that rewrites
// earlier turns, someone else using the engine), the sequence is reset and re-read, and counted.
// The engine's fixed KV store evicts as the conversation grows, so it never runs out of memory.
class ChatSession {
 public:
  // keep_system: pin the system prompt's positions (Engine::set_protect_below) so the policy
  // never evicts them; ArgumentError later if the pinned tokens would leave the policy too little room.
  ChatSession(Engine& engine, ChatFormat format, bool keep_system = false);

  const ChatFormat& format() const { return format_; }
  // Sets the system prompt ("" removes it). It takes effect on the next turn (which re-reads
  // the conversation, since its start changed).
  void set_system(std::string text) { system_ = std::move(text); }
  const std::string& system() const { return system_; }
  // The conversation: the system message (when set) followed by the turns.
  std::vector<ChatMessage> messages() const;
  int64_t n_turn_messages() const { return static_cast<int64_t>(turns_.size()); }
  // Forgets the turns (keeps the system prompt) and empties the engine's sequence.
  void reset();

  // Adds the user's message and starts the reply: the returned Generation has evaluated the new
  // prompt tokens; call next() until finished(), then finish_reply().
  std::unique_ptr<Generation> start_reply(const std::string& user_text, const GenerateParams& params);
  // Records the reply (the text next() returned, also when cancelled) as the assistant's message.
  void finish_reply(const Generation& gen, const std::string& text);

  const ChatCounters& counters() const { return counters_; }
  int64_t pinned_tokens() const { return pinned_; }

 private:
  std::vector<int32_t> tokens_to_feed(const std::string& rendered);
  int64_t system_prefix_tokens() const;

  Engine& engine_;
  ChatFormat format_;
  bool keep_system_;
  std::string system_;
  std::vector<ChatMessage> turns_;
  ChatCounters counters_;
  std::string fed_;            // the text the engine's sequence holds (special tokens as text)
  int64_t fed_n_past_ = -1;    // engine.n_past() when fed_ was recorded; -1 = nothing fed
  std::string pending_prompt_; // the rendered prompt of the reply in progress
  int64_t pending_n_past_ = -1;  // n_past after that prompt was evaluated
  bool in_reply_ = false;
  int64_t pinned_ = 0;
};

}  // namespace tova
