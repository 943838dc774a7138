// gemma3: embeddings scaled by sqrt(n_embd), per-head RMSNorm on q and k, norms before and after
// attention and the FFN, GELU-tanh gated FFN, NeoX RoPE, interleaved sliding-window layers.
// The GGUF converter already folds Gemma's (1 + weight) into the norm weights: not re-applied.
#include <cmath>

#include "arch.h"
#include "common.h"
#include "gguf.h"

namespace tova {

ArchSpec arch_gemma3() {
  return {"gemma3", [](const GgufFile& f, HParams& hp) {
            hp.rope_style = RopeStyle::NeoX;
            hp.qk_norm = true;
            hp.post_norms = true;
            hp.embed_scale = true;
            hp.ffn_act = FfnActivation::GeluTanh;
            // Not in the GGUF metadata; fixed by the architecture (Hugging Face Gemma3Config and
            // the Gemma 3 technical report): query_pre_attn_scalar = head_dim for the released
            // text models except the 27B (62 layers), whose configuration sets it to
            // n_embd / n_head (168, while its head_dim is 128). Local layers use RoPE base 10000
            // (unscaled: forward_cpu.cpp), and five sliding-window layers alternate with one
            // global layer (sliding_window_pattern = 6: layer l is global when (l + 1) % 6 == 0),
            // unless the file says otherwise (newer converters write both keys).
            const int qpas = hp.n_layer == 62 ? hp.n_embd / hp.n_head : hp.head_dim;
            hp.attn_scale = 1.0f / std::sqrt(static_cast<float>(qpas));
            hp.rope_base_swa = static_cast<float>(float_hparam(f, "gemma3.rope.freq_base_swa", 10000.0, 1.0, 1e12));
            const int pattern = hparam(f, "gemma3.attention.sliding_window_pattern", 6, 1, HParamLimits::kLayers);
            // 0 or absent: no sliding layers; else at most the trained context
            hp.n_swa = hparam(f, "gemma3.attention.sliding_window", 0, 0, hp.n_ctx_train);
            if (hp.n_swa > 0) {
              hp.is_swa.assign(static_cast<size_t>(hp.n_layer), true);
              for (int l = 0; l < hp.n_layer; ++l)
                if ((l + 1) % pattern == 0) hp.is_swa[static_cast<size_t>(l)] = false;
            }
          }};
}

}  // namespace tova
