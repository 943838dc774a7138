"""A plain numpy forward pass of the llama architecture family, read through the `gguf` package.

Written from the published architecture (RMSNorm, rotary position embedding, grouped-query
attention, SwiGLU), not from tova's code, so tests can hold tova's engine against it.

Supported architectures (`general.architecture`):
- `llama`: RoPE in the "normal" style, rotating the pairs (2i, 2i+1). GGUF files store llama's
  q/k projection rows permuted (the HF -> GGUF converter does it) exactly so that this style is
  right; applying the NeoX style to a GGUF llama would be wrong.
- `qwen2`: RoPE in the NeoX style, rotating the pairs (i, i + n_rot/2), and biases on q, k, v.

Weights are dequantized once with `gguf.quants.dequantize` and kept in the compute dtype
(float32 by default, float64 for a tighter oracle). Every matrix `W` is numpy-shaped (out, in), so
a projection is `x @ W.T`.

Attention hook (used by the KV-policy reference): `forward(..., hook=obj)` calls, for each layer and
each query row in order,
    mask = hook.select(layer, q_pos, key_pos)     # bool (n_keys,) or None: restrict the keys
    hook.observe(layer, q_pos, key_pos, probs)    # probs: (n_head, n_keys) softmax of that row
where `key_pos` are the absolute positions of the cached keys visible to the row (causal: pos <=
q_pos) and `probs[:, j]` is the probability each query head gave to `key_pos[j]` (0 for keys the
mask removed). `observe` may evict entries from the cache (`cache.evict(layer, positions)`); the
next row then sees the cache without them, which is exactly the per-row semantics of the spec.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

import gguf
from gguf.quants import dequantize

# Architectures this reference implements, with what differs between them.
_ARCHS = {
    "llama": {"rope_neox": False},
    "qwen2": {"rope_neox": True},
}


@dataclass(frozen=True)
class Hparams:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_rot: int
    rope_base: float
    rope_neox: bool
    rms_eps: float
    n_ctx_train: int


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata key {key!r} missing")
        return default
    return f.contents()


def read_hparams(reader: gguf.GGUFReader) -> Hparams:
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHS:
        raise ValueError(f"llama_ref supports {sorted(_ARCHS)}, the file is {arch!r}")
    p = arch + "."
    n_embd = int(_field(reader, p + "embedding_length"))
    n_head = int(_field(reader, p + "attention.head_count"))
    head_dim = int(_field(reader, p + "attention.key_length", n_embd // n_head))
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    n_vocab = int(emb.shape[1])  # GGUF ne order: [n_embd, n_vocab]
    return Hparams(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=int(_field(reader, p + "block_count")),
        n_head=n_head,
        n_head_kv=int(_field(reader, p + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(_field(reader, p + "feed_forward_length")),
        n_rot=int(_field(reader, p + "rope.dimension_count", head_dim)),
        rope_base=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rope_neox=_ARCHS[arch]["rope_neox"],
        rms_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        n_ctx_train=int(_field(reader, p + "context_length", 0) or 0),
    )


class KVCache:
    """Per-layer keys (after RoPE), values and absolute positions; entries can be evicted.

    k[layer]: (n, n_head_kv, head_dim), v[layer]: same, pos[layer]: (n,) int64. Order is insertion
    order, which never matters: masks are built from `pos`.
    """

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, dtype=np.float32):
        self.k = [np.zeros((0, n_head_kv, head_dim), dtype) for _ in range(n_layer)]
        self.v = [np.zeros((0, n_head_kv, head_dim), dtype) for _ in range(n_layer)]
        self.pos = [np.zeros((0,), np.int64) for _ in range(n_layer)]

    def append(self, layer: int, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> None:
        if np.isin(pos, self.pos[layer]).any():
            raise ValueError(f"layer {layer}: positions {pos} already cached")
        self.k[layer] = np.concatenate([self.k[layer], k])
        self.v[layer] = np.concatenate([self.v[layer], v])
        self.pos[layer] = np.concatenate([self.pos[layer], pos.astype(np.int64)])

    def evict(self, layer: int, positions) -> None:
        positions = np.asarray(positions, np.int64)
        missing = positions[~np.isin(positions, self.pos[layer])]
        if missing.size:
            raise ValueError(f"layer {layer}: cannot evict uncached positions {missing.tolist()}")
        keep = ~np.isin(self.pos[layer], positions)
        self.k[layer] = self.k[layer][keep]
        self.v[layer] = self.v[layer][keep]
        self.pos[layer] = self.pos[layer][keep]

    def positions(self, layer: int) -> list[int]:
        return sorted(int(p) for p in self.pos[layer])

    def n_tokens(self) -> int:
        """How many positions have been fed (the next position to use when nothing was evicted)."""
        return int(max((p.max() + 1 for p in self.pos if p.size), default=0))


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + x.dtype.type(eps)) * w


def _softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


class LlamaRef:
    """Reference forward pass. `path_or_reader`: a GGUF path or an open `gguf.GGUFReader`."""

    def __init__(self, path_or_reader, dtype=np.float32):
        reader = path_or_reader
        if not isinstance(reader, gguf.GGUFReader):
            reader = gguf.GGUFReader(os.fspath(path_or_reader))
        self.dtype = np.dtype(dtype)
        self.hp = read_hparams(reader)
        self.types = {t.name: t.tensor_type.name for t in reader.tensors}
        tensors = {t.name: t for t in reader.tensors}

        def get(name: str, shape: tuple[int, ...] | None = None, required: bool = True):
            t = tensors.get(name)
            if t is None:
                if required:
                    raise KeyError(f"tensor {name!r} missing")
                return None
            w = np.asarray(dequantize(t.data, t.tensor_type)).reshape(
                tuple(int(n) for n in reversed(t.shape)))
            if shape is not None and w.shape != shape:
                raise ValueError(f"tensor {name!r}: expected numpy shape {shape}, found {w.shape}")
            return w.astype(self.dtype)

        hp = self.hp
        q_dim, kv_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        self.tok_embd = get("token_embd.weight", (hp.n_vocab, hp.n_embd))
        self.output_norm = get("output_norm.weight", (hp.n_embd,))
        out = get("output.weight", (hp.n_vocab, hp.n_embd), required=False)
        self.tied_output = out is None
        self.output = self.tok_embd if out is None else out
        self.rope_freqs = get("rope_freqs.weight", (hp.n_rot // 2,), required=False)
        self.layers = []
        for i in range(hp.n_layer):
            b = f"blk.{i}."
            self.layers.append({
                "attn_norm": get(b + "attn_norm.weight", (hp.n_embd,)),
                "wq": get(b + "attn_q.weight", (q_dim, hp.n_embd)),
                "wk": get(b + "attn_k.weight", (kv_dim, hp.n_embd)),
                "wv": get(b + "attn_v.weight", (kv_dim, hp.n_embd)),
                "bq": get(b + "attn_q.bias", (q_dim,), required=False),
                "bk": get(b + "attn_k.bias", (kv_dim,), required=False),
                "bv": get(b + "attn_v.bias", (kv_dim,), required=False),
                "wo": get(b + "attn_output.weight", (hp.n_embd, q_dim)),
                "ffn_norm": get(b + "ffn_norm.weight", (hp.n_embd,)),
                "w_gate": get(b + "ffn_gate.weight", (hp.n_ff, hp.n_embd)),
                "w_up": get(b + "ffn_up.weight", (hp.n_ff, hp.n_embd)),
                "w_down": get(b + "ffn_down.weight", (hp.n_embd, hp.n_ff)),
            })
        # Inverse frequencies theta_i = base^(-2i / n_rot), in float64 so that the cos/sin tables
        # carry no error of their own beyond the final cast to the compute dtype.
        inv = hp.rope_base ** (-np.arange(0, hp.n_rot, 2, dtype=np.float64) / hp.n_rot)
        if self.rope_freqs is not None:
            inv = inv / self.rope_freqs.astype(np.float64)
        self._inv_freq = inv

    def new_cache(self) -> KVCache:
        return KVCache(self.hp.n_layer, self.hp.n_head_kv, self.hp.head_dim, self.dtype)

    # ---- pieces -------------------------------------------------------------------------------
    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x: (n, heads, head_dim), pos: (n,) absolute positions. Rotates the first n_rot dims."""
        hp = self.hp
        ang = pos.astype(np.float64)[:, None] * self._inv_freq[None, :]  # (n, n_rot/2)
        cos = np.cos(ang).astype(x.dtype)[:, None, :]
        sin = np.sin(ang).astype(x.dtype)[:, None, :]
        out = x.copy()
        r = x[..., :hp.n_rot]
        if hp.rope_neox:
            a, b = r[..., : hp.n_rot // 2], r[..., hp.n_rot // 2:]
            out[..., : hp.n_rot // 2] = a * cos - b * sin
            out[..., hp.n_rot // 2: hp.n_rot] = a * sin + b * cos
        else:
            a, b = r[..., 0::2], r[..., 1::2]
            out[..., 0: hp.n_rot: 2] = a * cos - b * sin
            out[..., 1: hp.n_rot: 2] = a * sin + b * cos
        return out

    def _attention(self, layer: int, q: np.ndarray, q_pos: np.ndarray, cache: KVCache, hook):
        """q: (n, n_head, head_dim) after RoPE. Returns (n, n_head * head_dim)."""
        hp = self.hp
        g = hp.n_head // hp.n_head_kv
        scale = self.dtype.type(1.0 / np.sqrt(hp.head_dim))
        n = q.shape[0]
        if hook is None:
            k = np.repeat(cache.k[layer], g, axis=1)  # (m, n_head, d): query head h reads kv head h // g
            v = np.repeat(cache.v[layer], g, axis=1)
            s = np.einsum("nhd,mhd->hnm", q, k) * scale
            visible = cache.pos[layer][None, :] <= q_pos[:, None]  # (n, m), causal by position
            s = np.where(visible[None], s, -np.inf)
            p = _softmax(s)
            o = np.einsum("hnm,mhd->nhd", p, v)
            return o.reshape(n, -1)
        out = np.empty((n, hp.n_head, hp.head_dim), self.dtype)
        for i in range(n):  # row by row: the hook may evict between rows
            kp = cache.pos[layer]
            vis = kp <= q_pos[i]
            key_pos = kp[vis]
            k = np.repeat(cache.k[layer][vis], g, axis=1)
            v = np.repeat(cache.v[layer][vis], g, axis=1)
            s = np.einsum("hd,mhd->hm", q[i], k) * scale
            mask = hook.select(layer, int(q_pos[i]), key_pos)
            if mask is not None:
                s = np.where(np.asarray(mask, bool)[None, :], s, -np.inf)
            p = _softmax(s)  # (n_head, m)
            out[i] = np.einsum("hm,mhd->hd", p, v)
            hook.observe(layer, int(q_pos[i]), key_pos, p)
        return out.reshape(n, -1)

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, tokens, start_pos: int = 0, cache: KVCache | None = None, hook=None,
                all_logits: bool = True) -> np.ndarray:
        """Feed `tokens` at positions start_pos, start_pos+1, ...; returns logits (n_tokens, vocab)
        (only the last row, shape (1, vocab), when all_logits is False). `cache` carries state
        between calls; None means a fresh one (then start_pos is normally 0)."""
        hp = self.hp
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        if tokens.size == 0:
            raise ValueError("no tokens")
        if tokens.min() < 0 or tokens.max() >= hp.n_vocab:
            raise ValueError(f"token id out of range [0, {hp.n_vocab})")
        if cache is None:
            cache = self.new_cache()
        n = tokens.size
        pos = np.arange(start_pos, start_pos + n, dtype=np.int64)
        x = self.tok_embd[tokens]  # (n, n_embd)
        for li, L in enumerate(self.layers):
            h = _rms_norm(x, L["attn_norm"], hp.rms_eps)
            q, k, v = h @ L["wq"].T, h @ L["wk"].T, h @ L["wv"].T
            if L["bq"] is not None:
                q = q + L["bq"]
            if L["bk"] is not None:
                k = k + L["bk"]
            if L["bv"] is not None:
                v = v + L["bv"]
            q = self.rope(q.reshape(n, hp.n_head, hp.head_dim), pos)
            k = self.rope(k.reshape(n, hp.n_head_kv, hp.head_dim), pos)
            cache.append(li, k, v.reshape(n, hp.n_head_kv, hp.head_dim), pos)
            x = x + self._attention(li, q, pos, cache, hook) @ L["wo"].T
            h = _rms_norm(x, L["ffn_norm"], hp.rms_eps)
            gate = h @ L["w_gate"].T
            with np.errstate(over="ignore"):  # exp(-gate) -> inf for very negative gate: silu -> 0
                silu = gate / (self.dtype.type(1) + np.exp(-gate))
            x = x + (silu * (h @ L["w_up"].T)) @ L["w_down"].T
        if not all_logits:
            x = x[-1:]
        return _rms_norm(x, self.output_norm, hp.rms_eps) @ self.output.T


@functools.lru_cache(maxsize=2)
def load_ref(path: str, dtype: str = "float32") -> LlamaRef:
    """Shared, dequantize-once instance per (path, dtype) for tests in several modules.
    Treat the returned object as read-only."""
    return LlamaRef(path, dtype=np.dtype(dtype))
