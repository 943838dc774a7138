"""A plain numpy forward pass of the llama architecture family, read through the `gguf` package.

Written from the published architecture (RMSNorm, rotary position embedding, grouped-query
attention, SwiGLU), not from tova's code, so tests can hold tova's engine against it.

Supported architectures (`general.architecture`):
- `llama`: RoPE in the "normal" style, rotating the pairs (2i, 2i+1). GGUF files store llama's
  q/k projection rows permuted (the HF -> GGUF converter does it) exactly so that this style is
  right; applying the NeoX style to a GGUF llama would be wrong.
- `qwen2`: RoPE in the NeoX style, rotating the pairs (i, i + n_rot/2), and biases on q, k, v.
- `gemma3`: NeoX RoPE; the embedding scaled by sqrt(n_embd); per-head RMSNorm of q and k; extra
  RMSNorms on the attention and FFN outputs before they join the residual; GELU (tanh form)
  instead of SiLU in the gated FFN; head_dim from `attention.key_length` (not n_embd/n_head);
  sliding-window attention (`attention.sliding_window` keys, the query's own included) on every
  layer except each 6th, with RoPE base 10000 there (the global layers use `rope.freq_base`).
  The converter already folded Gemma's `1 + weight` into the norm weights: used as stored.

Weights are dequantized once with `gguf.quants.dequantize` and kept in the compute dtype
(float32 by default, float64 for a tighter oracle). Every matrix `W` is numpy-shaped (out, in), so
a projection is `x @ W.T`.

Attention hook (used by the KV-policy reference): `forward(..., hook=obj)` calls, for each layer and
each query row in order,
    mask = hook.select(layer, q_pos, key_pos)     # bool (n_keys,) or None: restrict the keys
    hook.observe(layer, q_pos, key_pos, probs)    # probs: (n_head, n_keys) softmax of that row
where `key_pos` are the absolute positions of the cached keys visible to the row (causal: pos <=
q_pos; on sliding-window layers also q_pos - pos < n_swa), `mask` must keep at least one key, and
`probs[:, j]` is the probability each query head gave to `key_pos[j]` (0 for keys the
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
    "llama": {"rope_neox": False, "embd_scale": False, "act": "silu", "swa_period": 0},
    "qwen2": {"rope_neox": True, "embd_scale": False, "act": "silu", "swa_period": 0},
    # Gemma 3: layers il with (il + 1) % 6 != 0 use sliding-window attention (llama.cpp's and HF's
    # pattern); their RoPE base is 10000 (both unless the file's attention.sliding_window_pattern
    # and rope.freq_base_swa say otherwise).
    "gemma3": {"rope_neox": True, "embd_scale": True, "act": "gelu_tanh", "swa_period": 6,
               "rope_base_swa": 10000.0},
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
    act: str = "silu"
    embd_scale: float = 1.0          # multiplies the token embedding (gemma3: sqrt(n_embd))
    n_swa: int = 0                   # sliding window in keys (0: none)
    swa_layers: tuple = ()           # per layer: True where the sliding window applies
    rope_base_swa: float = 10000.0
    rope_linear_factor: float = 1.0  # rope.scaling.type linear: positions divided by it
    # rope.scaling.type yarn: (factor, original context, beta_fast, beta_slow), else None
    rope_yarn: tuple | None = None

    def is_swa(self, layer: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[layer]


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
    a = _ARCHS[arch]
    n_layer = int(_field(reader, p + "block_count"))
    n_swa, swa_layers = 0, ()
    if a["swa_period"]:
        n_swa = int(_field(reader, p + "attention.sliding_window"))
        period = int(_field(reader, p + "attention.sliding_window_pattern", a["swa_period"]))
        swa_layers = tuple((il + 1) % period != 0 for il in range(n_layer))
    factor, yarn = 1.0, None
    scaling = _field(reader, p + "rope.scaling.type", "none")
    if scaling == "linear":
        factor = float(_field(reader, p + "rope.scaling.factor", 1.0))
    elif scaling == "yarn":
        yarn = (float(_field(reader, p + "rope.scaling.factor")),
                int(_field(reader, p + "rope.scaling.original_context_length",
                           _field(reader, p + "context_length"))),
                float(_field(reader, p + "rope.scaling.yarn_beta_fast", 32.0)),
                float(_field(reader, p + "rope.scaling.yarn_beta_slow", 1.0)))
    return Hparams(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=int(_field(reader, p + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(_field(reader, p + "feed_forward_length")),
        n_rot=int(_field(reader, p + "rope.dimension_count", head_dim)),
        rope_base=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rope_neox=a["rope_neox"],
        rms_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        n_ctx_train=int(_field(reader, p + "context_length", 0) or 0),
        act=a["act"],
        embd_scale=float(np.sqrt(n_embd)) if a["embd_scale"] else 1.0,
        n_swa=n_swa,
        swa_layers=swa_layers,
        rope_base_swa=float(_field(reader, p + "rope.freq_base_swa", a.get("rope_base_swa", 10000.0))),
        rope_linear_factor=factor,
        rope_yarn=yarn,
    )


_KV_GGML = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
            "q4_1": gguf.GGMLQuantizationType.Q4_1, "q5_0": gguf.GGMLQuantizationType.Q5_0,
            "q5_1": gguf.GGMLQuantizationType.Q5_1}


_KV_QUANTIZED = set(_KV_GGML) | {"q3_0"}  # stored rotated with the Hadamard option


def q3_0_round(x: np.ndarray) -> np.ndarray:
    """tova's 3-bit value format, written from its definition (quant_blocks.h BlockQ3_0): per block
    of 32, d = m / -4 with m the value of largest magnitude (the first such), stored as float16;
    q = clip(floor(x / d + 4.5), 0, 7) with 1 / d in float32; read back as fp16(d) * (q - 4)."""
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(*x.shape[:-1], -1, 32)
    m = np.take_along_axis(xb, np.abs(xb).argmax(-1)[..., None], -1)
    d = (m / np.float32(-4.0)).astype(np.float32)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0).astype(np.float32)
    q = np.clip(np.floor(xb * inv + np.float32(4.5)), 0, 7)
    y = d.astype(np.float16).astype(np.float32) * (q - 4).astype(np.float32)
    return y.reshape(x.shape).astype(x.dtype)


def kv_round(x: np.ndarray, kv_type: str) -> np.ndarray:
    """``x`` (..., head_dim) stored in a KV element type and read back: f32 as is, f16 rounded,
    q8_0 / q5_0 / q5_1 / q4_0 / q4_1 quantized per block of 32 with gguf-py's quantizer and
    dequantized, q3_0 by ``q3_0_round``."""
    if kv_type == "f32":
        return x
    if kv_type == "f16":
        return x.astype(np.float16).astype(x.dtype)
    if kv_type == "q3_0":
        return q3_0_round(x)
    t = _KV_GGML[kv_type]
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    return np.asarray(dequantize(gguf.quants.quantize(flat, t), t)).reshape(x.shape).astype(x.dtype)


def hadamard_matrix(n: int) -> np.ndarray:
    """The orthonormal Walsh-Hadamard matrix of order n (a power of two), Sylvester's construction:
    symmetric, and its own inverse."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(n)).astype(np.float32)


