// The engine's settings: the enums (policy, KV element type, prefill, positions) parsed from
// their names in one place, the defaults written once (EngineParams), and the bounds every
// face (Python, CLI) gets the same clear error for.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "kv_policy.h"

namespace tova {

enum class PolicyKind { Tova, H2O, Sink, Window, Full, TovaEma, Plugin };
// Q3_0: tova's own 3-bit value format (quant_blocks.h BlockQ3_0), for values only.
enum class KvType { F32, F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q3_0 };
enum class PrefillMode { Exact, Chunked };
enum class PositionsMode { Original, CacheIndex };
enum class BackendKind { Cpu, Cuda };  // Cuda: built with TOVA_CUDA (cuda/)

// parse_*: ArgumentError listing the known names for an unknown one.
PolicyKind parse_policy(const std::string& name);  // a built-in name ("plugin" is not one)
// "f32", "f16", "q8_0", "q5_x", "q4_x", "q3_0"; `what` names the setting in the error.
KvType parse_kv_type(const std::string& name, const char* what = "kv_type");
// "q4_0" (keys and values) or "q8_0/q4_1" (keys / values).
std::pair<KvType, KvType> parse_kv_type_pair(const std::string& text, const char* what);
PrefillMode parse_prefill(const std::string& name);  // "exact", "chunked"
PositionsMode parse_positions(const std::string& name);  // "original", "cache_index"
BackendKind parse_backend(const std::string& name);      // "cpu"
const char* policy_name(PolicyKind p);
const char* kv_type_name(KvType t);
const char* prefill_name(PrefillMode p);
const char* positions_name(PositionsMode p);
const char* backend_name(BackendKind b);

// Upper bounds: beyond them a setting is a mistake, not a wish (and would exhaust memory).
struct Limits {
  static constexpr int kMaxThreads = 512;
  static constexpr int kMaxChunk = 8192;      // tokens per prefill step of one sequence
  static constexpr int kMaxBatch = 65536;     // tokens per scheduler step
  static constexpr int kMaxSeq = 1024;        // sequences in one engine
  static constexpr int kMaxCtx = 1 << 22;     // n_ctx, kv_size (tokens)
};

struct EngineParams {
  static constexpr int kDefaultKvSize = 512;
  int n_threads = 0;               // 0: the number of cores (at most 16)
  PolicyKind policy = PolicyKind::Tova;  // ignored when plugin is set (then Plugin)
  // C: tokens kept per layer (evicting policies); 0: kDefaultKvSize, or the model's training
  // context when that is shorter (the Engine resolves it when it reads the model).
  int kv_size = 0;
  int n_ctx = 2048;                // full policy: the cache size and the most tokens a sequence holds
  int n_sink = -1;                 // -1: the policy's default (sink: 4, others 0)
  KvType kv_type_k = KvType::F16;  // element type of the stored keys
  KvType kv_type_v = KvType::F16;  // and values (kv_type sets both)
  bool kv_hadamard = true;         // quantized keys / values stored Hadamard-rotated (KvLayout)
  // Two precision tiers (KvConfig::hi_capacity): with kv_lo set, the policy's layers keep
  // kv_hi_size tokens in kv_type_k/_v and the rest of their kv_size (n_ctx for full) in the
  // lower types; a token moves down when a newer one needs its place.
  bool kv_lo = false;
  KvType kv_lo_type_k = KvType::Q4_0;
  KvType kv_lo_type_v = KvType::Q4_0;
  int kv_hi_size = 0;              // 0: a quarter of the cache (at least 1)
  PrefillMode prefill = PrefillMode::Exact;
  PositionsMode positions = PositionsMode::Original;
  BackendKind backend = BackendKind::Cpu;
  int chunk = 64;                  // U: prompt tokens of one sequence per step
  int n_seq = 1;                   // sequences the engine holds at once
  uint64_t kv_budget = 0;          // bytes; > 0: n_seq is the most sequences that fit in it
  int n_batch = 0;                 // tokens per scheduler step; 0: chunk + n_seq
  bool float_activations = false;  // exact float32 matmuls instead of 8-bit activations
  PolicyHandle plugin;             // a user policy (C plugin or Python adapter); overrides `policy`

  bool full() const { return !plugin && policy == PolicyKind::Full; }
  int default_sink() const { return !plugin && policy == PolicyKind::Sink ? 4 : 0; }
  int sink() const { return n_sink >= 0 ? n_sink : default_sink(); }
  // "f16" when keys and values share a type, else "K/V" ("q8_0/q4_0").
  std::string kv_type_label() const;
  std::string kv_lo_type_label() const;  // "" without a lower tier
  int kv_tokens() const { return kv_size > 0 ? kv_size : kDefaultKvSize; }  // kv_size, 0 read as the default
  int cache_size() const { return full() ? n_ctx : kv_tokens(); }
  int hi_size() const;  // tokens of the upper tier (kv_lo), else 0
  // Throws ArgumentError naming the first setting out of bounds.
  void validate() const;
};

// Parses "256MiB", "1.5 GB", "1048576" (bytes); ArgumentError naming `what` (the setting) otherwise.
uint64_t parse_bytes(const std::string& text, const char* what);

}  // namespace tova
