// qwen2: llama's block with q/k/v projection biases and NeoX-style RoPE.
#include "arch.h"

namespace tova {

ArchSpec arch_qwen2() {
  return {"qwen2", [](const GgufFile&, HParams& hp) {
            hp.rope_style = RopeStyle::NeoX;
            hp.qkv_bias = true;
          }};
}

}  // namespace tova