_WITH_MIN = {"q4_1": 20, "q5_1": 24}  # types storing a block minimum: their block bytes


def block_mins(x: np.ndarray, kv_type: str) -> np.ndarray:
    """The per-block minimum ``m`` (float16) of ``x`` (..., head_dim) stored as q4_1 or q5_1
    (both blocks start with d, m as float16): (..., nb)."""
    flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    raw = np.asarray(gguf.quants.quantize(flat, _KV_GGML[kv_type]), np.uint8)
    blocks = raw.reshape(flat.shape[0], -1, _WITH_MIN[kv_type])
    m = np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16)[..., 0].astype(np.float32)
    return m.reshape(*x.shape[:-1], -1)


def q8_1_sum_error(q: np.ndarray) -> np.ndarray:
    """For a query quantized to q8_1 (as ggml scores q4_1 and q5_1 keys), per block of 32: the block's
    stored sum ``s = fp16(d * sum(qs))`` minus the sum of its dequantized values
    ``fp16(d) * sum(qs)``. Such a key's score is ``k_deq . q_deq + sum_b m_b * error_b``."""
    xb = q.reshape(*q.shape[:-1], -1, 32).astype(np.float32)
    d = np.abs(xb).max(-1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    qs = np.round(xb * inv[..., None]).sum(-1)
    return (d * qs).astype(np.float16).astype(np.float32) - d.astype(np.float16).astype(np.float32) * qs


class KVCache:
    """Per-layer keys (after RoPE), values and absolute positions; entries can be evicted.

    k[layer]: (n, n_head_kv, head_dim), v[layer]: same, pos[layer]: (n,) int64. Order is insertion
    order, which never matters: masks are built from `pos`. Keys and values are stored as their
    element types (``k_type``, ``v_type``: f32, f16, q8_0, q5_x, q4_x) would hold them. With
    ``hadamard`` (head_dim a power of two) quantized keys are kept rotated by the Walsh-Hadamard
    matrix H, as quantized: ``k`` then holds H k rounded, and a query meets them as H q; quantized
    values likewise (``v`` holds H v rounded; the weighted sum is rotated back by H, its own
    inverse).
    """

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, dtype=np.float32,
                 k_type: str = "f32", v_type: str = "f32", hadamard: bool = False):
        pow2 = head_dim & (head_dim - 1) == 0
        h = hadamard_matrix(head_dim).astype(dtype) if hadamard and pow2 else None
        self.h = h if k_type in _KV_QUANTIZED else None    # keys stored rotated
        self.hv = h if v_type in _KV_QUANTIZED else None   # values stored rotated
        self.k = [np.zeros((0, n_head_kv, head_dim), dtype) for _ in range(n_layer)]
        self.v = [np.zeros((0, n_head_kv, head_dim), dtype) for _ in range(n_layer)]
        self.pos = [np.zeros((0,), np.int64) for _ in range(n_layer)]
        self.k_type, self.v_type = k_type, v_type
        self.k_min = [np.zeros((0, n_head_kv, head_dim // 32), np.float32) for _ in range(n_layer)]

    def append(self, layer: int, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> None:
        if np.isin(pos, self.pos[layer]).any():
            raise ValueError(f"layer {layer}: positions {pos} already cached")
        if self.h is not None:
            k = k @ self.h  # H is symmetric: each row k becomes H k
        if self.hv is not None:
            v = v @ self.hv
        self.k[layer] = np.concatenate([self.k[layer], kv_round(k, self.k_type)])
        self.v[layer] = np.concatenate([self.v[layer], kv_round(v, self.v_type)])
        if self.k_type in _WITH_MIN:
            self.k_min[layer] = np.concatenate([self.k_min[layer], block_mins(k, self.k_type)])
        self.pos[layer] = np.concatenate([self.pos[layer], pos.astype(np.int64)])

    def evict(self, layer: int, positions) -> None:
        positions = np.asarray(positions, np.int64)
        missing = positions[~np.isin(positions, self.pos[layer])]
        if missing.size:
            raise ValueError(f"layer {layer}: cannot evict uncached positions {missing.tolist()}")
        keep = ~np.isin(self.pos[layer], positions)
        self.k[layer] = self.k[layer][keep]
        self.v[layer] = self.v[layer][keep]
        if self.k_type in _WITH_MIN:
            self.k_min[layer] = self.k_min[layer][keep]
        self.pos[layer] = self.pos[layer][keep]

    def positions(self, layer: int) -> list[int]:
        return sorted(int(p) for p in self.pos[layer])

    def n_tokens(self) -> int:
        """How many positions have been fed (the next position to use when nothing was evicted)."""
        return int(max((p.max() + 1 for p in self.pos if p.size), default=0))


def _yarn(inv_freq: np.ndarray, base: float, n_rot: int, factor: float, orig_ctx: int,
          beta_fast: float, beta_slow: float) -> tuple[np.ndarray, float]:
    """YaRN (Peng et al. 2023) as Hugging Face's `rope_scaling={"type": "yarn"}` defines it:
    a pair whose wavelength fits fewer than beta_slow times into the original context is
    interpolated (frequency / factor), one that fits more than beta_fast times is kept, a linear
    ramp over the pair index between the two (bounds floored / ceiled); cos and sin are scaled
    by 0.1 ln(factor) + 1. Returns (inverse frequencies, cos/sin scale)."""
    def pair_for(n_turns: float) -> float:  # the pair index whose wavelength fits n_turns times
        return n_rot * np.log(orig_ctx / (n_turns * 2 * np.pi)) / (2 * np.log(base))
    low = max(int(np.floor(pair_for(beta_fast))), 0)
    high = min(int(np.ceil(pair_for(beta_slow))), n_rot - 1)
    ramp = np.clip((np.arange(n_rot // 2) - low) / max(high - low, 0.001), 0.0, 1.0)
    keep = 1.0 - ramp  # 1: extrapolate (the trained frequency), 0: interpolate
    out = inv_freq / factor * (1.0 - keep) + inv_freq * keep
    return out, 0.1 * np.log(factor) + 1.0


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
                "bo": get(b + "attn_output.bias", (hp.n_embd,), required=False),
                "q_norm": get(b + "attn_q_norm.weight", (hp.head_dim,), required=False),
                "k_norm": get(b + "attn_k_norm.weight", (hp.head_dim,), required=False),
                "post_attn_norm": get(b + "post_attention_norm.weight", (hp.n_embd,),
                                      required=False),
                "ffn_norm": get(b + "ffn_norm.weight", (hp.n_embd,)),
                "post_ffn_norm": get(b + "post_ffw_norm.weight", (hp.n_embd,), required=False),
                "w_gate": get(b + "ffn_gate.weight", (hp.n_ff, hp.n_embd)),
                "w_up": get(b + "ffn_up.weight", (hp.n_ff, hp.n_embd)),
                "w_down": get(b + "ffn_down.weight", (hp.n_embd, hp.n_ff)),
            })
        # Inverse frequencies theta_i = base^(-2i / n_rot), in float64 so that the cos/sin tables
        # carry no error of their own beyond the final cast to the compute dtype. Sliding-window
        # layers have their own base and no linear scaling (as llama.cpp does for gemma3).
        def inv_freq(base: float, factor: float) -> np.ndarray:
            inv = base ** (-np.arange(0, hp.n_rot, 2, dtype=np.float64) / hp.n_rot) / factor
            if self.rope_freqs is not None:
                inv = inv / self.rope_freqs.astype(np.float64)
            return inv
        glob = inv_freq(hp.rope_base, hp.rope_linear_factor)
        glob_scale = 1.0
        if hp.rope_yarn is not None:
            glob, glob_scale = _yarn(glob, hp.rope_base, hp.n_rot, *hp.rope_yarn)
        swa = inv_freq(hp.rope_base_swa, 1.0)
        self._inv_freq = [swa if hp.is_swa(il) else glob for il in range(hp.n_layer)]
        self._rope_scale = [1.0 if hp.is_swa(il) else glob_scale for il in range(hp.n_layer)]

    def new_cache(self, k_type: str = "f32", v_type: str = "f32", hadamard: bool = False) -> KVCache:
        return KVCache(self.hp.n_layer, self.hp.n_head_kv, self.hp.head_dim, self.dtype, k_type, v_type,
                       hadamard)

    # ---- pieces -------------------------------------------------------------------------------
    def rope(self, x: np.ndarray, pos: np.ndarray, layer: int = 0) -> np.ndarray:
        """x: (n, heads, head_dim), pos: (n,) absolute positions. Rotates the first n_rot dims
        with `layer`'s frequencies (they differ only between sliding-window and global layers)."""
        hp = self.hp
        ang = pos.astype(np.float64)[:, None] * self._inv_freq[layer][None, :]  # (n, n_rot/2)
        cos = (np.cos(ang) * self._rope_scale[layer]).astype(x.dtype)[:, None, :]
        sin = (np.sin(ang) * self._rope_scale[layer]).astype(x.dtype)[:, None, :]
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

    def _visible(self, layer: int, q_pos, k_pos):
        """Causal by position; sliding-window layers also hide keys n_swa or more behind."""
        vis = k_pos <= q_pos
        if self.hp.is_swa(layer):
            vis = vis & (q_pos - k_pos < self.hp.n_swa)
        return vis

    def _attention(self, layer: int, q: np.ndarray, q_pos: np.ndarray, cache: KVCache, hook,
                   by_rank: bool = False):
        """q: (n, n_head, head_dim) after RoPE (before it when by_rank: then every row rotates
        its keys by rank and itself by the largest). Returns (n, n_head * head_dim)."""
        hp = self.hp
        g = hp.n_head // hp.n_head_kv
        scale = self.dtype.type(1.0 / np.sqrt(hp.head_dim))
        n = q.shape[0]
        sum_err = None
        if cache.k_type in _KV_GGML and not by_rank:
            # Quantized keys are multiplied by the query quantized to 8 bits per block of 32
            # (q8_0; q8_1 for q4_1 keys, the same values plus a float16 block sum), as ggml's CPU
            # attention does.
            if cache.h is not None:
                q = q @ cache.h
            if cache.k_type in _WITH_MIN:
                sum_err = q8_1_sum_error(q)  # (n, n_head, nb)
            q = kv_round(q, "q8_0")
        if hook is None:
            # (m, n_head, d): query head h reads kv head h // g
            k = np.repeat(cache.k[layer], g, axis=1)
            v = np.repeat(cache.v[layer], g, axis=1)
            s = np.einsum("nhd,mhd->hnm", q, k)
            if sum_err is not None:
                s = s + np.einsum("nhb,mhb->hnm", sum_err, np.repeat(cache.k_min[layer], g, axis=1))
            s = s * scale
            visible = self._visible(layer, q_pos[:, None], cache.pos[layer][None, :])  # (n, m)
            s = np.where(visible[None], s, -np.inf)
            p = _softmax(s)
            o = np.einsum("hnm,mhd->nhd", p, v)
            if cache.hv is not None:
                o = o @ cache.hv  # back from the stored rotation
            return o.reshape(n, -1)
        out = np.empty((n, hp.n_head, hp.head_dim), self.dtype)
        for i in range(n):  # row by row: the hook may evict between rows
            kp = cache.pos[layer]
            vis = self._visible(layer, q_pos[i], kp)
            key_pos = kp[vis]
            k = cache.k[layer][vis]
            qi = q[i]
            if by_rank and cache.h is not None:
                k = k @ cache.h  # back from the stored rotation before rotating by rank
            if by_rank:
                rank = np.empty(key_pos.size, np.int64)
                rank[np.argsort(key_pos, kind="stable")] = np.arange(key_pos.size)
                k = self.rope(k, rank, layer)
                qi = self.rope(qi[None], np.array([key_pos.size - 1]), layer)[0]
            k = np.repeat(k, g, axis=1)
            v = np.repeat(cache.v[layer][vis], g, axis=1)
            s = np.einsum("hd,mhd->hm", qi, k)
            if sum_err is not None:
                s = s + np.einsum("hb,mhb->hm", sum_err[i], np.repeat(cache.k_min[layer][vis], g, axis=1))
            s = s * scale
            mask = hook.select(layer, int(q_pos[i]), key_pos)
            if mask is not None:
                s = np.where(np.asarray(mask, bool)[None, :], s, -np.inf)
            p = _softmax(s)  # (n_head, m)
            out[i] = np.einsum("hm,mhd->hd", p, v)
            if cache.hv is not None:
                out[i] = out[i] @ cache.hv
            hook.observe(layer, int(q_pos[i]), key_pos, p)
        return out.reshape(n, -1)

    def _act(self, g: np.ndarray) -> np.ndarray:
        one = self.dtype.type(1)
        if self.hp.act == "gelu_tanh":
            c, k = self.dtype.type(np.sqrt(2.0 / np.pi)), self.dtype.type(0.044715)
            return self.dtype.type(0.5) * g * (one + np.tanh(c * (g + k * g ** 3)))
        with np.errstate(over="ignore"):  # exp(-g) -> inf for very negative g: silu -> 0
            return g / (one + np.exp(-g))

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, tokens, start_pos: int = 0, cache: KVCache | None = None, hook=None,
                all_logits: bool = True, positions: str = "original") -> np.ndarray:
        """Feed `tokens` at positions start_pos, start_pos+1, ...; returns logits (n_tokens, vocab)
        (only the last row, shape (1, vocab), when all_logits is False). `cache` carries state
        between calls; None means a fresh one (then start_pos is normally 0).

        positions="cache_index" (spec section 6, StreamingLLM): the cache keeps keys before RoPE,
        and each query row rotates the keys it sees by their rank among the kept positions,
        itself taking the largest rank (row by row; needs a `hook`)."""
        if positions not in ("original", "cache_index"):
            raise ValueError(f"positions must be 'original' or 'cache_index', got {positions!r}")
        if positions == "cache_index" and hook is None:
            raise ValueError("positions='cache_index' runs row by row: give a hook")
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
        if hp.embd_scale != 1.0:
            x = x * self.dtype.type(hp.embd_scale)
        for li, L in enumerate(self.layers):
            h = _rms_norm(x, L["attn_norm"], hp.rms_eps)
            q, k, v = h @ L["wq"].T, h @ L["wk"].T, h @ L["wv"].T
            if L["bq"] is not None:
                q = q + L["bq"]
            if L["bk"] is not None:
                k = k + L["bk"]
            if L["bv"] is not None:
                v = v + L["bv"]
            q = q.reshape(n, hp.n_head, hp.head_dim)
            k = k.reshape(n, hp.n_head_kv, hp.head_dim)
            if L["q_norm"] is not None:  # per-head RMSNorm before RoPE
                q = _rms_norm(q, L["q_norm"], hp.rms_eps)
            if L["k_norm"] is not None:
                k = _rms_norm(k, L["k_norm"], hp.rms_eps)
            if positions == "original":
                q, k = self.rope(q, pos, li), self.rope(k, pos, li)
            cache.append(li, k, v.reshape(n, hp.n_head_kv, hp.head_dim), pos)
            a = self._attention(li, q, pos, cache, hook, by_rank=positions == "cache_index") @ L["wo"].T
            if L["bo"] is not None:
                a = a + L["bo"]
            if L["post_attn_norm"] is not None:
                a = _rms_norm(a, L["post_attn_norm"], hp.rms_eps)
            x = x + a
            h = _rms_norm(x, L["ffn_norm"], hp.rms_eps)
            f = (self._act(h @ L["w_gate"].T) * (h @ L["w_up"].T)) @ L["w_down"].T
            if L["post_ffn_norm"] is not None:
                f = _rms_norm(f, L["post_ffn_norm"], hp.rms_eps)
            x = x + f
        if not all_logits:
            x = x[-1:]
        return _rms_norm(x, self.output_norm, hp.rms_eps) @ self.output.T


@functools.lru_cache(maxsize=2)
def load_ref(path: str, dtype: str = "float32") -> LlamaRef:
    """Shared, dequantize-once instance per (path, dtype) for tests in several modules.
    Treat the returned object as read-only."""
    return LlamaRef(path, dtype=np.dtype(dtype))
