// The multi-turn conversation held in the engine's sequence 0, one implementation for every face:
// ChatFeed takes prompts already rendered (the CLI renders with the built-in renderers of chat.h,
// Python with the model's own jinja template) from messages whose text is marked
// (Tokenizer::mark_literal: a message spelling "<|im_end|>" is read as text, not as that
// token), and decides what to evaluate, pins the system
// prompt, starts the reply and records what the sequence holds afterwards. ChatSession is the
// CLI's conversation: it keeps the messages, renders them with render_chat and calls ChatFeed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chat.h"
#include "engine.h"

namespace tova {

// Counters of a conversation, for /stats, Python's tova.chat.counters and the tests.
struct ChatCounters {
  int64_t turns = 0;         // replies started
  int64_t fed_tokens = 0;    // prompt tokens evaluated over all turns (only what was new)
  int64_t last_fed_tokens = 0;
  int64_t full_refeeds = 0;  // turns after the first (since a reset) that re-read the whole conversation:
                             // its rendering did not extend what the sequence held, or a cancelled
                             // prompt left it unknown
};

// What to pin: two renderings of the conversation's start (system prompt + first user message,
// no generation prompt) that differ only in the user's text. The text they share at the start is
// the system prompt with what the template wraps around it; its tokens are pinned.
struct SystemPinProbes {
  std::string a, b;
};

// Tokens of the common start of two renderings (Tokenizer::encode_chat, no BOS added).
int64_t common_prefix_tokens(const Tokenizer& tok, const std::string& a, const std::string& b);

// The one pinning rule: pinning `n` tokens with `params` needs max(n, sink) * 2 <= kv_size (a
// policy may protect up to half of the store itself, h2o's recent window: leave it that); the
// full policy never evicts, so nothing is pinned (returns false). ArgumentError naming kv_size
// when the store is too small.
bool check_system_pin(const EngineParams& params, int64_t n);

// Evaluates, turn after turn, only what a rendered prompt adds to what the sequence holds.
//
// Each turn's prompt is the whole conversation rendered. When it extends the text the sequence
// holds (a string-level prefix check) and nobody else used the sequence since (its n_past and
// latest tokens are as this feed left them), only the suffix's tokens are evaluated. Otherwise
// (a changed system prompt, an edited history, a template that rewrites earlier turns, the
// engine used for something else) the sequence is reset and the prompt read in full, counted in
// full_refeeds; the system prompt is pinned then when probes are given. The engine's fixed KV
// store evicts as the conversation grows, so it never runs out of memory.
class ChatFeed {
 public:
  explicit ChatFeed(Engine& engine) : engine_(engine) {}
  ChatFeed(const ChatFeed&) = delete;
  ChatFeed& operator=(const ChatFeed&) = delete;

  Engine& engine() const { return engine_; }

  // Starts the reply to `rendered_prompt` (the conversation with the generation prompt): the
  // returned Generation has evaluated the prompt's new tokens; call next() until finished(),
  // then finish_reply(). `pin` (may be null): pin the system prompt when the sequence is re-read
  // (ArgumentError naming kv_size when the store is too small for it; nothing changes then).
  // A reply started before and never finished is abandoned: this turn reads it all again.
  std::unique_ptr<Generation> start_reply(const std::string& rendered_prompt, const SystemPinProbes* pin,
                                          const GenerateParams& params);
  // Ends the reply `gen` (one still running is cancelled and run until its request is done)
  // and records what the sequence holds: the prompt and every generated token but the last,
  // which a finished generation never evaluates. Also after a cancelled or failed reply. False
  // (nothing done) when `gen` is not the reply in progress.
  bool finish_reply(Generation& gen);
  bool in_reply() const { return pending_ != nullptr; }

  // Forgets what the sequence holds and empties it (the counters stay).
  void reset();

  const ChatCounters& counters() const { return counters_; }
  // Tokens pinned at the sequence's start (0: none).
  int64_t pinned_tokens() const { return pinned_; }

  // Latest tokens compared to notice that the sequence changed under the feed.
  static constexpr size_t kTail = 16;

 private:
  void forget();
  bool holds_prefix_of(const std::string& rendered) const;
  std::vector<int32_t> tail() const;

  Engine& engine_;
  ChatCounters counters_;
  std::string fed_;               // the text the sequence holds (special tokens as text; marks kept)
  int64_t fed_n_past_ = -1;       // engine.n_past() when fed_ was recorded; -1 = nothing known
  uint64_t fed_epoch_ = 0;        // engine.epoch() then (a clear since means someone else used it)
  std::vector<int32_t> fed_tail_; // the sequence's latest tokens then
  const Generation* pending_ = nullptr;  // the reply in progress
  std::string pending_prompt_;    // its rendered prompt
  int64_t pending_n_past_ = -1;   // n_past after that prompt was evaluated
  int64_t pinned_ = 0;
  int64_t turns_at_reset_ = 0;    // counters_.turns at the last reset (the next turn reads all)
};

// The CLI's conversation: the system prompt and the turns, rendered with the built-in renderer
// of a family and fed through a ChatFeed.
class ChatSession {
 public:
  // keep_system: pin the system prompt's positions (Engine::set_protect_below) so the policy
  // never evicts them; ArgumentError at a turn if the pinned tokens would leave the policy too
  // little room (see check_system_pin).
  ChatSession(Engine& engine, ChatFormat format, bool keep_system = false);

  const ChatFormat& format() const { return format_; }
  // Sets the system prompt ("" removes it). It takes effect on the next turn (which re-reads
  // the conversation, since its start changed).
  void set_system(std::string text) { system_ = std::move(text); }
  const std::string& system() const { return system_; }
  // With keep_system and a system prompt: the ArgumentError its next turn would raise if the
  // store cannot pin it (check_system_pin), raised now.
  void check_pin() const;
  // The conversation: the system message (when set) followed by the turns.
  std::vector<ChatMessage> messages() const;
  int64_t n_turn_messages() const { return static_cast<int64_t>(turns_.size()); }
  // Forgets the turns (keeps the system prompt) and empties the engine's sequence.
  void reset();

  // Adds the user's message and starts the reply (see ChatFeed::start_reply).
  std::unique_ptr<Generation> start_reply(const std::string& user_text, const GenerateParams& params);
  // Records the reply (the text next() returned, also when cancelled) as the assistant's message;
  // a reply cancelled before its first token (Ctrl-C while the message was read) drops the
  // user's message instead (returns false then).
  bool finish_reply(Generation& gen, const std::string& text);

  const ChatCounters& counters() const { return feed_.counters(); }
  int64_t pinned_tokens() const { return feed_.pinned_tokens(); }

 private:
  bool pins() const { return keep_system_ && !system_.empty(); }
  SystemPinProbes pin_probes() const;
  // The messages with their text marked (Tokenizer::mark_literal): what they spell is text.
  std::vector<ChatMessage> marked(std::vector<ChatMessage> msgs) const;

  ChatFeed feed_;
  ChatFormat format_;
  bool keep_system_;
  std::string system_;
  std::vector<ChatMessage> turns_;
  bool in_reply_ = false;
};

}  // namespace tova
