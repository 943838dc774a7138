// llama: RMSNorm, RoPE (normal style: GGUF stores q/k permuted for it), GQA, SwiGLU. Every
// hyperparameter is a generic key, so the entry only names the architecture.
#include "arch.h"

namespace tova {

ArchSpec arch_llama() {
  return {"llama", [](const GgufFile&, HParams& hp) { hp.rope_style = RopeStyle::Normal; }};
}

}  // namespace tova
