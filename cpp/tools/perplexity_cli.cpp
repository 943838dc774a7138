// tova perplexity -m MODEL -f FILE [--kv-size N] [--policy P] [--ctx N] [--chunks N] ...
//
// What is read and scored (tova::measure_perplexity, cpp/src/perplexity.h, which
// tova.perplexity calls too):
// - without --ctx: the whole file as one sequence from an empty cache, exactly as in decoding;
//   every token after the first is scored;
// - with --ctx N: non-overlapping windows of N tokens (floor(n / N), at most --chunks), each from
//   an empty cache, BOS replacing each window's first token where the model adds BOS; the
//   predictions at window positions N/2 .. N-2 are scored (llama-perplexity -c N; 0 .. 0 for
//   N = 2); with
//   --stride S windows start every S tokens and score their last S tokens.
// Log-softmax with float exponentials summed in double (as llama.cpp); the ± is the standard
// error of the mean NLL, sqrt(var / (n - 1)), propagated to PPL.
#include "perplexity_cli.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "cli_args.h"
#include "cli_io.h"
#include "common.h"
#include "engine.h"
#include "perplexity.h"

namespace tova {

namespace {

const char* kPplUsage = R"(usage: tova perplexity -m MODEL -f FILE [options]

Perplexity of the model reading FILE through its fixed-memory KV cache.

