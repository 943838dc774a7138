#include "cli_args.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

#include "common.h"

namespace tova {

CliArgs::CliArgs(const std::vector<std::string>& argv, const std::set<std::string>& with_value,
                 const std::set<std::string>& flags, const std::map<std::string, std::string>& aliases) {
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string a = argv[i];
    if (a.size() < 2 || a[0] != '-' || a == "--") {
      if (a == "--") {
        for (size_t j = i + 1; j < argv.size(); ++j) positional_.push_back(argv[j]);
        break;
      }
      positional_.push_back(a);
      continue;
    }
    std::string value;
    bool inline_value = false;
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      inline_value = true;
    }
    auto al = aliases.find(a);
    const std::string name = al != aliases.end() ? al->second : a;
    if (flags.count(name)) {
      if (inline_value) throw ArgumentError(cat("option ", a, " takes no value"));
      values_[name] = "1";
    } else if (with_value.count(name)) {
      if (!inline_value) {
        if (i + 1 >= argv.size()) throw ArgumentError(cat("option ", a, " needs a value"));
        value = argv[++i];
        // `-m --temp 0`: the value forgotten, the next option taken for it (a negative number
        // such as `--seed -1` is a value: it is no option of this command).
        const auto next = aliases.find(value);
        const std::string next_name = next != aliases.end() ? next->second : value;
        if (value.size() > 1 && value[0] == '-' && (flags.count(next_name) || with_value.count(next_name)))
          throw ArgumentError(cat("option ", a, " needs a value (got the option ", value, ")"));
      }
      values_[name] = value;
      spelled_[name] = a;
    } else {
      throw ArgumentError(cat("unknown option ", a, " (see --help)"));
    }
  }
}

const std::string& CliArgs::spelled(const std::string& name) const {
  auto it = spelled_.find(name);
  return it == spelled_.end() ? name : it->second;
}

std::string CliArgs::str(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

long long CliArgs::integer64(const std::string& name, long long def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end != '\0')
    throw ArgumentError(cat("option ", spelled(name), " needs an integer, got '", it->second, "'"));
  if (errno == ERANGE) throw ArgumentError(cat("option ", spelled(name), " is out of range: ", it->second));
  return v;
}

int CliArgs::integer(const std::string& name, int def) const {
  long long v = integer64(name, def);
  if (v < -2147483647LL || v > 2147483647LL)
    throw ArgumentError(cat("option ", spelled(name), " is out of range: ", v));
  return static_cast<int>(v);
}

double CliArgs::number(const std::string& name, double def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0')
    throw ArgumentError(cat("option ", spelled(name), " needs a number, got '", it->second, "'"));
  return v;
}

int max_tokens_from(const CliArgs& a, const std::string& name, int def, int min) {
  const int n = a.integer(name, def);
  if (n == -1) return std::numeric_limits<int>::max();  // stops at end of generation or a full context
  if (n < min)
    throw ArgumentError(cat("option ", a.spelled(name), " must be at least ", min, ", or -1 for no limit; got ", n));
  return n;
}

EngineParams engine_params_from(const CliArgs& a, const std::string& default_policy) {
  EngineParams p;  // the defaults, written once (config.h)
  p.n_threads = a.integer("--threads", p.n_threads);
  p.policy = parse_policy(a.str("--policy", default_policy));
  p.kv_size = a.integer("--kv-size", p.kv_size);
  p.n_ctx = a.integer("--ctx", p.n_ctx);
  p.n_sink = a.integer("--n-sink", p.n_sink);
  // (-1 is the core's "the policy's default", which leaving the option out gives)
  if (a.has("--n-sink") && p.n_sink < 0) throw ArgumentError(cat("--n-sink must be >= 0, got ", p.n_sink));
  // --kv-type sets keys and values (a type, or K/V); --kv-type-k / --kv-type-v (llama.cpp's -ctk /
  // -ctv) one each.
  if (a.has("--kv-type"))
    std::tie(p.kv_type_k, p.kv_type_v) = parse_kv_type_pair(a.str("--kv-type", ""), "--kv-type");
  if (a.has("--kv-type-k")) p.kv_type_k = parse_kv_type(a.str("--kv-type-k", ""), "--kv-type-k (-ctk)");
  if (a.has("--kv-type-v")) p.kv_type_v = parse_kv_type(a.str("--kv-type-v", ""), "--kv-type-v (-ctv)");
  p.kv_hadamard = !a.has("--no-kv-hadamard");
  p.float_activations = a.has("--float-activations");
  if (a.has("--kv-lo-type")) {
    p.kv_lo = true;
    std::tie(p.kv_lo_type_k, p.kv_lo_type_v) = parse_kv_type_pair(a.str("--kv-lo-type", ""), "--kv-lo-type");
  }
  p.kv_hi_size = a.integer("--kv-hi-size", p.kv_hi_size);
  p.chunk = a.integer("--chunk", p.chunk);
  p.prefill = parse_prefill(a.str("--prefill", prefill_name(p.prefill)));
  p.positions = parse_positions(a.str("--positions", positions_name(p.positions)));
  p.n_seq = a.integer("--n-seq", p.n_seq);
  // --device (as llama.cpp's users say it) and --backend name the same setting.
  const std::string backend = a.str("--backend", backend_name(p.backend));
  if (a.has("--device") && a.has("--backend") && a.str("--device", "") != backend)
    throw ArgumentError("--device and --backend disagree: give one");
  p.backend = parse_backend(a.str("--device", backend));
  if (a.has("--kv-budget")) p.kv_budget = parse_bytes(a.str("--kv-budget", ""), "--kv-budget");
  if (a.has("--policy-plugin") && a.has("--policy"))
    throw ArgumentError("--policy and --policy-plugin both choose the eviction policy: give one");
  if (a.has("--policy-args") && !a.has("--policy-plugin"))
    throw ArgumentError("--policy-args are arguments for a --policy-plugin, and none is given");
  if (a.has("--policy-plugin"))
    p.plugin = load_policy_plugin(a.str("--policy-plugin", ""), a.str("--policy-args", ""));
  return p;
}

}  // namespace tova
