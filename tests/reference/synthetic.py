"""Tiny random-weight GGUF models, written with `gguf.GGUFWriter`, for fast engine tests.

`write_llama_gguf(path, ...)` writes a llama (or qwen2) model with the metadata a real file of that
architecture has and a small but valid byte-level BPE ("gpt2") tokenizer, so the engine loads it
exactly like a downloaded model. `write_gemma3_gguf(path, ...)` does the same for Gemma 3, with a
SentencePiece ("llama") tokenizer with byte fallback and a small sliding window.

Weights are random, scaled so activations stay O(1), attention is neither uniform nor one-hot,
and logits spread over a few units (no ties, no overflow); greedy output does not get stuck.

Quantization: the types gguf-py can encode (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) go
through `gguf.quants.quantize`. gguf-py (0.19) only *decodes* the K-quants, so Q2_K..Q6_K are
encoded here by a simple per-block min/max (or signed absmax) rounding: not llama.cpp's search for
the best scales, just a valid encoding. `gguf.quants.dequantize` stays the oracle for what the bytes
mean; `kquant_encode` also returns the values it meant to store so a test can check the two agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Union

import numpy as np

import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

QK_K = 256
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
GGUF_PY_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
SUPPORTED_TYPES = GGUF_PY_TYPES + KQUANTS

# ---------------------------------------------------------------------------------------------
# K-quant encoders. x: (n_blocks, 256) float32 -> (bytes (n_blocks, type_size) uint8,
# meant (n_blocks, 256) float32: the values the bytes decode to, computed the way the format
# defines them, in float32).
# ---------------------------------------------------------------------------------------------


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), 0).astype(np.float32)


def _minmax_scales(x: np.ndarray, qmax: int, smax: int):
    """Asymmetric sub-blocks: value = d*sc*q - dmin*m with q in [0, qmax], sc, m in [0, smax].
    x: (nb, n_sub, sub). Returns q (uint8), sc, m (uint8), d, dmin (float16, (nb,))."""
    mn = np.minimum(x.min(-1), 0.0)
    scale = (x.max(-1) - mn) / qmax
    d = _f16(scale.max(-1) / smax)
    dmin = _f16((-mn).max(-1) / smax)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, smax).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(-mn, dmin32)), 0, smax).astype(np.uint8)
    eff_s = (d32 * sc.astype(np.float32))[..., None]
    eff_m = (dmin32 * m.astype(np.float32))[..., None]
    q = np.clip(np.rint(_safe_div(x + eff_m, eff_s)), 0, qmax).astype(np.uint8)
    meant = eff_s * q.astype(np.float32) - eff_m
    return q, sc, m, d, dmin, meant


def _signed_scales(x: np.ndarray, qlo: int, qhi: int, slo: int, shi: int):
    """Symmetric sub-blocks: value = d*sc*q, q in [qlo, qhi], signed sc in [slo, shi]. The sign
    of each scale makes the largest-magnitude value land on qlo (the wider side)."""
    idx = np.abs(x).argmax(-1)
    v = np.take_along_axis(x, idx[..., None], -1)[..., 0]
    scale = v / qlo
    d = _f16(np.abs(scale).max(-1) / shi)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), slo, shi).astype(np.int8)
    eff = (d32 * sc.astype(np.float32))[..., None]
    q = np.clip(np.rint(_safe_div(x, eff)), qlo, qhi).astype(np.int8)
    return q, sc, d, eff * q.astype(np.float32)


def _pack_scale_min_6bit(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins -> 12 bytes (Q4_K/Q5_K layout):
    bytes 0-3: sc[0..3] | top 2 bits of sc[4..7] in bits 6-7; bytes 4-7: the same for m;
    bytes 8-11: low nibble of sc[4..7] | low nibble of m[4..7] << 4."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return out


def _pack_nibbles_k(q: np.ndarray) -> np.ndarray:
    """(nb, 8, 32) 4-bit values -> 128 bytes: byte g*32+l holds sub-blocks 2g (low), 2g+1 (high)."""
    lo, hi = q[:, 0::2, :] & 0xF, q[:, 1::2, :] & 0xF
    return (lo | (hi << 4)).reshape(q.shape[0], 128).astype(np.uint8)


def _pack_2bit_halves(q: np.ndarray) -> np.ndarray:
    """(nb, 256) 2-bit values -> 64 bytes: element h*128 + s*32 + l sits in byte h*32+l, bits 2s."""
    q = q.reshape(-1, 2, 4, 32).astype(np.uint8) & 3
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(-1, 64)


def _q2_k(x: np.ndarray):
    nb = x.shape[0]
    q, sc, m, d, dmin, meant = _minmax_scales(x.reshape(nb, 16, 16), 3, 15)
    blk = np.concatenate([
        sc | (m << 4),                              # scales[16]: scale low nibble, min high
        _pack_2bit_halves(q.reshape(nb, 256)),     # qs[64]
        d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
    ], axis=1)
    return blk, meant.reshape(nb, 256)


def _q3_k(x: np.ndarray):
    nb = x.shape[0]
    q, sc, d, meant = _signed_scales(x.reshape(nb, 16, 16), -4, 3, -32, 31)
    u = (q.reshape(nb, 256).astype(np.int16) + 4).astype(np.uint8)  # 0..7
    hbit = (u >> 2).reshape(nb, 8, 32)  # element b*32+l -> hmask byte l, bit b
    hmask = np.zeros((nb, 32), np.uint8)
    for b in range(8):
        hmask |= hbit[:, b, :] << b
    s = (sc.astype(np.int16) + 32).astype(np.uint8)  # 6-bit, offset 32
    scales = np.empty((nb, 12), np.uint8)
    scales[:, 0:8] = (s[:, 0:8] & 0xF) | ((s[:, 8:16] & 0xF) << 4)
    hs = (s >> 4) & 3  # scale j = k*4 + i -> byte 8+i, bits 2k
    scales[:, 8:12] = hs[:, 0:4] | (hs[:, 4:8] << 2) | (hs[:, 8:12] << 4) | (hs[:, 12:16] << 6)
    blk = np.concatenate([hmask, _pack_2bit_halves(u & 3), scales,
                          d.view(np.uint8).reshape(nb, 2)], axis=1)
    return blk, meant.reshape(nb, 256)


def _q4_k(x: np.ndarray):
    nb = x.shape[0]
    q, sc, m, d, dmin, meant = _minmax_scales(x.reshape(nb, 8, 32), 15, 63)
    blk = np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                          _pack_scale_min_6bit(sc, m), _pack_nibbles_k(q)], axis=1)
    return blk, meant.reshape(nb, 256)


def _q5_k(x: np.ndarray):
    nb = x.shape[0]
    q, sc, m, d, dmin, meant = _minmax_scales(x.reshape(nb, 8, 32), 31, 63)
    qh = np.zeros((nb, 32), np.uint8)  # element b*32+l: bit b of byte l is its 5th bit
    for b in range(8):
        qh |= ((q[:, b, :] >> 4) & 1) << b
    blk = np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                          _pack_scale_min_6bit(sc, m), qh, _pack_nibbles_k(q & 0xF)], axis=1)
    return blk, meant.reshape(nb, 256)


def _q6_k(x: np.ndarray):
    nb = x.shape[0]
    q, sc, d, meant = _signed_scales(x.reshape(nb, 16, 16), -32, 31, -128, 127)
    u = (q.reshape(nb, 2, 128).astype(np.int16) + 32).astype(np.uint8)  # 0..63, halves of 128
    lo = (u & 0xF).reshape(nb, 2, 2, 64)  # element h*128 + s*64 + l -> ql[h*64+l], nibble s
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(nb, 128)
    hi = (u >> 4).reshape(nb, 2, 4, 32)   # element h*128 + s*32 + l -> qh[h*32+l], bits 2s
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    qh = qh.reshape(nb, 64)
    blk = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(nb, 2)], axis=1)
    return blk, meant.reshape(nb, 256)


_KQ_ENCODERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def kquant_encode(w: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """w: (rows, cols), cols a multiple of 256. Returns (bytes (rows, cols/256*type_size) uint8,
    meant (rows, cols) float32)."""
    rows, cols = w.shape
    if cols % QK_K:
        raise ValueError(f"{type_name}: row length {cols} is not a multiple of {QK_K}")
    blk, meant = _KQ_ENCODERS[type_name](np.ascontiguousarray(w, np.float32).reshape(-1, QK_K))
    type_size = GGML_QUANT_SIZES[QT[type_name]][1]
    assert blk.shape[1] == type_size, (type_name, blk.shape, type_size)
    return blk.astype(np.uint8).reshape(rows, -1), meant.reshape(rows, cols)


def encode_tensor(w: np.ndarray, type_name: str) -> tuple[np.ndarray, QT | None]:
    """numpy (out, in) float32 -> (array to hand GGUFWriter.add_tensor, raw_dtype)."""
    if type_name not in SUPPORTED_TYPES:
        raise ValueError(f"weight type {type_name!r} not supported; choose from {SUPPORTED_TYPES}")
    qt = QT[type_name]
    block = GGML_QUANT_SIZES[qt][0]
    if w.shape[-1] % block:
        raise ValueError(f"{type_name} needs rows of a multiple of {block} values, "
                         f"got {w.shape[-1]}")
    if type_name == "F32":
        return np.ascontiguousarray(w, np.float32), None
    if type_name == "F16":
        return np.ascontiguousarray(w, np.float16), None
    if type_name in KQUANTS:
        return kquant_encode(w, type_name)[0], qt
    return gguf.quants.quantize(np.ascontiguousarray(w, np.float32), qt), qt


# ---------------------------------------------------------------------------------------------
# Tokenizer: 3 control tokens, the 256 byte-level symbols of GPT-2, then merges.
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

# Merges whose parts are all byte symbols or earlier results, most common English first.
_BASE_MERGES = (
    "Ġ t", "Ġ a", "i n", "h e", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t", "Ġ w", "Ġ o",
    "e n", "Ġ c", "i t", "i s", "a n", "o r", "e s", "Ġ b", "e d", "Ġ f", "in g", "Ġ p", "o u",
    "n d", "Ġa nd", "Ġ m", "a r", "Ġ d", "l l", "Ġt o", "Ġo f", "Ġ h", "Ġ i", "Ġ l", "Ġ n", "Ġ Ġ",
)


def bytes_to_unicode() -> list[tuple[int, str]]:
    """GPT-2's reversible byte -> printable-character map, in its standard order."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    out, n = [(b, chr(b)) for b in keep], 0
    for b in range(256):
        if b not in keep:
            out.append((b, chr(256 + n)))
            n += 1
    return out


