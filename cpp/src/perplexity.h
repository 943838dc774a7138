// Perplexity of a model reading a token sequence through an Engine (its fixed-memory KV cache):
// the one implementation behind `tova perplexity` and tova.perplexity.perplexity().
//
// What is read and scored (the rules of python/tova/perplexity.py's module doc):
// - streaming (no context): the whole sequence from an empty cache, as in decoding; predictions
//   at positions score_from .. n-2 are scored (score_from defaults to 0: every token after the
//   first);
// - windows (context N): consecutive windows of N tokens (floor(n / N), at most `chunks`; a
//   remainder is not read), each from an empty cache, BOS replacing each window's first token
//   where BOS is added; predictions at window positions score_from .. N-2 (default N / 2);
// - with stride S (1 <= S < N): windows start every S tokens and, after the first, score only
//   their last S tokens (score_from defaults to N - S - 1).
// The NLL of a row is -log softmax(row)[target] with float exponentials summed in double; the
// statistics are llama-perplexity's (mean, sqrt(population variance / (n - 1)), ppl * se).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace tova {

class Engine;

// How to read the tokens; unset optionals take the defaults above.
struct PerplexityParams {
  std::optional<int> context;     // window length N; unset: one stream
  std::optional<int> stride;      // distance between window starts (needs context)
  std::optional<int> chunks;      // at most this many windows (needs context)
  std::optional<int> score_from;  // first scored prediction position in each window
  std::optional<bool> add_bos;    // replace each window's first token by BOS; unset: the model's
  // The names errors use for the settings above (the CLI passes its option names).
  std::string context_name = "context", stride_name = "stride", chunks_name = "chunks",
              score_from_name = "score_from", add_bos_name = "add_bos";
};

struct PerplexityWindow {
  int64_t start;  // index of the window's first token
  int length;     // tokens read
  int first_row;  // first scored prediction, window-relative
};

struct PerplexityPlan {
  std::vector<PerplexityWindow> windows;
  int score_from = 0;  // the first window's first scored row (the setting in effect)
  bool replace_bos = false;
  int64_t total_tokens() const;
};

// The windows for n tokens; `bos`: BOS is added (replaces each window's first token).
// Throws ArgumentError naming the setting at fault.
PerplexityPlan plan_perplexity(int64_t n, const PerplexityParams& p, bool bos);

// -log softmax(row)[target] over n_vocab logits.
double row_nll(const float* row, int n_vocab, int32_t target);

struct NllStats {
  double ppl, ppl_stderr, nll, nll_stderr;
};
// Throws ArgumentError when nlls is empty ("no tokens were scored").
NllStats nll_stats(const std::vector<double>& nlls);

// Where a measurement stands, after each piece the engine read.
struct PerplexityProgress {
  int64_t tokens_done, tokens_total;
  int64_t window, n_windows;  // window: 0-based index of the window being read
  double nll_sum;
  int64_t n_scored;
};
// May throw to abort the measurement (the engine is left mid-sequence; reset it before reuse).
using PerplexityProgressFn = std::function<void(const PerplexityProgress&)>;

struct PerplexityResult {
  double ppl = 0, ppl_stderr = 0, nll = 0, nll_stderr = 0;
  int64_t n_scored = 0, n_tokens = 0, n_windows = 0;
  double seconds = 0;       // evaluation and scoring
  std::vector<double> nlls;  // per scored token, in reading order
  int score_from = 0;
};

// Reads `tokens` through `engine` (reset before each window; its settings are used as they are:
// a full cache must hold a window) and scores them as planned.
PerplexityResult measure_perplexity(Engine& engine, const std::vector<int32_t>& tokens,
                                    const PerplexityParams& p,
                                    const PerplexityProgressFn& progress = {});

}  // namespace tova
