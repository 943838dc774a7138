// `tova chat`: a terminal chat with a local model in fixed memory (see chat_cli.cpp for the
// commands and the piped mode).
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace tova {

// Turns the -m value into a GGUF path: a path as given, or a registry name resolved by the main
// program (which asks the Python package).
using ModelResolver = std::function<std::string(const std::string&)>;

// argv: the arguments after "chat". Returns the exit status; errors are thrown (tova::ArgumentError
// for bad options, others for a model that cannot be loaded) for main() to print.
int cmd_chat(const std::vector<std::string>& argv, const ModelResolver& resolve_model);

}  // namespace tova
