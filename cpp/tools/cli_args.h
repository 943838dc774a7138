// A small command-line option parser for the tova program: "-m X", "--model X", "--model=X",
// flags without values; unknown options and missing values are errors naming the option.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine.h"

namespace tova {

class CliArgs {
 public:
  // `with_value`: option names (long and short) that take a value; `flags`: those that do not;
  // `aliases`: short -> long.
  CliArgs(const std::vector<std::string>& argv, const std::set<std::string>& with_value,
          const std::set<std::string>& flags, const std::map<std::string, std::string>& aliases);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name, const std::string& def) const;
  int integer(const std::string& name, int def) const;
  long long integer64(const std::string& name, long long def) const;
  double number(const std::string& name, double def) const;
  const std::vector<std::string>& positional() const { return positional_; }
  // The option as the user wrote it ("-n" for --n-predict), for error messages; `name` if not given.
  const std::string& spelled(const std::string& name) const;

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> spelled_;  // long name -> as written
  std::vector<std::string> positional_;
};

// -n N, the most tokens to generate: N >= `min`, or -1 for no limit (llama.cpp's meaning);
// `def` when not given. Errors name the option as written.
int max_tokens_from(const CliArgs& a, const std::string& name, int def, int min);

// The engine options every command shares (--threads, --policy, --kv-size, --ctx, --n-sink,
// --kv-type, --chunk, --prefill, --positions, --policy-plugin, --policy-args,
// --float-activations).
EngineParams engine_params_from(const CliArgs& a, const std::string& default_policy);

}  // namespace tova
