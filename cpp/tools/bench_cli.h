// tova bench: llama-bench style speed of prompt processing (ppN) and generation (tgN) of one
// sequence, and with --batch N / --kv-budget B the total generation speed of N sequences
// decoding together in one engine.
#pragma once

#include <string>
#include <vector>

namespace tova {

// `resolve_model` turns a registry name into a path.
int cmd_bench(const std::vector<std::string>& argv, std::string (*resolve_model)(const std::string&));

}  // namespace tova
