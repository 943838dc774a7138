"""GGUF models with the real models' shapes and quant types, random weights (for speed checks
where the real files cannot travel: ``bench/cuda_check.sh`` on a GPU machine).

    python bench/synthetic_shapes.py --out build/shapes [--only smollm2,qwen15]

- ``smollm2-shape.gguf``: SmolLM2-135M (llama, 30 layers, 576 wide, 9 / 3 heads, 1536 FFN,
  49152 tokens, tied output), Q4_1 like the real file.
- ``qwen15-shape.gguf``: Qwen2.5-1.5B (qwen2, 28 layers, 1536 wide, 12 / 2 heads, 8960 FFN,
  151936 tokens, tied output, q/k/v biases), Q4_K_M's mix: Q4_K, with Q6_K for the embedding,
  attn_v and ffn_down.

The weights are random blocks (``reference.synthetic.random_blocks``): the bytes read per token
are the real model's, the text is noise.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference.synthetic import write_llama_gguf  # noqa: E402

SHAPES = {
    "smollm2": dict(arch="llama", n_vocab=49152, n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536,
                    tied_output=True, rope_base=100000.0, context_length=8192, weight_type="Q4_1"),
    "qwen15": dict(arch="qwen2", n_vocab=151936, n_embd=1536, n_layer=28, n_head=12, n_head_kv=2, n_ff=8960,
                   tied_output=True, rope_base=1000000.0, context_length=32768, rms_eps=1e-6,
                   weight_type={"default": "Q4_K", "token_embd": "Q6_K", "attn_v": "Q6_K", "ffn_down": "Q6_K"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/shapes")
    ap.add_argument("--only", default=",".join(SHAPES))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.only.split(","):
        t0 = time.time()
        path = out / f"{name}-shape.gguf"
        write_llama_gguf(path, fast_random=True, seed=1, **SHAPES[name])
        print(f"{path}: {path.stat().st_size / 2**20:.0f} MiB in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
