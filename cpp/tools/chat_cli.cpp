// `tova chat`: reads messages (with line editing when stdin is a terminal, one per line when it is
// piped), streams the replies, and keeps the conversation in the engine's fixed KV store.
#include "chat_cli.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "chat.h"
#include "chat_session.h"
#include "cli_args.h"
#include "common.h"
#include "engine.h"
#include "cli_io.h"
#include "line_editor.h"

namespace tova {

namespace {

const char* kChatUsage = R"(usage: tova chat -m MODEL [options]

Chat with a local model; the conversation lives in a fixed-memory KV store (the policy evicts as
it grows, so memory never grows). With stdin piped, each input line is one message and the
replies are printed plainly (--json: one JSON object per reply). Piped, a line that starts with
'/' but names no command below is sent as a message; Ctrl-C (SIGINT) ends the program with exit
status 130 after the reply so far is printed.

--json: stdout carries only the replies' JSON lines; what commands print (/stats, /help,
/system) goes to stderr, as do notes.

exit status: 0 at the end of input or /quit; 1 a runtime error (a message that does not fit a
full context, a write error); 2 a bad option; 130 Ctrl-C while piped.

options:
  -m, --model MODEL          model path or registry name
      --system TEXT          system prompt
      --keep-system          pin the system prompt: its tokens are never evicted
      --chat-format NAME     chatml, gemma or llama3 (default: from the model's template)
  -n, --max-tokens N         most tokens per reply (default 512; -1: no limit)
      --json                 print one JSON object per reply
  -t, --threads N            compute threads (default: all cores)
      --temp T               temperature (default 0.8; 0 = greedy)
      --top-k K, --top-p P, --min-p P, --repeat-penalty R, --seed S
      --kv-size N            tokens kept per layer (default 512, or the model's context
                             when shorter)
      --policy P             tova (default), h2o, sink, window, full, tova_ema
      --n-sink N, --kv-type T, --kv-type-k T, --kv-type-v T, --kv-lo-type T, --kv-hi-size N,
      --ctx N, --chunk N, --prefill MODE, --positions MODE,
      --policy-plugin LIB, --policy-args TEXT     as for `tova run`
)";

const char* kCommandHelp = R"(commands:
  /reset          start a new conversation (the system prompt stays)
  /stats          KV occupancy per layer, tokens so far, evictions, the last reply's speed
  /system [TEXT]  show the system prompt, or set it (applies from the next message)
  /save FILE      write the conversation to a new file FILE as JSON (-: standard output)
  /help           this list
  /quit           leave (Ctrl-D too)
A line ending in \ continues on the next line; //text sends /text as a message. At the terminal
an unknown /command is refused (a typo is not sent); piped, it is sent as a message. Ctrl-C stops
a reply; at the prompt it clears the line.
)";

const std::set<std::string> kValueOpts = {
    "--model", "--system", "--chat-format", "--max-tokens", "--threads", "--temp", "--top-k",
    "--top-p", "--min-p", "--repeat-penalty", "--seed", "--kv-size", "--policy", "--n-sink",
    "--kv-type", "--kv-type-k", "--kv-type-v", "--kv-lo-type", "--kv-hi-size", "--ctx", "--chunk", "--prefill", "--positions", "--policy-plugin", "--policy-args", "--backend", "--device"};
const std::set<std::string> kFlags = {"--json", "--keep-system", "--help", "--no-kv-hadamard", "--float-activations"};
const std::map<std::string, std::string> kAliases = {
    {"-ctk", "--kv-type-k"}, {"-ctv", "--kv-type-v"},
    {"-m", "--model"}, {"-n", "--max-tokens"}, {"--n-predict", "--max-tokens"}, {"-t", "--threads"},
    {"-s", "--seed"}, {"-h", "--help"}};

// Signal handler state: the handler can only reach globals. g_cancel points at the engine's
// cancel flag while a chat runs; g_replying tells whether a reply is being generated;
// g_quit that a piped chat was interrupted (it ends once the reply so far is printed).
std::atomic<std::atomic<bool>*> g_cancel{nullptr};
volatile std::sig_atomic_t g_replying = 0;
volatile std::sig_atomic_t g_interactive = 0;
volatile std::sig_atomic_t g_quit = 0;

