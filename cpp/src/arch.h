// Architectures are data: an ArchSpec reads the hyperparameters of one `general.architecture`
// into HParams, whose flags the single forward pass reads. Adding an architecture is one entry
// in the registry (arch.cpp) plus, at most, a new flag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tova {

class GgufFile;

enum class RopeStyle { Normal, NeoX };       // pairs (2i, 2i+1) vs (i, i + d/2)
enum class RopeScaling { None, Linear, Yarn };
enum class FfnActivation { SiLU, GeluTanh };

struct HParams {
  std::string arch;
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;     // key length
  int head_dim_v = 0;   // value length
  int n_ff = 0;
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;

  // RoPE
  RopeStyle rope_style = RopeStyle::Normal;
  int rope_dim = 0;                 // rotated dims per head (<= head_dim)
  float rope_base = 10000.0f;
  float rope_base_swa = 10000.0f;   // sliding-window layers' base (gemma3)
  RopeScaling rope_scaling = RopeScaling::None;
  float rope_scale_factor = 1.0f;   // context extension factor (Linear: positions / factor)
  int rope_orig_ctx = 0;            // YaRN: original training context
  float yarn_beta_fast = 32.0f, yarn_beta_slow = 1.0f;
  float yarn_ext_factor = 1.0f, yarn_attn_factor = 1.0f;

  // Block structure flags
  bool qkv_bias = false;        // qwen2
  bool qk_norm = false;         // per-head RMSNorm on q and k (gemma3)
  bool post_norms = false;      // norms after attention and after the FFN (gemma3)
  bool embed_scale = false;     // embeddings scaled by sqrt(n_embd) (gemma)
  FfnActivation ffn_act = FfnActivation::SiLU;
  float attn_scale = 0.0f;      // 0: 1/sqrt(head_dim)

  // Sliding-window attention: layers with is_swa[l] keep only the last n_swa positions.
  int n_swa = 0;
  std::vector<bool> is_swa;

  bool is_swa_layer(int l) const { return !is_swa.empty() && is_swa[static_cast<size_t>(l)]; }
  int n_gqa() const { return n_head / n_head_kv; }
};

struct ArchSpec {
  const char* name;
  // Fills `hp` from the file's metadata (the generic keys are read before this is called).
  void (*load)(const GgufFile& file, HParams& hp);
};

// The architectures tova runs; an unknown name raises FormatError listing these.
const std::vector<ArchSpec>& arch_registry();
const ArchSpec& find_arch(const std::string& name, const std::string& file);

// Reads `general.architecture` and every hyperparameter; validates them (positive sizes, heads
// divide evenly, ...).
HParams load_hparams(const GgufFile& file);

// The largest hyperparameters tova accepts: far above any released model, low enough that sizes
// computed from them fit their integer types and fail as a clear error, not an allocation.
struct HParamLimits {
  static constexpr int64_t kWidth = 1 << 17;     // embedding_length (x16 for feed_forward_length)
  static constexpr int64_t kLayers = 1 << 12;    // block_count
  static constexpr int64_t kHeads = 1 << 12;     // head counts
  static constexpr int64_t kHeadDim = 1 << 12;   // key / value length
  static constexpr int64_t kContext = 1 << 24;   // context_length, sliding windows
  static constexpr int64_t kVocab = 1 << 24;     // vocab_size
};

// An integer hyperparameter `key` of `file` within [lo, hi], else FormatError naming the key and
// the file; `def` when absent, or kRequired to make absence an error.
constexpr int64_t kRequired = INT64_MIN;
int hparam(const GgufFile& file, const std::string& key, int64_t def, int64_t lo, int64_t hi);
// A float hyperparameter (its default when absent), finite and within [lo, hi]: a corrupt value
// (NaN, say) is an error naming the key, not a model that loads and writes garbage.
double float_hparam(const GgufFile& file, const std::string& key, double def, double lo, double hi);

}  // namespace tova
