"""Independent numpy references that tova's engine is tested against.

Nothing here imports tova: the references read GGUF files through the `gguf` package only, so a
bug in tova's loader, quant kernels, forward pass or KV policies cannot hide in both sides.

- `llama_ref`: float32/float64 forward pass of the llama architecture family (llama, qwen2).
- `synthetic`: tiny random-weight GGUF models written with `gguf.GGUFWriter`.
- `kv_policy_ref`: the eviction policies of shared/spec/KV_POLICIES.md, token by token.
"""
