"""Independent numpy references that tova's engine is tested against.

Nothing here imports tova: the references read GGUF files through the `gguf` package only, so a
bug in tova's loader, quant kernels, forward pass or KV policies cannot hide in both sides.

- `llama_ref`: float32/float64 forward pass of llama, qwen2 and gemma3 GGUF models.
- `synthetic`: tiny random-weight llama/qwen2/gemma3 GGUF models (`gguf.GGUFWriter`).
- `kv_policy_ref`: the eviction policies of shared/spec/KV_POLICIES.md, token by token.
"""
