#include "arch.h"

#include <cmath>

#include <cstdint>

#include "common.h"
#include "gguf.h"

namespace tova {

ArchSpec arch_llama();
ArchSpec arch_qwen2();
ArchSpec arch_gemma3();

const std::vector<ArchSpec>& arch_registry() {
  static const std::vector<ArchSpec> registry = {arch_llama(), arch_qwen2(), arch_gemma3()};
  return registry;
}

const ArchSpec& find_arch(const std::string& name, const std::string& file) {
  for (const ArchSpec& a : arch_registry())
    if (name == a.name) return a;
  std::string known;
  for (const ArchSpec& a : arch_registry()) known += cat(known.empty() ? "" : ", ", a.name);
  throw FormatError(cat(file, ": unsupported architecture '", name, "' (supported: ", known, ")"));
}

double float_hparam(const GgufFile& f, const std::string& key, double def, double lo, double hi) {
  const double v = f.get_float(key, def);
  if (!std::isfinite(v) || v < lo || v > hi)
    throw FormatError(cat(f.path(), ": hyperparameter ", key, " = ", v, " is not in [", lo, ", ", hi, "]"));
  return v;
}

namespace {

void read_rope_scaling(const GgufFile& f, const std::string& a, HParams& hp) {
  std::string type = f.get_string(a + ".rope.scaling.type", "none");
  double factor = float_hparam(f, a + ".rope.scaling.factor", 0.0, 0.0, 1e6);
  if (type == "none" || factor == 0.0 || factor == 1.0) {
    hp.rope_scaling = RopeScaling::None;
  } else if (type == "linear") {
    hp.rope_scaling = RopeScaling::Linear;
  } else if (type == "yarn") {
    hp.rope_scaling = RopeScaling::Yarn;
    hp.rope_orig_ctx = static_cast<int>(
        f.get_int(a + ".rope.scaling.original_context_length", hp.n_ctx_train));
    hp.yarn_beta_fast = static_cast<float>(float_hparam(f, a + ".rope.scaling.yarn_beta_fast", 32.0, -1e6, 1e6));
    hp.yarn_beta_slow = static_cast<float>(float_hparam(f, a + ".rope.scaling.yarn_beta_slow", 1.0, -1e6, 1e6));
  } else {
    throw FormatError(cat(f.path(), ": unsupported RoPE scaling type '", type,
                          "' (supported: none, linear, yarn)"));
  }
  if (hp.rope_scaling != RopeScaling::None) hp.rope_scale_factor = static_cast<float>(factor);
}

void check_positive(const GgufFile& f, const char* what, int v) {
  if (v <= 0) throw FormatError(cat(f.path(), ": hyperparameter ", what, " must be positive, found ", v));
}

}  // namespace

int hparam(const GgufFile& f, const std::string& key, int64_t def, int64_t lo, int64_t hi) {
  const int64_t v = def == kRequired ? f.require_int(key) : f.get_int(key, def);
  if (v < lo) {
    if (lo == 1) throw FormatError(cat(f.path(), ": hyperparameter ", key, " must be positive, found ", v));
    throw FormatError(cat(f.path(), ": hyperparameter ", key, " = ", v, " is below its minimum ", lo));
  }
  if (v > hi)
    throw FormatError(cat(f.path(), ": hyperparameter ", key, " = ", v, " is larger than ", hi,
                          ", the most tova accepts"));
  return static_cast<int>(v);
}

HParams load_hparams(const GgufFile& f) {
  HParams hp;
  // One part of a model split by llama.cpp's gguf-split: the others hold the rest of its tensors.
  const int64_t parts = f.get_int("split.count", 1);
  if (parts > 1)
    throw FormatError(cat(f.path(), ": part ", f.get_int("split.no", 0) + 1, " of ", parts,
                          " of a split GGUF model; tova reads one file: merge the parts first "
                          "(llama-gguf-split --merge FIRST_PART OUT.gguf)"));
  hp.arch = f.require_string("general.architecture");
  const ArchSpec& spec = find_arch(hp.arch, f.path());
  const std::string& a = hp.arch;
  if (f.get_int(a + ".expert_count", 0) > 0)
    throw FormatError(cat(f.path(), ": a mixture-of-experts model (", a, ".expert_count = ",
                          f.get_int(a + ".expert_count", 0), "), which tova does not run"));
  // Every size is read as the 64-bit value the file holds and bounded before it is narrowed:
  // a hostile value fails here with its key named, not later as a wrapped int or an allocation.
  hp.n_embd = hparam(f, a + ".embedding_length", kRequired, 1, HParamLimits::kWidth);
  hp.n_layer = hparam(f, a + ".block_count", kRequired, 1, HParamLimits::kLayers);
  hp.n_ff = hparam(f, a + ".feed_forward_length", kRequired, 1, HParamLimits::kWidth * 16);
  hp.n_head = hparam(f, a + ".attention.head_count", kRequired, 1, HParamLimits::kHeads);
  hp.n_head_kv = hparam(f, a + ".attention.head_count_kv", hp.n_head, 1, HParamLimits::kHeads);
  hp.n_ctx_train = hparam(f, a + ".context_length", 2048, 1, HParamLimits::kContext);
  hp.head_dim = hparam(f, a + ".attention.key_length", hp.n_embd / hp.n_head, 1, HParamLimits::kHeadDim);
  hp.head_dim_v = hparam(f, a + ".attention.value_length", hp.head_dim, 1, HParamLimits::kHeadDim);
  if (hp.head_dim_v != hp.head_dim)
    throw FormatError(cat(f.path(), ": value length ", hp.head_dim_v, " != key length ",
                          hp.head_dim, " is not supported"));
  if (hp.n_head % hp.n_head_kv != 0)
    throw FormatError(cat(f.path(), ": head_count ", hp.n_head,
                          " is not a multiple of head_count_kv ", hp.n_head_kv));
  hp.rms_eps = static_cast<float>(float_hparam(f, a + ".attention.layer_norm_rms_epsilon", 1e-5, 0.0, 1.0));
  hp.rope_base = static_cast<float>(float_hparam(f, a + ".rope.freq_base", 10000.0, 1.0, 1e12));
  hp.rope_dim = hparam(f, a + ".rope.dimension_count", hp.head_dim, INT32_MIN, INT32_MAX);
  if (hp.rope_dim <= 0 || hp.rope_dim > hp.head_dim || hp.rope_dim % 2 != 0)
    throw FormatError(cat(f.path(), ": rope.dimension_count ", hp.rope_dim,
                          " must be even and at most the head size ", hp.head_dim));
  read_rope_scaling(f, a, hp);

  spec.load(f, hp);

  // The vocabulary size: the metadata key when present, else the token list.
  hp.n_vocab = hparam(f, a + ".vocab_size", 0, 0, HParamLimits::kVocab);
  if (hp.n_vocab == 0) {
    if (const GgufValue* toks = f.find_array("tokenizer.ggml.tokens", GgufType::STRING)) {
      if (toks->count > static_cast<uint64_t>(HParamLimits::kVocab))
        throw FormatError(cat(f.path(), ": tokenizer.ggml.tokens has ", toks->count, " entries, more than ",
                              HParamLimits::kVocab));
      hp.n_vocab = static_cast<int>(toks->count);
    }
  }
  check_positive(f, "vocab_size", hp.n_vocab);
  return hp;
}

}  // namespace tova
