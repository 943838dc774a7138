#include "config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "common.h"

namespace tova {

namespace {

template <class E, size_t N>
E parse_enum(const char* what, const std::string& name, const std::pair<const char*, E> (&table)[N]) {
  std::string known;
  for (const auto& [n, e] : table) {
    if (name == n) return e;
    known += cat(known.empty() ? "" : ", ", n);
  }
  throw ArgumentError(cat("unknown ", what, " '", name, "' (known: ", known, ")"));
}

template <class E, size_t N>
const char* enum_name(E e, const std::pair<const char*, E> (&table)[N]) {
  for (const auto& [n, v] : table)
    if (v == e) return n;
  return "?";
}

const std::pair<const char*, PolicyKind> kPolicies[] = {
    {"tova", PolicyKind::Tova}, {"h2o", PolicyKind::H2O}, {"sink", PolicyKind::Sink},
    {"window", PolicyKind::Window}, {"full", PolicyKind::Full}, {"tova_ema", PolicyKind::TovaEma}};
const std::pair<const char*, KvType> kKvTypes[] = {
    {"f16", KvType::F16}, {"f32", KvType::F32}, {"q8_0", KvType::Q8_0}, {"q4_0", KvType::Q4_0},
    {"q4_1", KvType::Q4_1}, {"q5_0", KvType::Q5_0}, {"q5_1", KvType::Q5_1}, {"q3_0", KvType::Q3_0}};
const std::pair<const char*, PrefillMode> kPrefill[] = {
    {"exact", PrefillMode::Exact}, {"chunked", PrefillMode::Chunked}};
const std::pair<const char*, PositionsMode> kPositions[] = {
    {"original", PositionsMode::Original}, {"cache_index", PositionsMode::CacheIndex}};

const std::pair<const char*, BackendKind> kBackends[] = {{"cpu", BackendKind::Cpu}, {"cuda", BackendKind::Cuda}};

void bound(const char* name, int64_t v, int64_t lo, int64_t hi, const char* hint = "") {
  // With a hint the lower bound is a value of its own (0 = automatic) that Python spells None:
  // too large a value is told against the upper bound alone.
  if (v > hi && *hint) throw ArgumentError(cat(name, " must be at most ", hi, ", got ", v));
  if (v < lo || v > hi) throw ArgumentError(cat(name, " must be in [", lo, ", ", hi, "], got ", v, hint));
}

}  // namespace

PolicyKind parse_policy(const std::string& name) { return parse_enum("policy", name, kPolicies); }
KvType parse_kv_type(const std::string& name, const char* what) { return parse_enum(what, name, kKvTypes); }
PrefillMode parse_prefill(const std::string& name) { return parse_enum("prefill mode", name, kPrefill); }
PositionsMode parse_positions(const std::string& name) {
  return parse_enum("positions mode", name, kPositions);
}
BackendKind parse_backend(const std::string& name) { return parse_enum("device", name, kBackends); }
const char* backend_name(BackendKind b) { return enum_name(b, kBackends); }
const char* policy_name(PolicyKind p) { return p == PolicyKind::Plugin ? "plugin" : enum_name(p, kPolicies); }
const char* kv_type_name(KvType t) { return enum_name(t, kKvTypes); }
const char* prefill_name(PrefillMode p) { return enum_name(p, kPrefill); }
const char* positions_name(PositionsMode p) { return enum_name(p, kPositions); }

namespace {

// "q8_0" when keys and values share a type, else "K/V": what parse_kv_type_pair reads.
std::string kv_pair_label(KvType k, KvType v) {
  if (k == v) return kv_type_name(k);
  return cat(kv_type_name(k), "/", kv_type_name(v));
}

}  // namespace

std::string EngineParams::kv_type_label() const { return kv_pair_label(kv_type_k, kv_type_v); }

std::pair<KvType, KvType> parse_kv_type_pair(const std::string& text, const char* what) {
  const size_t slash = text.find('/');
  if (slash == std::string::npos) {
    const KvType t = parse_kv_type(text, what);
    return {t, t};
  }
  if (text.find('/', slash + 1) != std::string::npos)
    throw ArgumentError(cat(what, " '", text, "' has more than one '/' (a type, or the keys' type/the values' type)"));
  const std::string k = text.substr(0, slash), v = text.substr(slash + 1);
  return {parse_kv_type(k, cat(what, " (keys)").c_str()), parse_kv_type(v, cat(what, " (values)").c_str())};
}

std::string EngineParams::kv_lo_type_label() const {
  return kv_lo ? kv_pair_label(kv_lo_type_k, kv_lo_type_v) : std::string();
}

int EngineParams::hi_size() const {
  if (!kv_lo) return 0;
  return kv_hi_size > 0 ? kv_hi_size : std::max(1, cache_size() / 4);
}

void EngineParams::validate() const {
  bound("n_threads", n_threads, 0, Limits::kMaxThreads, " (0 = all cores)");
  bound("kv_size", kv_size, 0, Limits::kMaxCtx, " (0 = 512, or the model's context when shorter)");
  bound("n_ctx", n_ctx, 1, Limits::kMaxCtx);
  bound("chunk", chunk, 1, Limits::kMaxChunk);
  bound("n_seq", n_seq, 1, Limits::kMaxSeq);
  bound("n_batch", n_batch, 0, Limits::kMaxBatch, " (0 = automatic)");
  if (n_batch > 0 && n_batch < chunk)
    throw ArgumentError(cat("n_batch ", n_batch, " is smaller than chunk ", chunk,
                            ": a step must fit one prefill chunk"));
  if (n_sink < -1) throw ArgumentError(cat("n_sink must be >= 0, got ", n_sink));
  if (!plugin && policy == PolicyKind::Plugin)
    throw ArgumentError("policy 'plugin' needs a plugin object");
  if (!full() && kv_tokens() < sink() + 1)
    throw ArgumentError(cat("kv_size ", kv_tokens(), " is too small: it must exceed n_sink ", sink(),
                            " (at least ", sink() + 1, ")"));
  if (kv_hi_size < 0) throw ArgumentError(cat("kv_hi_size must be >= 0, got ", kv_hi_size));
  auto values_only = [](const char* what, KvType t) {
    if (t == KvType::Q3_0)
      throw ArgumentError(cat(what, " q3_0: q3_0 is for values only, keys need 4 bits or more (give keys and "
                              "values apart, e.g. keys q8_0 or q4_0 with values q3_0)"));
  };
  values_only("kv_type_k (kv_type's keys)", kv_type_k);
  if (kv_lo) values_only("kv_lo_type_k (kv_lo_type's keys)", kv_lo_type_k);
  if (kv_lo) {
    // The upper tier also holds a step's working slots (chunk): without room beyond both, the
    // lower tier would never be used.
    if (static_cast<int64_t>(hi_size()) + chunk >= cache_size())
      throw ArgumentError(cat("kv_hi_size ", hi_size(), " + chunk ", chunk, " (the upper tier's working slots) must be "
                              "smaller than ", full() ? "n_ctx " : "kv_size ", cache_size(),
                              ": the rest of the cache is the kv_lo_type tier"));
    if (plugin)
      throw ArgumentError("kv_lo_type works with the built-in policies only (a token changes slot when it "
                          "moves to the lower tier, which a plugin's own per-slot data would not follow)");
    if (positions == PositionsMode::CacheIndex)
      throw ArgumentError("kv_lo_type does not work with positions 'cache_index' yet");
  } else if (kv_hi_size > 0) {
    throw ArgumentError("kv_hi_size needs kv_lo_type (the type of the tokens beyond it)");
  }
}

uint64_t parse_bytes(const std::string& text, const char* what) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  const char* begin = text.c_str() + i;
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  if (end == begin || !std::isfinite(v) || v < 0)
    throw ArgumentError(cat(what, ": '", text, "' is not a size (examples: 256MiB, 1.5GB, 1048576)"));
  std::string unit(end);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.erase(0, 1);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const std::pair<const char*, double> units[] = {
      {"", 1},         {"b", 1},          {"k", 1024.0},     {"kb", 1e3},  {"kib", 1024.0},
      {"m", 1048576.0}, {"mb", 1e6},       {"mib", 1048576.0}, {"g", 1073741824.0},
      {"gb", 1e9},     {"gib", 1073741824.0}, {"t", 1099511627776.0}, {"tb", 1e12},
      {"tib", 1099511627776.0}};
  for (const auto& [u, f] : units)
    if (unit == u) {
      const double bytes = v * f;
      if (bytes > 1.8e19) throw ArgumentError(cat(what, ": size '", text, "' is too large"));
      return static_cast<uint64_t>(bytes);
    }
  throw ArgumentError(cat(what, ": unknown size unit '", unit, "' in '", text, "' (use B, KiB, MiB, GiB, KB, MB, GB)"));
}

}  // namespace tova