void on_sigint(int) {
  if (g_replying) {
    // At the terminal Ctrl-C stops this reply only; a script's SIGINT means the whole program.
    if (!g_interactive) g_quit = 1;
    if (std::atomic<bool>* c = g_cancel.load()) c->store(true);
  } else if (!g_interactive) {
    // Piped and between replies: Ctrl-C ends the program as usual.
    ::signal(SIGINT, SIG_DFL);
    ::raise(SIGINT);
  }
}

// Installs the SIGINT handler for the chat's lifetime.
class SigintGuard {
 public:
  SigintGuard(Engine& engine, bool interactive) {
    g_cancel.store(&engine.cancel_requested);
    g_interactive = interactive ? 1 : 0;
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_);
  }
  ~SigintGuard() {
    ::sigaction(SIGINT, &old_, nullptr);
    g_cancel.store(nullptr);
    g_replying = 0;
  }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  struct sigaction old_ {};
};

struct ReplyingScope {
  ReplyingScope() { g_replying = 1; }
  ~ReplyingScope() { g_replying = 0; }
};

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

GenerateParams generate_params(const CliArgs& a) {
  GenerateParams gp;
  gp.max_tokens = max_tokens_from(a, "--max-tokens", 512, 1);
  SamplingParams& s = gp.sampling;
  s.temperature = static_cast<float>(a.number("--temp", s.temperature));
  s.top_k = a.integer("--top-k", s.top_k);
  s.top_p = static_cast<float>(a.number("--top-p", s.top_p));
  s.min_p = static_cast<float>(a.number("--min-p", s.min_p));
  s.repeat_penalty = static_cast<float>(a.number("--repeat-penalty", s.repeat_penalty));
  s.seed = a.integer64("--seed", s.seed);
  s.validate();
  return gp;
}

class ChatProgram {
 public:
  ChatProgram(Engine& engine, ChatSession& chat, GenerateParams gp, bool json, bool interactive)
      : engine_(engine), chat_(chat), gp_(std::move(gp)), json_(json), interactive_(interactive),
        command_out_(json ? stderr : stdout) {}

  // Runs until end of input or /quit.
  int run(LineEditor& ed);

 private:
  enum class Read { Message, Interrupted, End };
  Read read_message(LineEditor& ed, std::string& msg);
  bool turn(const std::string& msg);  // false: quit
  bool is_command(const std::string& msg) const;
  bool command(const std::string& line);  // false: quit
  void reply(const std::string& msg);
  void print_reply_end(const std::string& text);
  void print_stats();
  void save(const std::string& path);
  void note(const std::string& text);  // a remark for the person at the terminal

  Engine& engine_;
  Stats last_;  // of the last reply
  ChatSession& chat_;
  GenerateParams gp_;
  bool json_, interactive_;
  // What commands print: stdout, but stderr under --json, whose stdout holds JSON lines only.
  FILE* command_out_;
  bool have_reply_ = false;
};

const std::set<std::string> kCommands = {"/quit", "/exit", "/help", "/reset", "/stats", "/system", "/save"};

std::string command_name(const std::string& line) {
  return line.substr(0, line.find_first_of(" \t\n"));
}

void ChatProgram::note(const std::string& text) {
  std::fprintf(stderr, "%s\n", text.c_str());
}

ChatProgram::Read ChatProgram::read_message(LineEditor& ed, std::string& msg) {
  msg.clear();
  std::string prompt = "> ";
  for (;;) {
    std::string line;
    const LineEditor::Result r = ed.read_line(prompt, line);
    if (r == LineEditor::Result::Interrupted) return Read::Interrupted;
    if (r == LineEditor::Result::EndOfInput) return msg.empty() ? Read::End : Read::Message;
    if (!line.empty() && line.back() == '\\') {
      msg += line.substr(0, line.size() - 1) + "\n";
      prompt = "... ";
      continue;
    }
    msg += line;
    return Read::Message;
  }
}

