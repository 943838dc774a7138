#include "chat_session.h"

#include <algorithm>

#include "common.h"

namespace tova {

int64_t common_prefix_tokens(const Tokenizer& tok, const std::string& a, const std::string& b) {
  size_t k = 0;
  while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
  while (k > 0 && k < a.size() && (static_cast<unsigned char>(a[k]) & 0xc0) == 0x80) --k;  // whole characters
  return static_cast<int64_t>(tok.encode_chat(std::string_view(a).substr(0, k), false).size());
}

bool check_system_pin(const EngineParams& params, int64_t n) {
  if (params.full()) return false;  // nothing is ever evicted: nothing to pin
  const int64_t kv = params.kv_size;
  const int64_t guarded = std::max<int64_t>(n, params.sink());
  if (guarded * 2 > kv)
    throw ArgumentError(cat("keep_system: the system prompt takes ", n, " tokens; pinning it needs kv_size >= ",
                            guarded * 2, " (got ", kv, ")"));
  return n > 0;
}

// ---- ChatFeed -----------------------------------------------------------------------------------

void ChatFeed::forget() {
  engine_.set_kept(0, false);
  fed_.clear();
  fed_n_past_ = -1;
  fed_tail_.clear();
}

void ChatFeed::reset() {
  forget();
  pending_ = nullptr;
  pinned_ = 0;
  turns_at_reset_ = counters_.turns;
  engine_.reset();
}

std::vector<int32_t> ChatFeed::tail() const {
  std::vector<int32_t> h = engine_.history();
  if (h.size() > kTail) h.erase(h.begin(), h.end() - static_cast<std::ptrdiff_t>(kTail));
  return h;
}

// True when the sequence holds what fed_ says and `rendered` extends it by whole characters.
bool ChatFeed::holds_prefix_of(const std::string& rendered) const {
  if (fed_n_past_ <= 0 || engine_.epoch() != fed_epoch_ || engine_.n_past() != fed_n_past_) return false;
  if (rendered.size() <= fed_.size() || rendered.compare(0, fed_.size(), fed_) != 0) return false;
  // A cut inside a UTF-8 character (the reply's last evaluated token ended mid-character):
  // the suffix cannot be tokenized on its own.
  if ((static_cast<unsigned char>(rendered[fed_.size()]) & 0xc0) == 0x80) return false;
  return tail() == fed_tail_;
}

std::unique_ptr<Generation> ChatFeed::start_reply(const std::string& rendered_prompt, const SystemPinProbes* pin,
                                                  const GenerateParams& params) {
  if (rendered_prompt.empty())
    throw ArgumentError("the chat template rendered the conversation as empty text: nothing to answer "
                        "(check the template, chat_template)");
  params.validate();
  if (pending_ != nullptr) {  // the previous reply was abandoned: what the sequence holds is unknown
    pending_ = nullptr;
    forget();
  }
  // From the check of what the sequence holds until the reply's request has it, no request for
  // "any sequence" may take it.
  struct Hold {
    Engine& e;
    explicit Hold(Engine& en) : e(en) { e.set_held(0, true); }
    ~Hold() { e.set_held(0, false); }
  } hold(engine_);
  const Tokenizer& tok = engine_.model().tokenizer();
  std::vector<int32_t> ids;
  if (holds_prefix_of(rendered_prompt))
    ids = tok.encode_chat(std::string_view(rendered_prompt).substr(fed_.size()), false);
  if (ids.empty()) {
    int64_t n_pin = 0;
    if (pin != nullptr) {  // checked before anything changes, so an error leaves the sequence as it was
      const int64_t n = common_prefix_tokens(tok, pin->a, pin->b);
      if (check_system_pin(engine_.params(), n)) n_pin = n;
    }
    if (counters_.turns > turns_at_reset_) counters_.full_refeeds++;
    forget();
    pinned_ = 0;
    engine_.reset();
    if (n_pin > 0) {
      engine_.set_protect_below(n_pin);
      pinned_ = n_pin;
    }
    ids = tok.encode_chat(rendered_prompt, false);
  }
  std::unique_ptr<Generation> gen;
  // What the sequence holds once the prompt is read: a reply cancelled while it was read (Ctrl-C
  // in a terminal) has less, and the next turn then reads the conversation again.
  const int64_t n_past_after_prompt = engine_.n_past() + static_cast<int64_t>(ids.size());
  try {
    gen = std::make_unique<Generation>(engine_, ids, params);
  } catch (...) {
    if (engine_.n_past() != fed_n_past_) forget();  // the prompt was (partly) read, or a failed step reset it
    throw;
  }
  forget();  // until the reply is recorded, the sequence is in flux
  counters_.turns++;
  counters_.fed_tokens += static_cast<int64_t>(ids.size());
  counters_.last_fed_tokens = static_cast<int64_t>(ids.size());
  pending_ = gen.get();
  pending_prompt_ = rendered_prompt;
  pending_n_past_ = n_past_after_prompt;
  return gen;
}

bool ChatFeed::finish_reply(Generation& gen) {
  if (pending_ == nullptr || pending_ != &gen) return false;
  pending_ = nullptr;
  if (!gen.finished()) {
    gen.cancel();
    try {
      while (!gen.finished()) gen.next();  // the cancelled request leaves the sequence
    } catch (...) {
      forget();
      throw;
    }
  }
  const std::string prompt = std::move(pending_prompt_);
  pending_prompt_.clear();
  const std::vector<int32_t> t = gen.tokens();
  const size_t n_eval = t.empty() ? 0 : t.size() - 1;
  if (engine_.n_past() != pending_n_past_ + static_cast<int64_t>(n_eval)) {
    forget();  // the prompt was not read whole (cancelled), or the sequence was reset (a failed
               // step): the next turn reads it all
    return true;
  }
  const std::vector<int32_t> evaluated(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(n_eval));
  // Special tokens as text: a control token the model emitted mid-reply is not in the reply's
  // text, so the next rendering will not match and the conversation is re-read.
  fed_ = prompt + engine_.model().tokenizer().decode(evaluated, true);
  fed_n_past_ = engine_.n_past();
  fed_epoch_ = engine_.epoch();
  fed_tail_ = tail();
  engine_.set_kept(0, true);
  return true;
}

// ---- ChatSession --------------------------------------------------------------------------------

ChatSession::ChatSession(Engine& engine, ChatFormat format, bool keep_system)
    : feed_(engine), format_(std::move(format)), keep_system_(keep_system) {}

std::vector<ChatMessage> ChatSession::marked(std::vector<ChatMessage> msgs) const {
  const Tokenizer& tok = feed_.engine().model().tokenizer();
  for (ChatMessage& m : msgs) m.content = tok.mark_literal(m.content);
  return msgs;
}

SystemPinProbes ChatSession::pin_probes() const {
  SystemPinProbes probes;
  probes.a = render_chat(format_, marked({{"system", system_}, {"user", "a"}}), false);
  probes.b = render_chat(format_, marked({{"system", system_}, {"user", "b"}}), false);
  return probes;
}

void ChatSession::check_pin() const {
  if (!pins()) return;
  const SystemPinProbes probes = pin_probes();
  check_system_pin(feed_.engine().params(), common_prefix_tokens(feed_.engine().model().tokenizer(), probes.a, probes.b));
}

std::vector<ChatMessage> ChatSession::messages() const {
  std::vector<ChatMessage> out;
  out.reserve(turns_.size() + 1);
  if (!system_.empty()) out.push_back({"system", system_});
  out.insert(out.end(), turns_.begin(), turns_.end());
  return out;
}

void ChatSession::reset() {
  turns_.clear();
  in_reply_ = false;
  feed_.reset();
}

std::unique_ptr<Generation> ChatSession::start_reply(const std::string& user_text, const GenerateParams& params) {
  if (in_reply_) throw ArgumentError("start_reply: the previous reply was not finished (finish_reply)");
  std::vector<ChatMessage> msgs = messages();
  msgs.push_back({"user", user_text});
  const std::string rendered = render_chat(format_, marked(std::move(msgs)), true);
  const bool pin = pins();
  const SystemPinProbes probes = pin ? pin_probes() : SystemPinProbes{};
  std::unique_ptr<Generation> gen = feed_.start_reply(rendered, pin ? &probes : nullptr, params);
  turns_.push_back({"user", user_text});
  in_reply_ = true;
  return gen;
}

bool ChatSession::finish_reply(Generation& gen, const std::string& text) {
  if (!in_reply_) throw ArgumentError("finish_reply: no reply in progress (start_reply)");
  if (!feed_.finish_reply(gen)) throw ArgumentError("finish_reply: generation is not this session's reply in progress");
  in_reply_ = false;
  if (gen.finish_reason() == FinishReason::Cancelled && gen.tokens().empty()) {
    turns_.pop_back();  // (its user message: stopped before the reply began)
    return false;
  }
  turns_.push_back({"assistant", text});
  return true;
}

}  // namespace tova
