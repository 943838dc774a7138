// tova perplexity -m MODEL -f FILE [--kv-size N] [--policy P] [--ctx N] [--chunks N] ...
//
// What is read and scored (identical to python/tova/perplexity.py):
// - without --ctx: the whole file as one sequence from an empty cache, exactly as in decoding;
//   every token after the first is scored;
// - with --ctx N: non-overlapping windows of N tokens (floor(n / N), at most --chunks), each from
//   an empty cache, BOS replacing each window's first token where the model adds BOS; the
//   predictions at window positions N/2 .. N-2 are scored (llama-perplexity -c N); with
//   --stride S windows start every S tokens and score their last S tokens.
// Log-softmax with float exponentials summed in double (as llama.cpp); the ± is the standard
// error of the mean NLL, sqrt(var / (n - 1)), propagated to PPL.
#include "perplexity_cli.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "cli_args.h"
#include "common.h"
#include "engine.h"

namespace tova {

namespace {

const char* kPplUsage = R"(usage: tova perplexity -m MODEL -f FILE [options]

Perplexity of the model reading FILE through its fixed-memory KV cache.

  -m, --model MODEL      model path or registry name
  -f, --file FILE        the text
  -c, --ctx N            window length (llama-perplexity -c N): non-overlapping windows of N
                         tokens, each from an empty cache, scoring predictions N/2 .. N-2;
                         default: the whole file as one stream, every token after the first
      --chunks N         read at most N windows
      --stride S         windows start every S tokens (S < N) and score their last S tokens
      --score-from I     first scored prediction position in each window
      --policy P         full (default), tova, h2o, sink, window
      --kv-size N        tokens kept per layer by an evicting policy (default 512)
      --n-sink N, --kv-type T, --chunk N, --prefill MODE, --positions MODE,
      --policy-plugin LIB, --policy-args TEXT   as for tova run
  -t, --threads N        compute threads (default: all cores)
      --no-progress      no progress line on stderr
)";

const std::set<std::string> kPplValues = {
    "--model", "--file", "--ctx", "--chunks", "--stride", "--score-from", "--policy", "--kv-size",
    "--n-sink", "--kv-type", "--chunk", "--prefill", "--positions", "--policy-plugin",
    "--policy-args", "--threads"};
const std::set<std::string> kPplFlags = {"--help", "--no-progress"};
const std::map<std::string, std::string> kPplAliases = {
    {"-m", "--model"}, {"-f", "--file"}, {"-c", "--ctx"}, {"-t", "--threads"}, {"-h", "--help"}};

struct Window {
  int64_t start;
  int length;
  int first_row;  // first scored prediction, window-relative
};

struct Plan {
  std::vector<Window> windows;
  int first = 0;
  bool replace_bos = false;
};

int positive(const CliArgs& a, const char* name, int minimum) {
  const int v = a.integer(name, minimum);
  if (v < minimum) throw ArgumentError(cat("option ", name, " must be >= ", minimum, ", got ", v));
  return v;
}

Plan make_plan(const CliArgs& a, int64_t n, bool bos) {
  Plan p;
  if (!a.has("--ctx")) {
    if (a.has("--stride") || a.has("--chunks"))
      throw ArgumentError("--stride and --chunks need --ctx (the window length)");
    p.first = a.has("--score-from") ? positive(a, "--score-from", 0) : 0;
    if (n < p.first + 2)
      throw ArgumentError(cat("the text has ", n, " tokens: at least ", p.first + 2,
                              " are needed to score one"));
    p.windows.push_back({0, static_cast<int>(n), p.first});
    return p;
  }
  const int N = positive(a, "--ctx", 2);
  int S = N;
  if (a.has("--stride")) {
    S = positive(a, "--stride", 1);
    if (S >= N) throw ArgumentError(cat("--stride must be smaller than --ctx ", N, ", got ", S));
  }
  p.first = a.has("--score-from") ? positive(a, "--score-from", 0) : (S == N ? N / 2 : N - S - 1);
  if (p.first > N - 2) throw ArgumentError(cat("--score-from must be at most ctx - 2 = ", N - 2));
  if (n < N) throw ArgumentError(cat("the text has ", n, " tokens, fewer than one window of ", N));
  const int64_t max_windows = a.has("--chunks") ? positive(a, "--chunks", 1) : INT64_MAX;
  for (int64_t s = 0; s + N <= n && static_cast<int64_t>(p.windows.size()) < max_windows; s += S) {
    // Overlapping windows after the first score only the tokens no earlier window scored.
    const int f = (s == 0 || S == N) ? p.first : std::max(p.first, N - S - 1);
    p.windows.push_back({s, N, f});
  }
  p.replace_bos = bos;
  return p;
}

// -log softmax(row)[target]: exponentials in float after subtracting the max, summed in double.
double row_nll(const float* row, int n_vocab, int32_t target) {
  float mx = row[0];
  for (int j = 1; j < n_vocab; ++j) mx = std::max(mx, row[j]);
  double sum = 0.0;
  for (int j = 0; j < n_vocab; ++j) sum += std::exp(row[j] - mx);
  return std::log(sum) + static_cast<double>(mx) - static_cast<double>(row[target]);
}

std::string read_all(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw FileNotFound(cat(path, ": cannot open: ", std::strerror(errno)));
  std::string s;
  char buf[65536];
  size_t k;
  while ((k = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, k);
  std::fclose(f);
  return s;
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
  const std::string text = read_all(a.str("--file", ""));
  const std::string path = resolve_model(a.str("--model", ""));
  EngineParams ep = engine_params_from(a, "full");

  // Tokenize with the model alone, so a full cache can be sized to the text.
  std::vector<int32_t> tokens;
  int32_t bos_id = -1;
  bool add_bos = false;
  {
    Model probe(path);
    add_bos = probe.tokenizer().add_bos_default();
    bos_id = probe.tokenizer().bos_id();
    tokens = probe.tokenizer().encode(text, add_bos, false);
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  const Plan plan = make_plan(a, n, add_bos && bos_id >= 0);
  const int N = plan.windows[0].length;
  ep.n_ctx = N;
  const bool full = ep.full();
  Engine engine(path, std::move(ep));
  const EngineParams& P = engine.params();
  const int V = engine.model().hp().n_vocab;
  const int U = P.chunk;
  // Chunked prefill depends on where eval calls cut the sequence: keep the chunk grid of one
  // eval per window and compute the logits of unscored rows too.
  const bool split = P.prefill == PrefillMode::Exact || full;

  std::printf("model: %s (%s), policy %s%s, prefill %s, %lld tokens\n", path.c_str(),
              engine.model().hp().arch.c_str(), engine.policy_name(),
              full ? "" : cat(", kv_size ", P.kv_size).c_str(), prefill_name(P.prefill),
              static_cast<long long>(n));
  if (a.has("--ctx"))
    std::printf("windows: %zu of %d tokens starting every %lld, each from an empty cache%s; "
                "scoring predictions at window positions %d..%d\n",
                plan.windows.size(), N,
                static_cast<long long>(plan.windows.size() > 1 ? plan.windows[1].start : N),
                plan.replace_bos ? ", BOS replacing each window's first token" : "",
                plan.windows.size() > 1 ? plan.windows[1].first_row : plan.first, N - 2);
  else
    std::printf("streaming: one sequence, scoring predictions at positions %d..%lld\n",
                plan.first, static_cast<long long>(n - 2));
  std::fflush(stdout);

  const bool show = !a.has("--no-progress");
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  int64_t total = 0;
  for (const Window& w : plan.windows) total += w.length;
  double sum = 0.0, sum2 = 0.0;
  int64_t scored = 0, done = 0;
  std::vector<float> logits;
  const double t0 = now_seconds();
  double last_shown = -1.0;
  for (size_t wi = 0; wi < plan.windows.size(); ++wi) {
    const Window& w = plan.windows[wi];
    engine.reset();
    std::vector<int32_t> ids(tokens.begin() + w.start, tokens.begin() + w.start + w.length);
    if (plan.replace_bos) ids[0] = bos_id;
    std::vector<int> cuts;
    for (int c = 0; c < w.length; c += U) cuts.push_back(c);
    if (split && w.first_row > 0 && w.first_row < w.length) cuts.push_back(w.first_row);
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    cuts.push_back(w.length);
    const int last_row = w.length - 2;  // the window's last position predicts nothing in it
    for (size_t c = 0; c + 1 < cuts.size(); ++c) {
      const int lo = cuts[c], hi = cuts[c + 1];
      const int r0 = std::max(lo, w.first_row), r1 = std::min(hi - 1, last_row);
      std::vector<int32_t> piece(ids.begin() + lo, ids.begin() + hi);
      engine.eval(piece, r0 <= r1, logits);
      for (int r = r0; r <= r1; ++r) {
        const double x = row_nll(logits.data() + static_cast<size_t>(r - lo) * V, V, ids[r + 1]);
        sum += x;
        sum2 += x * x;
        ++scored;
      }
      done += hi - lo;
      const double t = now_seconds() - t0;
      if (show && (t - last_shown >= (tty ? 0.5 : 5.0) || done == total)) {
        last_shown = t;
        std::fprintf(stderr, "%sperplexity: window %zu/%zu, %lld/%lld tokens, PPL %.4f, %.1f tokens/s%s",
                     tty ? "\r" : "", wi + 1, plan.windows.size(), static_cast<long long>(done),
                     static_cast<long long>(total), scored ? std::exp(sum / scored) : NAN,
                     t > 0 ? done / t : 0.0, tty ? "  " : "\n");
        std::fflush(stderr);
      }
    }
  }
  if (show && tty) std::fputc('\n', stderr);
  const double secs = now_seconds() - t0;
  const double mean = sum / static_cast<double>(scored);
  const double var = sum2 / static_cast<double>(scored) - mean * mean;
  const double se = scored > 1 && var > 0 ? std::sqrt(var / static_cast<double>(scored - 1)) : 0.0;
  const double ppl = std::exp(mean);
  std::printf("Final estimate: PPL = %.4f +/- %.5f, %lld tokens scored, %lld tokens read, "
              "%.1f tokens/s\n",
              ppl, ppl * se, static_cast<long long>(scored), static_cast<long long>(total),
              secs > 0 ? total / secs : 0.0);
  return 0;
}

}  // namespace tova