int ChatProgram::run(LineEditor& ed) {
  for (;;) {
    std::string msg;
    const Read r = read_message(ed, msg);
    if (r == Read::End) return 0;
    if (r == Read::Interrupted) continue;
    if (trim(msg).empty()) continue;
    ed.add_history(msg);
    try {
      if (!turn(msg)) return 0;
    } catch (const WriteError&) {
      throw;  // stdout is gone: nothing more can be said there
    } catch (const std::exception& e) {
      // A script should see the failure in the exit status: a runtime one (1), whatever its
      // type, since the command line was fine (2 is for that).
      if (!interactive_) throw Error(e.what());
      std::fflush(stdout);
      std::fprintf(stderr, "tova: error: %s\n", e.what());
    }
    if (g_quit) return 130;  // Ctrl-C during a piped reply
  }
}

// A command, or a message: "//text" sends "/text"; piped, a line that starts with '/' but
// names no command (a path, say) is a message too.
bool ChatProgram::turn(const std::string& msg) {
  if (msg.rfind("//", 0) == 0) {
    reply(msg.substr(1));
    return true;
  }
  if (is_command(msg)) return command(trim(msg));
  reply(msg);
  return true;
}

// At the terminal every /word is a command (a mistyped one is refused, not sent to the model).
bool ChatProgram::is_command(const std::string& msg) const {
  if (msg[0] != '/') return false;
  return interactive_ || kCommands.count(command_name(trim(msg))) > 0;
}

void ChatProgram::reply(const std::string& msg) {
  std::unique_ptr<Generation> gen;
  std::string text;
  {
    ReplyingScope replying;  // Ctrl-C from here on stops the reply instead of the program
    gen = chat_.start_reply(msg, gp_);
    if (g_quit) gen->cancel();  // a SIGINT before the reply's request cleared the cancel flag
    try {
      while (!gen->finished()) {
        const std::string piece = gen->next();
        if (piece.empty()) continue;
        text += piece;
        if (!json_) write_stdout(piece);  // a failed write ends the reply (and the chat)
      }
    } catch (...) {
      chat_.finish_reply(*gen, text);  // keeps the session usable; it notices the reset sequence
      throw;
    }
  }
  chat_.finish_reply(*gen, text);
  have_reply_ = true;
  last_ = gen->stats();
  print_reply_end(text);
}

// The reply's JSON line (--json), or the line break after its streamed text; then, at the
// terminal, a note when it was cut short.
void ChatProgram::print_reply_end(const std::string& text) {
  const Stats& s = last_;
  if (json_) {
    std::printf("{\"role\": \"assistant\", \"content\": %s, \"finish_reason\": \"%s\", "
                "\"prompt_tokens\": %lld, \"completion_tokens\": %lld, \"tokens_per_second\": %.2f, "
                "\"n_past\": %lld, \"evictions\": %lld, \"kv_bytes\": %llu}\n",
                json_string(text).c_str(), finish_reason_name(s.finish),
                static_cast<long long>(s.prompt_tokens), static_cast<long long>(s.answer_tokens()),
                s.generation_tps(), static_cast<long long>(engine_.n_past()),
                static_cast<long long>(engine_.evictions()),
                static_cast<unsigned long long>(engine_.kv_bytes()));
  } else {
    std::fputs(interactive_ ? "\n\n" : "\n", stdout);
  }
  check_stdout();  // flushed for the reader; a lost reply ends the chat as a write error
  if (interactive_ && s.finish == FinishReason::Cancelled)
    note(s.completion_tokens == 0 ? "[stopped before the reply began: the message is not kept]" : "[reply stopped]");
  if (interactive_ && s.finish == FinishReason::Length)
    note(s.completion_tokens < gp_.max_tokens
             ? cat("[reply cut: the context is full (--ctx ", engine_.params().n_ctx, " with policy full); /reset to start over]")
             : cat("[reply cut at --max-tokens ", gp_.max_tokens, "]"));
}

