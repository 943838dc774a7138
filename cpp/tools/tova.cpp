// tova: the command-line program. Subcommands: info, run, chat, perplexity, bench, pull, list,
// serve (pull, list and serve go through the Python package, which owns the model registry,
// downloads and the HTTP server).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <random>
#include <stdexcept>
#include <new>
#include <string>
#include <vector>

#include "chat_cli.h"
#include "perplexity_cli.h"
#include "cli_args.h"
#include "cli_io.h"
#include "common.h"
#include "bench_cli.h"
#include "cpu/kernels_cpu.h"
#include "engine.h"
#include "gguf.h"
#include "quant.h"

using namespace tova;

namespace {

volatile std::sig_atomic_t g_interrupted = 0;  // set by SIGINT, read by the decode loop
// The running engine's cancel flag (the scheduler stops its requests at the next step, also
// while a long prompt is being read); lock-free atomics are safe in a signal handler.
std::atomic<std::atomic<bool>*> g_cancel{nullptr};
void on_sigint(int) {
  g_interrupted = 1;
  if (std::atomic<bool>* c = g_cancel.load()) c->store(true);
}

const char* kVersion = "0.1.0";

const char* kUsage = R"(usage: tova COMMAND [options]

commands:
  info MODEL                 print the model's metadata, tensors, load time and memory
  run -m MODEL -p PROMPT     generate a continuation, streamed as it is produced
  chat -m MODEL              chat in the terminal (see tova chat --help)
  perplexity -m MODEL -f FILE  perplexity through the fixed cache (see tova perplexity --help)
  bench -m MODEL             prompt-processing and generation speed (llama-bench style)
  pull NAME                  fetch a registry model into the cache
  list                       show the model registry and what is cached
  serve -m MODEL             OpenAI-compatible HTTP server (pip install 'tova[server]'; see
                             tova serve --help)
  --version                  print the version

MODEL is a GGUF path or a registry name (see `tova list`).

run / bench options:
  -m, --model MODEL          model path or name
  -p, --prompt TEXT          prompt (run); -p N prompt tokens (bench, default 512)
  -f, --file FILE            run: read the prompt from a file, '-' for stdin, less one final
                             line break and a byte order mark (then -p TEXT is appended; not
                             echoed). Special-token text in the prompt (<|im_start|>, <s>...)
                             is read as the control token, as llama-cli does
  -n, --n-predict N          tokens to generate (run: 128, -1 = no limit; bench: 128)
  -t, --threads N            compute threads (default: all cores)
      --temp T               run: temperature (0.8; 0 = greedy)
      --top-k K, --top-p P, --min-p P, --repeat-penalty R, --seed S   run: sampling
      --kv-size N            tokens kept per layer by an evicting policy (default 512,
                             or the model's context when shorter)
      --policy P             tova (default; bench: full), h2o, sink, window, full, tova_ema
      --n-sink N             first positions never evicted (sink: 4)
      --kv-type T            element type of the stored keys and values: f16 (default), f32,
                             q8_0, q5_1, q5_0, q4_1, q4_0; or K/V (q8_0/q4_1) apart
      --kv-type-k T, --kv-type-v T   (-ctk, -ctv) the keys' / the values' type alone; values
                             may also be q3_0 (tova's 3-bit format, values only)
      --kv-lo-type T         a second, lower-precision tier: tokens beyond the --kv-hi-size
                             most valued are kept in type T (or K/V, e.g. q4_0/q3_0) instead
      --kv-hi-size N         tokens kept in --kv-type with --kv-lo-type (default: a quarter of
                             the cache)
      --no-kv-hadamard       store quantized keys and values as they are (default:
                             rotated by a Walsh-Hadamard transform first, queries alike)
      --float-activations    float32 inputs to the matrix products (default: quantized to
                             8 bits, integer products; on the CPU and the GPU alike)
      --ctx N                n_ctx for the full policy (default 2048; bench: what the test
                             holds, depth + prompt + generated)
      --chunk N              prefill chunk size (default 64)
      --prefill MODE         exact (default: as if token by token) or chunked (faster, approximate)
      --positions MODE       original (default) or cache_index (RoPE by rank: runs past the
                             model's trained context)
      --policy-plugin LIB    load an eviction policy from a shared library
      --policy-args TEXT     arguments for the plugin's tova_policy_create
      --ignore-eos           run: do not stop at end-of-generation tokens
      --device D, --backend D   cpu (default) or cuda (the whole model on GPU 0; needs a
                             build with TOVA_CUDA)
  bench only: -r, --repetitions N (default 3), --json,
      --batch N              measure N sequences decoding together instead (total tokens/s)
      --kv-budget B          as --batch, with as many sequences as fit in B bytes ("256MiB")
      -d, --depth D          run each test after D tokens of history (llama-bench -d)
  The kernels are the best this CPU runs (tova info); TOVA_CPU_KERNELS=scalar|avx2|avx512 forces
  a lower tier.

exit status:
  0    success
  1    a runtime error: a model that cannot be read, a full context in chat, stdout that
       cannot be written ("tova: write error: ..." on stderr)
  2    a usage error: an unknown option, a bad value, a missing argument
  130  interrupted by Ctrl-C (SIGINT)
  141  stdout's reader went away (SIGPIPE, e.g. `tova run ... | head`)
  143  terminated (SIGTERM)
)";

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The Python interpreter that carries the tova package: $TOVA_PYTHON, the one beside this
// program (a venv's bin/), else python3 on PATH.
std::string python_exe() {
  if (const char* env = std::getenv("TOVA_PYTHON")) {  // set by `python -m tova`
    if (*env) return env;
  }
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) {
    buf[n] = '\0';
    std::string dir(buf);
    dir = dir.substr(0, dir.rfind('/'));
    // Beside it (a venv's bin/), or from the package's own copy (PREFIX/lib/pythonX.Y/
    // site-packages/tova/bin/) up to PREFIX/bin/.
    for (const char* up : {"", "/../../../../../bin"})
      for (const char* name : {"/python3", "/python"})
        if (is_file(dir + up + name)) return dir + up + name;
  }
  return "python3";
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// `python -m MODULE ARGS` with the interpreter that carries the package: pull and list
// (tova.models) and serve (tova.server, the HTTP server of tova[server]) are Python. The
// interpreter replaces this process (exec), so that signals (a terminal's Ctrl-C, a service
// manager's or `docker stop`'s SIGTERM) and the exit status are the Python program's own; returns
// only when it cannot be started.
int run_python_cli(const char* module, const std::vector<std::string>& args) {
  const std::string exe = python_exe();
  std::vector<std::string> argv_s = {exe, "-m", module};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(&a[0]);
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  ::execvp(exe.c_str(), argv.data());
  std::fprintf(stderr, "tova: cannot run %s -m %s: %s\n", exe.c_str(), module, std::strerror(errno));
  return 127;
}

int run_models_cli(const std::vector<std::string>& args) { return run_python_cli("tova.models", args); }

// The Python resolver failed and has said why on stderr: exit with its status, adding nothing.
struct ResolverFailed : std::runtime_error {
  explicit ResolverFailed(int status) : std::runtime_error("model not resolved"), status(status) {}
  int status;
};

// A file path as given; anything else (a registry name or file name, an alias, a `~` path, a
// directory, a missing file) goes to the one resolver, the Python package's `tova.models path`,
// which fetches what is not cached and otherwise says on stderr what is wrong.
std::string resolve_model(const std::string& model) {
  if (model.empty()) throw ArgumentError("no model given (-m MODEL)");
  if (is_file(model)) return model;
  std::string cmd = shell_quote(python_exe()) + " -m tova.models path -- " + shell_quote(model);
  std::fflush(stdout);
  std::fflush(stderr);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw Error("cannot run the Python model resolver");
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = ::pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (rc != 0) {
    const int status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 1;
    if (status == 127) throw Error(cat("model '", model, "' is not a file, and the Python resolver of registry names (", python_exe(), " -m tova.models) could not be run"));
    throw ResolverFailed(status == 0 ? 1 : status);
  }
  if (out.empty()) throw FileNotFound(cat("model '", model, "' could not be resolved"));
  const size_t nl = out.rfind('\n');
  return nl == std::string::npos ? out : out.substr(nl + 1);
}

const std::set<std::string> kValueOpts = {
    "--model", "--prompt", "--n-predict", "--threads", "--temp", "--top-k", "--top-p", "--min-p",
    "--repeat-penalty", "--seed", "--kv-size", "--policy", "--n-sink", "--kv-type", "--kv-type-k", "--kv-type-v", "--kv-lo-type", "--kv-hi-size", "--ctx",
    "--chunk", "--prefill", "--positions", "--policy-plugin", "--policy-args", "--file",
    "--backend", "--device"};
const std::set<std::string> kFlags = {"--ignore-eos", "--help", "--no-kv-hadamard", "--float-activations"};
const std::map<std::string, std::string> kAliases = {
    {"-m", "--model"}, {"-p", "--prompt"}, {"-n", "--n-predict"}, {"-t", "--threads"},
    {"-s", "--seed"}, {"-h", "--help"}, {"-f", "--file"},
    {"-ctk", "--kv-type-k"}, {"-ctv", "--kv-type-v"}};

// Arguments that are not options are errors (a command that takes none: run, bench).
void no_positional(const CliArgs& a, const char* command) {
  if (!a.positional().empty())
    throw ArgumentError(cat("unexpected argument '", a.positional()[0], "' (see tova ", command, " --help)"));
}

const char* kInfoUsage = R"(usage: tova info MODEL   (or -m MODEL)

Prints the model's GGUF metadata, tensor types, hyperparameters, tokenizer, the CPU kernels
this machine runs, the load time and the memory it takes (weights are mapped, not copied).
)";

int cmd_info(const std::vector<std::string>& argv) {
  CliArgs a(argv, {"--model"}, {"--help"}, {{"-m", "--model"}, {"-h", "--help"}});
  if (a.has("--help")) {
    std::fputs(kInfoUsage, stdout);
    return 0;
  }
  const size_t given = a.positional().size() + (a.has("--model") ? 1 : 0);
  if (given != 1) throw ArgumentError(given == 0 ? "no model given (tova info MODEL)" : "tova info takes one model");
  const std::string path = resolve_model(a.has("--model") ? a.str("--model", "") : a.positional()[0]);
  const uint64_t rss0 = resident_bytes();
  double t0 = now_seconds();
  GgufFile f(path);
  const double t_parse = now_seconds() - t0;
  std::printf("file:        %s\n", path.c_str());
  std::printf("size:        %s, GGUF v%u, %zu metadata keys, %zu tensors, alignment %llu\n",
              format_bytes(f.file_size()).c_str(), f.version(), f.metadata().size(),
              f.tensors().size(), static_cast<unsigned long long>(f.alignment()));
  std::map<std::string, std::pair<int, uint64_t>> types;
  for (const auto& t : f.tensors()) {
    auto& e = types[type_traits(t.type_id).name];
    e.first++;
    e.second += t.nbytes;
  }
  std::printf("tensors:    ");
  for (const auto& [name, e] : types)
    std::printf(" %s x%d (%s)", name.c_str(), e.first, format_bytes(e.second).c_str());
  std::printf("\nmetadata:\n");
  for (const auto& [k, v] : f.metadata()) {
    std::string s;
    if (v.type == GgufType::ARRAY)
      s = cat("[", v.count, " x ", gguf_type_name(v.elem_type), "]");
    else if (v.type == GgufType::STRING)
      s = v.str.size() > 60 ? cat(std::string(v.str.substr(0, 57)), "...") : std::string(v.str);
    else if (v.is_float())
      s = cat(v.f);
    else
      s = cat(v.as_int());
    for (char& c : s)
      if (c == '\n') c = ' ';
    std::printf("  %-42s %s\n", k.c_str(), s.c_str());
  }
  t0 = now_seconds();
  Model m(path);
  const double t_load = now_seconds() - t0;
  const HParams& h = m.hp();
  std::printf("model:       %s (%s), %d layers, n_embd %d, heads %d/%d, head_dim %d, vocab %d, ctx %d\n",
              m.name().c_str(), h.arch.c_str(), h.n_layer, h.n_embd, h.n_head, h.n_head_kv,
              h.head_dim, h.n_vocab, h.n_ctx_train);
  const char* scaling = h.rope_scaling == RopeScaling::Linear ? "linear"
                        : h.rope_scaling == RopeScaling::Yarn ? "yarn" : "none";
  std::printf("rope:        %s style, base %g, %d dims, scaling %s (factor %g)\n",
              h.rope_style == RopeStyle::NeoX ? "neox" : "normal", h.rope_base, h.rope_dim, scaling,
              h.rope_scale_factor);
  std::printf("tokenizer:   %s, %d tokens, bos %d, eos %d\n", m.tokenizer().model_name(),
              m.tokenizer().n_vocab(), m.tokenizer().bos_id(), m.tokenizer().eos_id());
  std::printf("kernels:     %s\n", kernel_isa());
  std::printf("load time:   %.1f ms (GGUF parse %.1f ms; weights mapped, not copied)\n",
              (t_parse + t_load) * 1e3, t_parse * 1e3);
  std::printf("resident:    %s (process), +%s while loading\n", format_bytes(resident_bytes()).c_str(),
              format_bytes(resident_bytes() - rss0).c_str());
  return 0;
}

// With original positions, a prompt longer than the model's trained context puts RoPE positions
// the model never saw: the text degrades quietly, so say it once.
void warn_past_trained_context(const Engine& engine, size_t n_prompt) {
  const int n_train = engine.model().hp().n_ctx_train;
  if (engine.params().positions != PositionsMode::Original || n_prompt <= static_cast<size_t>(n_train)) return;
  std::fprintf(stderr, "tova: warning: the prompt's %zu tokens run past the model's trained context "
               "(%d) with --positions original; expect degraded text (--positions cache_index keeps "
               "positions within it)\n", n_prompt, n_train);
}

int cmd_run(const std::vector<std::string>& argv) {
  CliArgs a(argv, kValueOpts, kFlags, kAliases);
  if (a.has("--help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  no_positional(a, "run");
  if (!a.has("--prompt") && !a.has("--file"))
    throw ArgumentError("no prompt given (-p PROMPT or -f FILE)");
  GenerateParams gp;
  gp.max_tokens = max_tokens_from(a, "--n-predict", 128, 0);  // before the model loads
  std::string prompt = a.str("--prompt", "");
  if (a.has("--file")) {
    // One trailing line break (an editor's, echo's; "\r\n" too) is not part of the prompt, as
    // llama-cli's -f, nor is a byte order mark.
    std::string text = read_text_file(a.str("--file", ""));
    drop_utf8_bom(text);
    drop_final_line_break(text);
    prompt = text + prompt;
  }
  const bool echo_prompt = !a.has("--file");
  Engine engine(resolve_model(a.str("--model", "")), engine_params_from(a, "tova"));
  gp.ignore_eos = a.has("--ignore-eos");
  gp.sampling.temperature = static_cast<float>(a.number("--temp", gp.sampling.temperature));
  gp.sampling.top_k = a.integer("--top-k", gp.sampling.top_k);
  gp.sampling.top_p = static_cast<float>(a.number("--top-p", gp.sampling.top_p));
  gp.sampling.min_p = static_cast<float>(a.number("--min-p", gp.sampling.min_p));
  gp.sampling.repeat_penalty = static_cast<float>(a.number("--repeat-penalty", gp.sampling.repeat_penalty));
  gp.sampling.seed = a.integer64("--seed", gp.sampling.seed);
  gp.sampling.validate();
  // Special tokens parsed (parse_special), as llama-cli reads -p / -f: a prompt written in the
  // model's own chat format (<|im_start|>...) means its control tokens, not their spelling.
  const auto ids = engine.tokenize(prompt, engine.model().tokenizer().add_bos_default(), true);
  g_cancel.store(&engine.cancel_requested);
  std::signal(SIGINT, on_sigint);
  warn_past_trained_context(engine, ids.size());  // (before the prompt is read: that may take long)
  Generation g(engine, ids, gp);
  if (echo_prompt) write_stdout(prompt);
  while (!g.finished()) {
    if (g_interrupted) g.cancel();
    write_stdout(g.next());  // a failed write ends the generation (the Generation cancels)
  }
  const Stats s = g.stats();
  // Ctrl-C before the first token: the prompt was not read whole (no speed to report).
  const bool cut_reading = s.finish == FinishReason::Cancelled && s.completion_tokens == 0;
  char speed[48];
  std::snprintf(speed, sizeof speed, "%.1f tokens/s", s.prompt_tps());
  std::fprintf(stderr,
               "\n\nprompt: %lld tokens, %s | generated: %lld tokens, %.1f tokens/s | "
               "finish: %s | kv: %s, policy %s\n",
               static_cast<long long>(s.prompt_tokens),
               cut_reading ? "reading interrupted" : speed,
               static_cast<long long>(s.completion_tokens), s.generation_tps(),
               finish_reason_name(s.finish), format_bytes(engine.kv_bytes()).c_str(),
               engine.policy_name());
  return g.finish_reason() == FinishReason::Cancelled ? 130 : 0;
}

// A program started with fd 0, 1 or 2 closed (`tova run ... >&-`) would give that number to the
// next file it opens (the model, a /save file), and text meant for stdout would go there. Each
// closed one is held by /dev/null opened the wrong way round (as gnulib's stdopen does): using it
// fails with EBADF, so a closed stdout is a write error like any other.
void hold_closed_std_fds() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    const int got = ::open("/dev/null", fd == 0 ? O_WRONLY : O_RDONLY);
    if (got >= 0 && got != fd) {
      ::dup2(got, fd);
      ::close(got);
    }
  }
}

int print_version() {
  std::printf("tova %s (kernels: %s; cuda: %s)\n", kVersion, kernel_isa(),
              !cuda_built() ? "not built"
              : cuda_simulated() ? "simulated on the CPU (a TOVA_CUDA_SIM test build)"
                                 : cat("built, ", cuda_device_count(), " usable device(s)").c_str());
  return 0;
}

// Runs the command args[0] and returns its exit status; errors are thrown for main() to print.
int run_command(std::vector<std::string> args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "--version" || cmd == "version") return print_version();
  if (cmd == "info") return cmd_info(rest);
  if (cmd == "run") return cmd_run(rest);
  if (cmd == "chat") return cmd_chat(rest, resolve_model);
  if (cmd == "perplexity") return cmd_perplexity(rest, resolve_model);
  if (cmd == "bench") return cmd_bench(rest, resolve_model);
  if (cmd == "serve") return run_python_cli("tova.server", rest);
  if (cmd == "pull" || cmd == "list") {
    rest.insert(rest.begin(), cmd);
    return run_models_cli(rest);
  }
  std::fprintf(stderr, "tova: unknown command '%s' (see tova --help)\n", cmd.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  hold_closed_std_fds();
  try {
    const int status = run_command(std::vector<std::string>(argv + 1, argv + argc));
    check_stdout();  // output that was lost is a failure, whatever the command thought (GNU)
    return status;
  } catch (const WriteError& e) {
    std::fprintf(stderr, "tova: write error: %s\n", e.what());
    return 1;
  } catch (const ResolverFailed& e) {
    return e.status;
  } catch (const ArgumentError& e) {
    std::fprintf(stderr, "tova: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {  // where no check came first: say what it means
    std::fprintf(stderr, "tova: error: out of memory (the machine's, or a limit on this process: ulimit -v, "
                         "a container's)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tova: error: %s\n", e.what());
    return 1;
  }
}
