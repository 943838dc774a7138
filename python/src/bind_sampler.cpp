// tova._core.SamplingParams and tova._core.Sampler (the C++ chain; tova.sampling wraps the params).
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <limits>

#include "bindings.h"
#include "common.h"
#include "sampler.h"

using namespace tova;
using namespace nb::literals;

namespace {

using Logits = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

int32_t vocab_size(const Logits& logits) {
  const size_t n = logits.shape(0);
  if (n == 0) throw ArgumentError("Sampler: logits is empty: expected one value per vocabulary token");
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw ArgumentError(cat("Sampler: logits has ", n, " entries: more than an int32 vocabulary"));
  return static_cast<int32_t>(n);
}

// A fresh 1-D numpy array that owns a copy of `n` values.
template <class T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> owned_array(const T* src, size_t n) {
  T* buf = new T[n > 0 ? n : 1];
  if (n > 0) std::memcpy(buf, src, n * sizeof(T));
  nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(buf, {n}, owner);
}

std::string params_repr(const SamplingParams& p) {
  return cat("SamplingParams(temperature=", p.temperature, ", top_k=", p.top_k, ", top_p=", p.top_p,
             ", min_p=", p.min_p, ", repeat_penalty=", p.repeat_penalty,
             ", frequency_penalty=", p.frequency_penalty, ", presence_penalty=", p.presence_penalty,
             ", penalty_last_n=", p.penalty_last_n, ", seed=", p.seed, ")");
}

}  // namespace

void bind_sampler(nb::module_& m) {
  const SamplingParams d{};  // the defaults live in sampler.h only

  nb::class_<SamplingParams>(m, "SamplingParams",
                             "Sampling settings (C++ struct; tova.SamplingParams is the typed wrapper).")
      .def(
          "__init__",
          [](SamplingParams* self, float temperature, int32_t top_k, float top_p, float min_p,
             float repeat_penalty, float frequency_penalty, float presence_penalty,
             int32_t penalty_last_n, int64_t seed) {
            new (self) SamplingParams{temperature,       top_k,           top_p,
                                      min_p,             repeat_penalty,  frequency_penalty,
                                      presence_penalty,  penalty_last_n,  seed};
          },
          nb::kw_only(), "temperature"_a = d.temperature, "top_k"_a = d.top_k, "top_p"_a = d.top_p,
          "min_p"_a = d.min_p, "repeat_penalty"_a = d.repeat_penalty,
          "frequency_penalty"_a = d.frequency_penalty, "presence_penalty"_a = d.presence_penalty,
          "penalty_last_n"_a = d.penalty_last_n, "seed"_a = d.seed,
          "Builds the parameters (not validated until validate() or Sampler()).")
      .def_rw("temperature", &SamplingParams::temperature)
      .def_rw("top_k", &SamplingParams::top_k)
      .def_rw("top_p", &SamplingParams::top_p)
      .def_rw("min_p", &SamplingParams::min_p)
      .def_rw("repeat_penalty", &SamplingParams::repeat_penalty)
      .def_rw("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_rw("presence_penalty", &SamplingParams::presence_penalty)
      .def_rw("penalty_last_n", &SamplingParams::penalty_last_n)
      .def_rw("seed", &SamplingParams::seed)
      .def("validate", &SamplingParams::validate,
           "Raises ValueError naming the first field out of range.")
      .def("__repr__", &params_repr);

  nb::class_<Sampler>(m, "Sampler",
                      "A sampler chain: penalties -> top-k -> top-p -> min-p -> temperature -> dist "
                      "(penalties -> greedy when temperature is 0).")
      .def(nb::init<const SamplingParams&>(), "params"_a)
      .def(
          "sample",
          [](Sampler& s, const Logits& logits) { return s.sample(logits.data(), vocab_size(logits)); },
          "logits"_a, "Picks a token id from one position's float32 logits (does not accept it).")
      .def("accept", &Sampler::accept, "token"_a,
           "Records a token that entered the context, for the penalties.")
      .def("reset", &Sampler::reset, "Clears the history and restarts the random stream.")
      .def(
          "candidates",
          [](Sampler& s, const Logits& logits) {
            const auto probs = s.probabilities_after_filters(logits.data(), vocab_size(logits));
            std::vector<int32_t> ids(probs.size());
            std::vector<float> ps(probs.size());
            for (size_t i = 0; i < probs.size(); ++i) {
              ids[i] = probs[i].first;
              ps[i] = probs[i].second;
            }
            return nb::make_tuple(owned_array(ids.data(), ids.size()),
                                  owned_array(ps.data(), ps.size()));
          },
          "logits"_a,
          "(ids int32, probs float32): the tokens the draw would choose from after every filter and "
          "the temperature, most likely first. Consumes no randomness.")
      .def_prop_ro("params", [](const Sampler& s) { return s.params(); })
      .def_prop_ro("seed", &Sampler::seed, "The seed in use (the drawn one when params.seed is -1).")
      .def("describe", &Sampler::describe, "The stage names in chain order.")
      .def("__repr__", [](const Sampler& s) {
        return cat("Sampler(", s.describe(), ", seed=", s.seed(), ")");
      });
}