bool ChatProgram::command(const std::string& line) {
  const size_t sp = line.find_first_of(" \t\n");
  const std::string name = command_name(line);
  const std::string arg = sp == std::string::npos ? "" : trim(line.substr(sp));
  if (name == "/quit" || name == "/exit") return false;
  if (name == "/help") {
    std::fputs(kCommandHelp, command_out_);
  } else if (name == "/reset") {
    chat_.reset();
    have_reply_ = false;
    note("[new conversation]");
  } else if (name == "/stats") {
    print_stats();
  } else if (name == "/system") {
    if (arg.empty()) {
      const std::string& d = chat_.format().default_system;
      std::fprintf(command_out_, "system: %s\n", !chat_.system().empty() ? chat_.system().c_str()
                                  : d.empty() ? "(none)" : cat("(none; the template adds: ", d, ")").c_str());
    } else {
      chat_.set_system(arg);
      note("[system prompt set; the conversation is re-read with it on the next message]");
    }
  } else if (name == "/save") {
    if (arg.empty()) throw ArgumentError("/save needs a file name");
    save(arg);
  } else {
    throw ArgumentError(cat("unknown command '", name, "' (see /help; //text sends /text)"));
  }
  check_stdout();  // flushed for the reader; a command's output lost is a write error too
  return true;
}

void ChatProgram::print_stats() {
  const KvStore& kv = engine_.kv_store();
  struct Group {
    int n = 0, min = 0, max = 0, capacity = 0;
    int64_t evicted = 0;
  } global, sliding;
  for (int l = 0; l < kv.n_layer(); ++l) {
    const LayerCells& L = kv.layer(l);
    Group& g = L.sliding ? sliding : global;
    g.min = g.n == 0 ? L.n_valid : std::min(g.min, L.n_valid);
    g.max = g.n == 0 ? L.n_valid : std::max(g.max, L.n_valid);
    g.capacity = L.capacity;
    g.evicted += L.n_evicted;
    g.n++;
  }
  FILE* out = command_out_;
  auto line = [out](const char* what, const Group& g) {
    std::fprintf(out, "kv occupancy: %s%d layers hold %d..%d of %d tokens (%.0f%% full), %lld evicted\n",
                what, g.n, g.min, g.max, g.capacity, g.capacity ? 100.0 * g.max / g.capacity : 0.0,
                static_cast<long long>(g.evicted));
  };
  if (global.n) line(sliding.n ? "global: " : "", global);
  if (sliding.n) line("sliding-window: ", sliding);
  const ChatCounters& c = chat_.counters();
  std::fprintf(out, "tokens so far: %lld in the sequence; %lld prompt tokens fed over %lld turns "
              "(last turn %lld), %lld full re-reads\n",
              static_cast<long long>(engine_.n_past()), static_cast<long long>(c.fed_tokens),
              static_cast<long long>(c.turns), static_cast<long long>(c.last_fed_tokens),
              static_cast<long long>(c.full_refeeds));
  const bool full = std::string(engine_.policy_name()) == "full";
  std::fprintf(out, "evictions: %lld | kv memory: %s (fixed) | policy %s, %s %d%s\n",
              static_cast<long long>(engine_.evictions()), format_bytes(engine_.kv_bytes()).c_str(),
              engine_.policy_name(), full ? "n_ctx" : "kv_size",
              full ? engine_.params().n_ctx : engine_.params().kv_size,
              chat_.pinned_tokens() ? cat(", ", chat_.pinned_tokens(), " system tokens pinned").c_str() : "");
  if (have_reply_) {
    const Stats& s = last_;
    std::fprintf(out, "last reply: %lld tokens, %.1f tokens/s (prompt %lld tokens, %.1f tokens/s), finish %s\n",
                static_cast<long long>(s.completion_tokens), s.generation_tps(),
                static_cast<long long>(s.prompt_tokens), s.prompt_tps(), finish_reason_name(s.finish));
  } else {
    std::fprintf(out, "last reply: none yet\n");
  }
}