  -m, --model MODEL      model path or registry name
  -f, --file FILE        the text ('-': standard input)
  -c, --ctx N            window length (llama-perplexity -c N): non-overlapping windows of N
                         tokens, each from an empty cache, scoring predictions N/2 .. N-2
                         (-c 2: 0 .. 0);
                         default: the whole file as one stream, every token after the first
      --chunks N         read at most N windows
      --stride S         windows start every S tokens (S < N) and score their last S tokens
      --score-from I     first scored prediction position in each window
      --policy P         full (default), tova, h2o, sink, window, tova_ema
      --kv-size N        tokens kept per layer by an evicting policy (default 512,
                         or the model's context when shorter)
      --n-sink N, --kv-type T, --kv-type-k T, --kv-type-v T, --kv-lo-type T, --kv-hi-size N,
      --chunk N, --prefill MODE, --positions MODE,
      --policy-plugin LIB, --policy-args TEXT   as for tova run
  -t, --threads N        compute threads (default: all cores)
      --no-progress      no progress line on stderr
)";

const std::set<std::string> kPplValues = {
    "--model", "--file", "--ctx", "--chunks", "--stride", "--score-from", "--policy", "--kv-size",
    "--n-sink", "--kv-type", "--kv-type-k", "--kv-type-v", "--kv-lo-type", "--kv-hi-size", "--chunk", "--prefill", "--positions", "--policy-plugin", "--backend", "--device",
    "--policy-args", "--threads"};
const std::set<std::string> kPplFlags = {"--help", "--no-progress", "--no-kv-hadamard", "--float-activations"};
const std::map<std::string, std::string> kPplAliases = {
    {"-m", "--model"}, {"-f", "--file"}, {"-c", "--ctx"}, {"-t", "--threads"}, {"-h", "--help"},
    {"-ctk", "--kv-type-k"}, {"-ctv", "--kv-type-v"}};

// The options as the core's settings (it checks their values, naming the option at fault).
PerplexityParams ppl_params(const CliArgs& a) {
  if (!a.has("--ctx") && (a.has("--stride") || a.has("--chunks")))
    throw ArgumentError("--stride and --chunks need --ctx (the window length)");
  PerplexityParams p;
  p.context_name = "--ctx";
  p.stride_name = "--stride";
  p.chunks_name = "--chunks";
  p.score_from_name = "--score-from";
  if (a.has("--ctx")) p.context = a.integer("--ctx", 0);
  if (a.has("--stride")) p.stride = a.integer("--stride", 0);
  if (a.has("--chunks")) p.chunks = a.integer("--chunks", 0);
  if (a.has("--score-from")) p.score_from = a.integer("--score-from", 0);
  return p;
}

}  // namespace

int cmd_perplexity(const std::vector<std::string>& argv,
                   const std::function<std::string(const std::string&)>& resolve_model) {
  CliArgs a(argv, kPplValues, kPplFlags, kPplAliases);
  if (a.has("--help")) {
    std::fputs(kPplUsage, stdout);
    return 0;
  }
  if (!a.has("--file")) throw ArgumentError("no text given (-f FILE)");
  if (!a.positional().empty())
    throw ArgumentError(cat("unexpected argument '", a.positional()[0], "' (see --help)"));
  PerplexityParams pp = ppl_params(a);
  const std::string text = read_text_file(a.str("--file", ""));
  const std::string path = resolve_model(a.str("--model", ""));
  EngineParams ep = engine_params_from(a, "full");

  // Tokenize with the model alone, so a full cache can be sized to the text.
  std::vector<int32_t> tokens;
  bool add_bos = false;
  {
    Model probe(path);
    add_bos = probe.tokenizer().add_bos_default() && probe.tokenizer().bos_id() >= 0;
    tokens = probe.tokenizer().encode(text, add_bos, false);
  }
  pp.add_bos = add_bos;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const PerplexityPlan plan = plan_perplexity(n, pp, add_bos);  // for the header (and n_ctx)
  const int N = plan.windows[0].length;
  ep.n_ctx = N;
  const bool full = ep.full();
  Engine engine(path, std::move(ep));
  const EngineParams& P = engine.params();

  std::printf("model: %s (%s), policy %s%s, prefill %s, %lld tokens\n", path.c_str(),
              engine.model().hp().arch.c_str(), engine.policy_name(),
              full ? "" : cat(", kv_size ", P.kv_size).c_str(), prefill_name(P.prefill),
              static_cast<long long>(n));
  if (pp.context)
    std::printf("windows: %zu of %d tokens starting every %lld, each from an empty cache%s; "
                "scoring predictions at window positions %d..%d\n",
                plan.windows.size(), N,
                static_cast<long long>(plan.windows.size() > 1 ? plan.windows[1].start : N),
                plan.replace_bos ? ", BOS replacing each window's first token" : "",
                plan.windows.size() > 1 ? plan.windows[1].first_row : plan.score_from, N - 2);
  else
    std::printf("streaming: one sequence, scoring predictions at positions %d..%lld\n",
                plan.score_from, static_cast<long long>(n - 2));
  std::fflush(stdout);

  const bool show = !a.has("--no-progress");
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const double t0 = now_seconds();
  double last_shown = -1.0;
  PerplexityProgressFn progress;
  if (show)
    progress = [&](const PerplexityProgress& pr) {
      const double t = now_seconds() - t0;
      if (t - last_shown < (tty ? 0.5 : 5.0) && pr.tokens_done != pr.tokens_total) return;
      last_shown = t;
      std::fprintf(stderr, "%sperplexity: window %lld/%lld, %lld/%lld tokens, PPL %.4f, %.1f tokens/s%s",
                   tty ? "\r" : "", static_cast<long long>(pr.window + 1),
                   static_cast<long long>(pr.n_windows), static_cast<long long>(pr.tokens_done),
                   static_cast<long long>(pr.tokens_total),
                   pr.n_scored ? std::exp(pr.nll_sum / static_cast<double>(pr.n_scored)) : NAN,
                   t > 0 ? static_cast<double>(pr.tokens_done) / t : 0.0, tty ? "  " : "\n");
      std::fflush(stderr);
    };
  const PerplexityResult r = measure_perplexity(engine, tokens, pp, progress);
  if (show && tty) std::fputc('\n', stderr);
  std::printf("Final estimate: PPL = %.4f +/- %.5f, %lld tokens scored, %lld tokens read, "
              "%.1f tokens/s\n",
              r.ppl, r.ppl_stderr, static_cast<long long>(r.n_scored),
              static_cast<long long>(r.n_tokens),
              r.seconds > 0 ? static_cast<double>(r.n_tokens) / r.seconds : 0.0);
  return 0;
}

}  // namespace tova
