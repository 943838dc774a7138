// Pieces of the tova._core module, one per concern; module.cpp calls each.
#pragma once

#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace tova {
struct Stats;
}

// A generation's statistics as the dict Python sees (Handle.stats, Engine.last_stats).
nb::dict stats_dict(const tova::Stats& s);

void bind_gguf(nb::module_& m);
void bind_quant(nb::module_& m);
void bind_tokenizer(nb::module_& m);
void bind_sampler(nb::module_& m);
void bind_policy(nb::module_& m);
void bind_engine(nb::module_& m);
void bind_chat(nb::module_& m);
void bind_perplexity(nb::module_& m);
