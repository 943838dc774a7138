// `tova perplexity`: perplexity of a model reading a text file through its fixed-memory KV cache,
// as python/tova/perplexity.py computes it (same windows, same scored tokens, same numbers).
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace tova {

// argv: the arguments after "perplexity"; resolve_model turns the -m value into a GGUF path (a
// registry name is resolved by the main program). Returns the exit status; errors are thrown
// (tova::ArgumentError for bad options) for main() to print.
int cmd_perplexity(const std::vector<std::string>& argv,
                   const std::function<std::string(const std::string&)>& resolve_model);

}  // namespace tova