def make_bpe_vocab(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token_types, merges) with exactly n_vocab tokens."""
    base = [s for _, s in bytes_to_unicode()]
    n_merge = n_vocab - len(SPECIAL_TOKENS) - len(base)
    if n_merge < 0:
        raise ValueError(f"n_vocab must be >= {len(SPECIAL_TOKENS) + len(base)}, got {n_vocab}")
    vocab = set(base)
    merges: list[str] = []

    def candidates():
        yield from _BASE_MERGES
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        for a in letters:  # "Ġ" + letter, then letter pairs, then pair + letter
            yield "Ġ " + a
        for a in letters:
            for b in letters:
                yield f"{a} {b}"
        for a in letters:
            for b in letters:
                for c in letters:
                    yield f"{a}{b} {c}"
        for a in letters:  # real-size vocabularies (150k): triple + letter
            for b in letters:
                for c in letters:
                    for d in letters:
                        yield f"{a}{b}{c} {d}"

    for m in candidates():
        if len(merges) == n_merge:
            break
        a, b = m.split(" ")
        if a in vocab and b in vocab and a + b not in vocab:
            merges.append(m)
            vocab.add(a + b)
    if len(merges) < n_merge:
        raise ValueError(f"n_vocab {n_vocab} too large for the synthetic tokenizer")
    tokens = list(SPECIAL_TOKENS) + base + [m.replace(" ", "") for m in merges]
    types = [3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS))  # 3 = CONTROL
    return tokens, types, merges


# ---------------------------------------------------------------------------------------------
# Model writer
# ---------------------------------------------------------------------------------------------

WeightType = Union[str, Mapping[str, str]]


@dataclass
class SyntheticModel:
    path: str
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    tokens: list[str] = field(repr=False)
    merges: list[str] = field(repr=False)
    tensor_types: dict[str, str] = field(repr=False)
    bos_id: int = 1
    eos_id: int = 2


def _type_for(weight_type: WeightType, name: str) -> str:
    """weight_type: one type name for all matrices, or a mapping looked up by full tensor name
    ("blk.0.ffn_down.weight"), then short name ("ffn_down", "token_embd", "output"), then
    "default" (F32 when absent)."""
    if isinstance(weight_type, str):
        return weight_type
    short = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    for key in (name, short, "default"):
        if key in weight_type:
            return weight_type[key]
    return "F32"


# Offsets of the float16 scales inside one block of each quantized type (cpp/src/quant_blocks.h).
_HALF_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
                "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(n_out: int, n_in: int, type_name: str, rng: np.random.Generator) -> tuple[np.ndarray, QT | None]:
    """A (n_out, n_in) matrix of random blocks of a type, written without float weights (fast
    for real-size shapes): random quants with small float16 scales. For speed checks only."""
    if type_name in ("F32", "F16"):
        w = (rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.02)
        return (w if type_name == "F32" else w.astype(np.float16)), None
    qt = QT[type_name]
    block, size = GGML_QUANT_SIZES[qt]
    if n_in % block:
        raise ValueError(f"{type_name} needs rows of a multiple of {block} values, got {n_in}")
    raw = rng.integers(0, 256, (n_out, n_in // block, size), dtype=np.uint8)
    for off in _HALF_FIELDS[type_name]:
        scales = rng.uniform(-2e-3, 2e-3, raw.shape[:2]).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(n_out, -1), qt


def _write_tensors(w: "gguf.GGUFWriter", weights: dict, weight_type: WeightType,
                   rng: np.random.Generator | None = None) -> dict:
    """Encode every tensor (1-D ones stay F32; a (n_out, n_in) tuple becomes random blocks),
    write the file, close it; returns name -> type."""
    tensor_types: dict[str, str] = {}
    for name, arr in weights.items():
        t = "F32" if getattr(arr, "ndim", 2) == 1 else _type_for(weight_type, name)
        try:
            data, raw = random_blocks(*arr, t, rng) if isinstance(arr, tuple) else encode_tensor(arr, t)
        except ValueError as e:
            raise ValueError(f"tensor {name} {arr.shape}: {e}") from None
        w.add_tensor(name, data, raw_dtype=raw)
        tensor_types[name] = t
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensor_types


def _random_init(rng: np.random.Generator):
    def mat(n_out: int, n_in: int, gain: float = 1.0) -> np.ndarray:
        # std 1/sqrt(n_in): a projection of an RMS-normalized vector gives O(1) entries
        return (rng.standard_normal((n_out, n_in)) * (gain / np.sqrt(n_in))).astype(np.float32)

    def norm_w(n: int, center: float = 1.0) -> np.ndarray:
        return (center * (1.0 + 0.1 * rng.standard_normal(n))).astype(np.float32)

    return mat, norm_w


def _add_extra_kv(w, extra_kv) -> None:
    """Metadata added (or overriding what the writer put there: gguf's writer keeps the last
    value of a key): str, float (float32), int (uint32), list of str, or (value, GGUFValueType);
    None removes the key (a file written without it)."""
    for key, value in (extra_kv or {}).items():  # e.g. RoPE scaling keys
        if value is None:
            for kv in w.kv_data:
                kv.pop(key, None)
        elif isinstance(value, tuple):
            w.add_key_value(key, value[0], value[1])
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, int(value))


def write_llama_gguf(path, *, n_vocab: int = 384, n_embd: int = 64, n_layer: int = 2,
                     n_head: int = 4, n_head_kv: int = 2, n_ff: int | None = None,
                     rope_base: float = 10000.0, n_rot: int | None = None,
                     context_length: int = 512, rms_eps: float = 1e-5,
                     tied_output: bool = False, weight_type: WeightType = "F32",
                     arch: str = "llama", tokenizer_pre: str | None = None,
                     extra_kv: Mapping[str, object] | None = None,
                     extra_tensors: Mapping[str, np.ndarray] | None = None,
                     seed: int = 0, fast_random: bool = False) -> SyntheticModel:
    """Write a random llama/qwen2 model to `path` (`extra_tensors`: e.g. `rope_freqs.weight`). Norm weights and biases are always F32 (as in
    llama.cpp's files); `weight_type` applies to the matrices (token_embd and output included).
    ``fast_random``: matrices are random blocks of their type (:func:`random_blocks`), never
    float weights: real-size shapes in seconds, for speed checks (the text is noise)."""
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must divide by n_head and n_head by n_head_kv")
    n_ff = 2 * n_embd if n_ff is None else n_ff
    head_dim = n_embd // n_head
    n_rot = head_dim if n_rot is None else n_rot
    pre = tokenizer_pre or ("qwen2" if arch == "qwen2" else "smollm")
    rng = np.random.default_rng(seed)
    tokens, token_types, merges = make_bpe_vocab(n_vocab)

    mat, norm_w = _random_init(rng)
    if fast_random:
        mat = lambda n_out, n_in, gain=1.0: (n_out, n_in)  # noqa: E731 - written as random blocks
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    # Embedding std 3/sqrt(n_embd): tied logits = normed h . E have std ~3, peaked but not one-hot.
    weights: dict[str, np.ndarray] = {
        "token_embd.weight": (n_vocab, n_embd) if fast_random else
        (rng.standard_normal((n_vocab, n_embd)) * (3 / np.sqrt(n_embd))).astype(np.float32),
    }
    for i in range(n_layer):
        b = f"blk.{i}."
        weights[b + "attn_norm.weight"] = norm_w(n_embd)
        weights[b + "attn_q.weight"] = mat(q_dim, n_embd, 1.5)  # q.k/sqrt(d) with std ~2
        weights[b + "attn_k.weight"] = mat(kv_dim, n_embd, 1.5)
        weights[b + "attn_v.weight"] = mat(kv_dim, n_embd)
        if arch == "qwen2":
            weights[b + "attn_q.bias"] = (0.2 * rng.standard_normal(q_dim)).astype(np.float32)
            weights[b + "attn_k.bias"] = (0.2 * rng.standard_normal(kv_dim)).astype(np.float32)
            weights[b + "attn_v.bias"] = (0.2 * rng.standard_normal(kv_dim)).astype(np.float32)
        # Gain 3 on the two projections back into the residual stream: the blocks then outweigh the
        # token embedding there, so a tied model's greedy output does not echo a fixed point.
        weights[b + "attn_output.weight"] = mat(n_embd, q_dim, 3.0)
        weights[b + "ffn_norm.weight"] = norm_w(n_embd)
        weights[b + "ffn_gate.weight"] = mat(n_ff, n_embd)
        weights[b + "ffn_up.weight"] = mat(n_ff, n_embd)
        weights[b + "ffn_down.weight"] = mat(n_embd, n_ff, 3.0)
    weights["output_norm.weight"] = norm_w(n_embd)
    if not tied_output:
        weights["output.weight"] = mat(n_vocab, n_embd, 3.0)
    weights.update(extra_tensors or {})

    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_name(f"synthetic-{arch}-{n_layer}x{n_embd}")
    w.add_block_count(n_layer)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(float(rope_base))
    w.add_layer_norm_rms_eps(float(rms_eps))
    w.add_rope_dimension_count(n_rot)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)
    _add_extra_kv(w, extra_kv)

    tensor_types = _write_tensors(w, weights, weight_type, rng)
    return SyntheticModel(path=os.fspath(path), arch=arch, n_vocab=n_vocab, n_embd=n_embd,
                          n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
                          tokens=tokens, merges=merges, tensor_types=tensor_types)


# ---------------------------------------------------------------------------------------------
# Gemma 3: SentencePiece ("llama") tokenizer, sliding-window layers, q/k norms, post norms.
# ---------------------------------------------------------------------------------------------

SPM_SPECIALS = (("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2),
                ("<start_of_turn>", 3), ("<end_of_turn>", 3))  # (piece, type): 2 UNKNOWN, 3 CONTROL
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
_SPM_CHARS = ("▁" + "etaoinshrdlcumwfgypbvkjxqz" + "ETAOINSHRDLCUMWFGYPBVKJXQZ"
              + "0123456789" + ".,!?'\"-:;()")
_SPM_PIECES = ("▁t", "he", "▁the", "in", "▁a", "er", "an", "on", "re", "▁s", "at", "en", "▁w",
               "▁o", "or", "es", "it", "is", "▁c", "▁b", "nd", "▁and", "ed", "▁f", "ing", "▁p",
               "ou", "▁m", "ar", "▁d", "ll", "▁to", "▁of", "▁h", "▁i", "▁l", "▁n", "▁▁")


def make_spm_vocab(n_vocab: int) -> tuple[list[str], list[int], list[float]]:
    """(tokens, token_types, scores): specials, the 256 byte-fallback pieces <0xXX> (type 6),
    single characters, then pieces that are each the concatenation of two earlier pieces (so the
    SentencePiece BPE merge walk can reach them), scored by rank: higher score merges first."""
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    head = len(SPM_SPECIALS) + len(bytes_) + len(_SPM_CHARS)
    n_piece = n_vocab - head
    if n_piece < 0:
        raise ValueError(f"n_vocab must be >= {head}, got {n_vocab}")
    have = set(_SPM_CHARS)
    pieces: list[str] = []

    def candidates():
        yield from _SPM_PIECES
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        for a in letters:
            yield "▁" + a
        for a in letters:
            for b in letters:
                yield a + b
        for a in letters:
            for b in letters:
                for c in letters:
                    yield a + b + c

    for p in candidates():
        if len(pieces) == n_piece:
            break
        if p not in have and any(p[:i] in have and p[i:] in have for i in range(1, len(p))):
            pieces.append(p)
            have.add(p)
    if len(pieces) < n_piece:
        raise ValueError(f"n_vocab {n_vocab} too large for the synthetic tokenizer")
    tokens = [t for t, _ in SPM_SPECIALS] + bytes_ + list(_SPM_CHARS) + pieces
    types = [ty for _, ty in SPM_SPECIALS] + [6] * 256 + [1] * (len(_SPM_CHARS) + len(pieces))
    scores = ([-1000.0] * len(SPM_SPECIALS) + [0.0] * 256
              + [-1000.0 - i for i in range(len(_SPM_CHARS))]   # chars never compete in merges
              + [-float(i + 1) for i in range(len(pieces))])
    return tokens, types, scores


def write_gemma3_gguf(path, *, n_vocab: int = 512, n_embd: int = 64, n_layer: int = 6,
                      n_head: int = 4, n_head_kv: int = 1, head_dim: int = 32,
                      n_ff: int | None = None, rope_base: float = 1e6, sliding_window: int = 8,
                      context_length: int = 512, rms_eps: float = 1e-6,
                      weight_type: WeightType = "F32", extra_kv: Mapping[str, object] | None = None,
                      seed: int = 0) -> SyntheticModel:
    """Write a random Gemma 3 model: tied output, layers il with (il + 1) % 6 != 0 use a sliding
    window of `sliding_window` keys (so the default 6 layers are 5 local + 1 global). Norm weights
    are stored as the converter stores them (Gemma's 1 + w already folded in)."""
    if n_head % n_head_kv:
        raise ValueError("n_head must divide by n_head_kv")
    n_ff = 2 * n_embd if n_ff is None else n_ff
    rng = np.random.default_rng(seed)
    mat, norm_w = _random_init(rng)
    tokens, token_types, scores = make_spm_vocab(n_vocab)
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    weights: dict[str, np.ndarray] = {
        # The forward pass multiplies by sqrt(n_embd): the residual starts at RMS ~1, small next
        # to the blocks' (post norms ~6), so the tied head does not just echo the input token;
        # output_norm ~3 then spreads the logits by a few units.
        "token_embd.weight": (rng.standard_normal((n_vocab, n_embd)) / np.sqrt(n_embd)
                              ).astype(np.float32),
    }
    for i in range(n_layer):
        b = f"blk.{i}."
        weights[b + "attn_norm.weight"] = norm_w(n_embd)
        weights[b + "attn_q.weight"] = mat(q_dim, n_embd)
        weights[b + "attn_k.weight"] = mat(kv_dim, n_embd)
        weights[b + "attn_v.weight"] = mat(kv_dim, n_embd)
        # q/k are RMS-normalized per head: their norm weights set the logit scale (q.k/sqrt(d)
        # with weights ~1.4 gives scores of std ~2)
        weights[b + "attn_q_norm.weight"] = norm_w(head_dim, 1.4)
        weights[b + "attn_k_norm.weight"] = norm_w(head_dim, 1.4)
        weights[b + "attn_output.weight"] = mat(n_embd, q_dim)
        # post norms fix each block's contribution to the residual at RMS ~6
        weights[b + "post_attention_norm.weight"] = norm_w(n_embd, 6.0)
        weights[b + "ffn_norm.weight"] = norm_w(n_embd)
        weights[b + "ffn_gate.weight"] = mat(n_ff, n_embd)
        weights[b + "ffn_up.weight"] = mat(n_ff, n_embd)
        weights[b + "ffn_down.weight"] = mat(n_embd, n_ff)
        weights[b + "post_ffw_norm.weight"] = norm_w(n_embd, 6.0)
    weights["output_norm.weight"] = norm_w(n_embd, 3.0)

    w = gguf.GGUFWriter(os.fspath(path), "gemma3")
    w.add_name(f"synthetic-gemma3-{n_layer}x{n_embd}")
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(float(rms_eps))
    w.add_rope_freq_base(float(rope_base))
    w.add_sliding_window(sliding_window)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(token_types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(GEMMA_TEMPLATE)
    tensor_types = _add_extra_kv(w, extra_kv)
    _write_tensors(w, weights, weight_type)
    return SyntheticModel(path=os.fspath(path), arch="gemma3", n_vocab=n_vocab, n_embd=n_embd,
                          n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
                          tokens=tokens, merges=[], tensor_types=tensor_types, bos_id=2, eos_id=1)
