#include "perplexity.h"

#include <algorithm>
#include <cmath>

#include "common.h"
#include "engine.h"

namespace tova {

namespace {

int at_least(const std::string& name, int value, int minimum) {
  if (value < minimum) throw ArgumentError(cat(name, " must be >= ", minimum, ", got ", value));
  return value;
}

// [a, b) window-relative pieces: the engine's chunk grid (as one eval of the window would cut
// it), plus a cut at the first scored row when `split`, so the unscored prefix is read without
// computing its logits.
std::vector<int> piece_cuts(const PerplexityWindow& w, int chunk, bool split) {
  std::vector<int> cuts;
  for (int c = 0; c < w.length; c += chunk) cuts.push_back(c);
  if (split && w.first_row > 0 && w.first_row < w.length) cuts.push_back(w.first_row);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  cuts.push_back(w.length);
  return cuts;
}

}  // namespace

int64_t PerplexityPlan::total_tokens() const {
  int64_t t = 0;
  for (const PerplexityWindow& w : windows) t += w.length;
  return t;
}

PerplexityPlan plan_perplexity(int64_t n, const PerplexityParams& p, bool bos) {
  PerplexityPlan plan;
  if (!p.context) {
    if (p.stride) throw ArgumentError(cat(p.stride_name, " needs ", p.context_name, " (the window length)"));
    if (p.chunks)
      throw ArgumentError(cat(p.chunks_name, " needs ", p.context_name, " (it caps the number of windows)"));
    plan.score_from = p.score_from ? at_least(p.score_from_name, *p.score_from, 0) : 0;
    if (n < plan.score_from + 2)
      throw ArgumentError(cat("the text has ", n, " tokens", bos && n > 0 ? " (the BOS the model adds included)" : "",
                              ": at least ", plan.score_from + 2, " are needed to score one"));
    plan.windows.push_back({0, static_cast<int>(n), plan.score_from});
    return plan;
  }
  const int N = at_least(p.context_name, *p.context, 2);
  int S = N;
  if (p.stride) {
    S = at_least(p.stride_name, *p.stride, 1);
    if (S >= N)
      throw ArgumentError(cat(p.stride_name, " must be smaller than ", p.context_name, " ", N,
                              " (or unset for non-overlapping windows), got ", S));
  }
  const int def = std::min(p.stride ? N - S - 1 : N / 2, N - 2);
  plan.score_from = p.score_from ? at_least(p.score_from_name, *p.score_from, 0) : def;
  if (plan.score_from > N - 2)
    throw ArgumentError(cat(p.score_from_name, " must be at most ", p.context_name, " - 2 = ",
                            N - 2, ", got ", plan.score_from));
  if (n < N)
    throw ArgumentError(cat("the text has ", n, " tokens, fewer than one window of ",
                            p.context_name, "=", N));
  const int64_t max_windows = p.chunks ? at_least(p.chunks_name, *p.chunks, 1) : INT64_MAX;
  for (int64_t s = 0; s + N <= n && static_cast<int64_t>(plan.windows.size()) < max_windows;
       s += S) {
    // Overlapping windows after the first score only the tokens no earlier window scored.
    const int f = (s == 0 || !p.stride) ? plan.score_from : std::max(plan.score_from, N - S - 1);
    plan.windows.push_back({s, N, f});
  }
  plan.replace_bos = bos;
  return plan;
}

double row_nll(const float* row, int n_vocab, int32_t target) {
  float mx = row[0];
  for (int j = 1; j < n_vocab; ++j) mx = std::max(mx, row[j]);
  double sum = 0.0;  // float exponentials (after subtracting the max), summed in double
  for (int j = 0; j < n_vocab; ++j) sum += std::exp(row[j] - mx);
  return std::log(sum) + static_cast<double>(mx) - static_cast<double>(row[target]);
}

NllStats nll_stats(const std::vector<double>& nlls) {
  if (nlls.empty()) throw ArgumentError("no tokens were scored");
  const double n = static_cast<double>(nlls.size());
  double sum = 0.0;
  for (double x : nlls) sum += x;
  const double mean = sum / n;
  // The population variance (llama-perplexity's E[x^2] - E[x]^2), summed about the mean so a
  // constant sequence gives exactly 0; the standard error is sqrt(var / (n - 1)).
  double dev2 = 0.0;
  for (double x : nlls) dev2 += (x - mean) * (x - mean);
  const double var = dev2 / n;
  const double se = nlls.size() > 1 && var > 0 ? std::sqrt(var / (n - 1)) : 0.0;
  const double ppl = std::exp(mean);
  return {ppl, ppl * se, mean, se};
}

PerplexityResult measure_perplexity(Engine& engine, const std::vector<int32_t>& tokens,
                                    const PerplexityParams& p,
                                    const PerplexityProgressFn& progress) {
  const Tokenizer& tok = engine.model().tokenizer();
  const int32_t bos_id = tok.bos_id();
  const bool use_bos = p.add_bos.value_or(tok.add_bos_default());
  if (use_bos && p.context && bos_id < 0)
    throw ArgumentError(cat(p.add_bos_name, ": the model has no BOS token"));
  const PerplexityPlan plan = plan_perplexity(static_cast<int64_t>(tokens.size()), p, use_bos);

  const EngineParams& ep = engine.params();
  const int V = engine.model().hp().n_vocab;
  // Chunked prefill depends on where eval calls cut the sequence: keep the engine's chunk grid
  // and compute the unscored rows' logits too.
  const bool split = ep.prefill == PrefillMode::Exact || ep.full();
  PerplexityProgress pr{0, plan.total_tokens(), 0, static_cast<int64_t>(plan.windows.size()),
                        0.0, 0};
  PerplexityResult r;
  std::vector<float> logits;
  const double t0 = now_seconds();
  for (const PerplexityWindow& w : plan.windows) {
    engine.reset();
    std::vector<int32_t> ids(tokens.begin() + w.start, tokens.begin() + w.start + w.length);
    if (plan.replace_bos) ids[0] = bos_id;
    const std::vector<int> cuts = piece_cuts(w, ep.chunk, split);
    const int last_row = w.length - 2;  // the window's last position predicts nothing in it
    for (size_t c = 0; c + 1 < cuts.size(); ++c) {
      const int lo = cuts[c], hi = cuts[c + 1];
      const int r0 = std::max(lo, w.first_row), r1 = std::min(hi - 1, last_row);
      const std::vector<int32_t> piece(ids.begin() + lo, ids.begin() + hi);
      engine.eval(piece, r0 <= r1, logits);
      for (int row = r0; row <= r1; ++row) {
        const double x = row_nll(logits.data() + static_cast<size_t>(row - lo) * V, V, ids[row + 1]);
        r.nlls.push_back(x);
        pr.nll_sum += x;
      }
      pr.n_scored = static_cast<int64_t>(r.nlls.size());
      pr.tokens_done += hi - lo;
      if (progress) progress(pr);
    }
    ++pr.window;
  }
  r.seconds = now_seconds() - t0;
  const NllStats s = nll_stats(r.nlls);
  r.ppl = s.ppl;
  r.ppl_stderr = s.ppl_stderr;
  r.nll = s.nll;
  r.nll_stderr = s.nll_stderr;
  r.n_scored = pr.n_scored;
  r.n_tokens = pr.tokens_total;
  r.n_windows = pr.n_windows;
  r.score_from = plan.score_from;
  return r;
}

}  // namespace tova