void ChatProgram::save(const std::string& path) {
  const std::vector<ChatMessage> msgs = chat_.messages();
  std::string out = "{\n  \"model\": " + json_string(engine_.model().name()) +
                    ",\n  \"path\": " + json_string(engine_.model().path()) +
                    ",\n  \"chat_format\": " + json_string(chat_family_name(chat_.format().family)) +
                    ",\n  \"messages\": [";
  for (size_t i = 0; i < msgs.size(); ++i)
    out += cat(i ? "," : "", "\n    {\"role\": ", json_string(msgs[i].role),
               ", \"content\": ", json_string(msgs[i].content), "}");
  out += msgs.empty() ? "]\n}\n" : "\n  ]\n}\n";
  if (path == "-") {  // standard output
    if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0)
      throw Error("/save: cannot write to standard output");
    return;
  }
  // A new file only, readable by its owner, never through a symbolic link: a /save line in
  // piped input (a prompt file from elsewhere) cannot overwrite ~/.bashrc.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    if (err == EEXIST)
      throw Error(cat("/save: ", path, " exists; /save writes a new file (choose another name)"));
    throw Error(cat("/save: cannot write ", path, ": ", std::strerror(err)));
  }
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::write(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      throw Error(cat("/save: cannot write ", path, ": ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) throw Error(cat("/save: cannot write ", path, ": ", std::strerror(errno)));
  note(cat("[saved ", msgs.size(), " messages to ", path, "]"));
}

void print_banner(const Engine& engine, const ChatFormatChoice& fc) {
  const Model& m = engine.model();
  std::string name = m.name();
  if (name.empty()) name = m.path().substr(m.path().rfind('/') + 1);
  const bool full = std::string(engine.policy_name()) == "full";
  const std::string kv = full ? cat("n_ctx ", engine.params().n_ctx) : cat("kv_size ", engine.params().kv_size);
  std::fprintf(stderr, "tova chat | %s (%s, %s) | %s, policy %s, KV %s fixed | format %s\n",
               name.c_str(), m.hp().arch.c_str(), m.quant_summary().c_str(), kv.c_str(),
               engine.policy_name(), format_bytes(engine.kv_bytes()).c_str(),
               chat_family_name(fc.format.family));
  std::fprintf(stderr, "/help for commands, Ctrl-C stops a reply, Ctrl-D or /quit leaves\n");
}

}  // namespace

int cmd_chat(const std::vector<std::string>& argv, const ModelResolver& resolve_model) {
  CliArgs a(argv, kValueOpts, kFlags, kAliases);
  if (a.has("--help")) {
    std::fputs(kChatUsage, stdout);
    std::fputs(kCommandHelp, stdout);
    return 0;
  }
  if (!a.positional().empty())
    throw ArgumentError(cat("unexpected argument '", a.positional()[0], "' (see tova chat --help)"));
  if (!a.has("--model")) throw ArgumentError("no model given (-m MODEL)");
  EngineParams ep = engine_params_from(a, "tova");
  ep.validate();
  const GenerateParams gp = generate_params(a);
  const std::string forced = a.str("--chat-format", "");
  if (!forced.empty()) parse_chat_family(forced);  // a bad name fails before the model loads
  Engine engine(resolve_model(a.str("--model", "")), std::move(ep));
  const ChatFormatChoice fc = choose_chat_format(engine.model(), forced);
  if (!fc.recognized)
    std::fprintf(stderr, "tova: warning: the model's chat template is not one tova knows; using %s "
                 "(from the %s; choose with --chat-format)\n", chat_family_name(fc.format.family),
                 fc.source == "fallback" ? "default" : fc.source.c_str());
  if (a.has("--keep-system") && !a.has("--system"))
    std::fprintf(stderr, "tova: warning: --keep-system pins the --system prompt; none is set (a default "
                 "the template adds is not pinned; set one with /system)\n");
  ChatSession chat(engine, fc.format, a.has("--keep-system"));
  if (a.has("--system")) chat.set_system(a.str("--system", ""));
  chat.check_pin();  // (a cache too small to pin it: a usage error now, not at the first turn)

  LineEditor ed(STDIN_FILENO, ::isatty(STDOUT_FILENO) ? STDOUT_FILENO : STDERR_FILENO);
  const bool interactive = ed.interactive();
  if (interactive) print_banner(engine, fc);
  SigintGuard sigint(engine, interactive);
  ChatProgram program(engine, chat, gp, a.has("--json"), interactive);
  return program.run(ed);
}

}  // namespace tova
