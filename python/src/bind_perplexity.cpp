// tova._core.perplexity and tova._core.nll_stats: the core's measurement (cpp/src/perplexity.h),
// run with the GIL released; after each piece the GIL is taken back to call the progress
// callable and to let Ctrl-C through (KeyboardInterrupt; the engine is then reset).
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <optional>

#include "bindings.h"
#include "unlocked.h"
#include "interrupts.h"
#include "common.h"
#include "engine.h"
#include "perplexity.h"

using namespace tova;

namespace {

nb::ndarray<nb::numpy, double> to_numpy_f64(std::vector<double>&& v) {
  auto* heap = new std::vector<double>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<double>*>(p); });
  size_t shape[1] = {heap->size()};
  return nb::ndarray<nb::numpy, double>(heap->data(), 1, shape, owner);
}

nb::dict result_dict(PerplexityResult&& r) {
  nb::dict d;
  d["ppl"] = r.ppl;
  d["stderr"] = r.ppl_stderr;
  d["nll"] = r.nll;
  d["nll_stderr"] = r.nll_stderr;
  d["n_scored"] = r.n_scored;
  d["n_tokens"] = r.n_tokens;
  d["n_windows"] = r.n_windows;
  d["seconds"] = r.seconds;
  d["score_from"] = r.score_from;
  d["nlls"] = to_numpy_f64(std::move(r.nlls));
  return d;
}

nb::dict perplexity(Engine& engine, const std::vector<int32_t>& tokens, std::optional<int> context,
                    std::optional<int> stride, std::optional<int> chunks,
                    std::optional<int> score_from, std::optional<bool> add_bos,
                    nb::object progress) {
  PerplexityParams p;
  p.context = context;
  p.stride = stride;
  p.chunks = chunks;
  p.score_from = score_from;
  p.add_bos = add_bos;
  // progress(tokens_done, tokens_total, nll_sum, n_scored) after each piece; then Ctrl-C.
  auto on_piece = [&progress](const PerplexityProgress& pr) {
    tova::py::Locked gil;
    if (!progress.is_none()) progress(pr.tokens_done, pr.tokens_total, pr.nll_sum, pr.n_scored);
    if (tova::py::check_signals() != 0) throw nb::python_error();
  };
  PerplexityResult r;
  try {
    tova::py::Unlocked release;
    r = measure_perplexity(engine, tokens, p, on_piece);
  } catch (...) {
    tova::py::Unlocked release;  // reset waits for the engine, whose steps may need the GIL
    engine.reset();  // not left mid-sequence
    throw;
  }
  return result_dict(std::move(r));
}

}  // namespace

void bind_perplexity(nb::module_& m) {
  m.def("perplexity", &perplexity, nb::arg("engine"), nb::arg("tokens"),
        nb::arg("context").none() = nb::none(), nb::arg("stride").none() = nb::none(),
        nb::arg("chunks").none() = nb::none(), nb::arg("score_from").none() = nb::none(),
        nb::arg("add_bos").none() = nb::none(), nb::arg("progress").none() = nb::none(),
        "Perplexity of the tokens read through the engine (tova.perplexity's rules); a dict of "
        "ppl, stderr, nll, nll_stderr, n_scored, n_tokens, n_windows, seconds, score_from, nlls.");
  m.def("nll_stats",
        [](const std::vector<double>& nlls) {
          const NllStats s = nll_stats(nlls);
          return nb::make_tuple(s.ppl, s.ppl_stderr, s.nll, s.nll_stderr);
        },
        nb::arg("nlls"), "(ppl, ppl_stderr, mean_nll, nll_stderr) as llama-perplexity prints them.");
}
