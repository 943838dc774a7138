"""tova against independent numpy references (tests/reference/) on tiny random-weight models
written with gguf.GGUFWriter: the forward pass (llama, qwen2, gemma3; GQA; quantized, tied and
untied weights) and the KV policies of shared/spec/KV_POLICIES.md step by step.

Tolerances: with `float_activations=True` and an f32 cache tova computes in float32 what the
reference computes in float32 too; the two differ only by summation order: max |Δlogit| 2e-3
(logits here are O(1-10)). In the default mode tova quantizes activations to 8 bits before each
matrix product, as llama.cpp does: that rounding (relative ~1/254 per activation) accumulates to
about 1e-2 relative on these logits; we hold 5% of the logit range.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tova
from reference.kv_policy_ref import run_policy
from reference.llama_ref import LlamaRef
from reference.synthetic import write_gemma3_gguf, write_llama_gguf

EXACT_TOL = 2e-3


def _engine(path, **kw):
    kw.setdefault("n_threads", 2)
    kw.setdefault("kv_type", "f32")
    return tova.Engine(path, **kw)


def _tokens(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=n).tolist()


LLAMA_CASES = {
    "f32-gqa-untied": dict(weight_type="F32", n_head=4, n_head_kv=2, tied_output=False),
    "f32-mha-tied": dict(weight_type="F32", n_head=4, n_head_kv=4, tied_output=True),
    "q8_0-q4_0-mixed": dict(weight_type={"default": "Q8_0", "ffn_down": "Q4_0", "attn_v": "Q5_1",
                                         "output": "F16"}, n_head=4, n_head_kv=1),
    "q4_1-q5_0": dict(weight_type={"default": "Q4_1", "attn_q": "Q5_0"}, n_head=4, n_head_kv=2),
    "kquants": dict(weight_type={"default": "Q4_K", "ffn_down": "Q6_K", "attn_v": "Q5_K",
                                 "attn_k": "Q3_K", "attn_q": "Q2_K", "token_embd": "Q8_0"},
                    n_embd=256, n_ff=512, n_head=4, n_head_kv=2),
    "qwen2-biases-neox": dict(arch="qwen2", weight_type="F32", n_head=4, n_head_kv=2),
}


@pytest.fixture(scope="module", params=list(LLAMA_CASES))
def llama_model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / f"{request.param}.gguf"
    write_llama_gguf(path, seed=7, **LLAMA_CASES[request.param])
    return path, LlamaRef(str(path))


def test_forward_matches_reference(llama_model):
    path, ref = llama_model
    ids = _tokens(40, 384)  # write_llama_gguf's default vocabulary
    want = ref.forward(ids)
    with _engine(path, policy="full", n_ctx=64, float_activations=True, chunk=16) as e:
        prefill = e.eval(ids, all_logits=True)
        e.reset()
        decode = np.stack([e.eval([t]) for t in ids])
    np.testing.assert_allclose(prefill, want, atol=EXACT_TOL, rtol=0)
    np.testing.assert_allclose(decode, want, atol=EXACT_TOL, rtol=0)
    with _engine(path, policy="full", n_ctx=64) as e:  # 8-bit activations, f16 cache default
        q8 = e.eval(ids, all_logits=True)
    spread = float(want.max() - want.min())
    assert np.abs(q8 - want).max() < 0.05 * spread
    assert (q8.argmax(-1) == want.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("k_type, v_type, hadamard", [
    ("q8_0", "q8_0", True), ("q4_0", "q4_0", True), ("q4_1", "q4_1", True), ("q8_0", "q4_0", True),
    ("f16", "q4_1", True), ("q4_0", "f32", False), ("q4_1", "q8_0", False), ("q5_0", "q5_1", True),
    ("q5_1", "q5_0", False), ("q8_0", "q4_1", False), ("q8_0", "q3_0", True), ("f16", "q3_0", False)])
def test_quantized_kv_matches_reference(tmp_path, k_type, v_type, hadamard):
    """Keys and values stored in q8_0 / q5_x / q4_x (values also q3_0; each its own type), quantized keys and
    values rotated by the Walsh-Hadamard transform or not: tova's logits equal a reference whose
    cache holds what those blocks hold (gguf-py's quantizer), with quantized keys scored against the (rotated)
    query rounded to 8 bits, in prefill and token-by-token decoding."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=5, weight_type="F32", n_embd=128, n_head=4, n_head_kv=2)  # head_dim 32
    ref = LlamaRef(str(path))
    ids = _tokens(40, 384, seed=2)
    want = ref.forward(ids, cache=ref.new_cache(k_type, v_type, hadamard))
    exact = ref.forward(ids)
    with _engine(path, policy="full", n_ctx=64, float_activations=True, chunk=16, kv_type_k=k_type,
                 kv_type_v=v_type, kv_hadamard=hadamard) as e:
        assert (e.kv_type_k, e.kv_type_v) == (k_type, v_type)
        prefill = e.eval(ids, all_logits=True)
        e.reset()
        decode = np.stack([e.eval([t]) for t in ids])
    # Rounding amplifies float differences: tova rotates by butterflies, the reference
    # by a matrix product, and a rare value lands on the other side of a rounding boundary.
    tol = (10 if hadamard else 5) * EXACT_TOL
    np.testing.assert_allclose(prefill, want, atol=tol, rtol=0)
    np.testing.assert_allclose(decode, want, atol=tol, rtol=0)
    if "q4" in k_type + v_type or "q3" in v_type:  # the reference's rounding is what tova does: not the exact cache
        assert np.abs(want - exact).max() > 10 * EXACT_TOL


def test_gemma3_sliding_and_global_layers(tmp_path):
    """5 sliding-window layers (window 8) and a global one: 30 tokens exercise the window."""
    path = tmp_path / "gemma3.gguf"
    write_gemma3_gguf(path, seed=3, sliding_window=8)
    ref = LlamaRef(str(path))
    ids = _tokens(30, 512, seed=1)
    want = ref.forward(ids)
    with _engine(path, policy="full", n_ctx=64, float_activations=True, chunk=7) as e:
        prefill = e.eval(ids, all_logits=True)
        e.reset()
        decode = np.stack([e.eval([t]) for t in ids])
        # sliding layers keep exactly their window (n_swa - 1 after each step: the query itself
        # makes n_swa visible keys), the global layer everything
        assert len(e.kv_positions(0)) == 7 and len(e.kv_positions(5)) == 30
    np.testing.assert_allclose(prefill, want, atol=EXACT_TOL, rtol=0)
    np.testing.assert_allclose(decode, want, atol=EXACT_TOL, rtol=0)


# ---- the policies, step by step, against the spec's numpy reference ---------------------------


@pytest.fixture(scope="module")
def policy_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("pol") / "pol.gguf"
    write_llama_gguf(path, seed=11, n_layer=3, n_head=4, n_head_kv=2, weight_type="F32")
    return path, LlamaRef(str(path))


def _kept_after(victims, t, n_layer):
    """Kept positions after step t, from the reference's victim list."""
    out = []
    for l in range(n_layer):
        gone = {p for (s, p) in victims[l] if s <= t}
        out.append(sorted(set(range(t + 1)) - gone))
    return out


@pytest.mark.parametrize("policy", ["window", "sink", "h2o", "tova", "tova_ema"])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_policy_matches_spec_reference(policy_model, policy, chunk):
    path, ref = policy_model
    ids = _tokens(90, 384, seed=5)
    C = 12
    want = run_policy(ref, ids, kv_size=C, policy=policy)
    n_layer = 3
    with _engine(path, policy=policy, kv_size=C, chunk=chunk) as e:
        got_logits = []
        for s in range(0, len(ids), chunk):
            part = ids[s:s + chunk]
            got_logits.append(e.eval(part, all_logits=True))
            t = s + len(part) - 1
            got = [e.kv_positions(l).tolist() for l in range(n_layer)]
            assert got == _kept_after(want["victims"], t, n_layer), f"after step {t}"
    np.testing.assert_allclose(np.concatenate(got_logits), want["logits"], atol=EXACT_TOL, rtol=0)


@pytest.mark.parametrize("policy", ["window", "sink", "h2o", "tova", "tova_ema"])
@pytest.mark.parametrize("chunk", [5, 16])
@pytest.mark.parametrize("positions", ["original", "cache_index"])
def test_chunked_prefill_matches_spec_reference(policy_model, policy, chunk, positions):
    """prefill='chunked' (spec section 5): a chunk attends over the kept slots plus its causal
    prefix, then the policy evicts down to C on the chunk's last row; tova_ema scores each of the
    chunk's tokens by that row (before, all but the last started at 0.05 of it and were evicted
    first); with positions 'cache_index' each row ranks the keys it sees (before, such an engine
    read its prompt exactly while it said 'chunked'). The kept sets after every chunk and the
    logits equal the reference's."""
    path, ref = policy_model
    ids = _tokens(61, 384, seed=7)
    C = 12
    want = run_policy(ref, ids, kv_size=C, policy=policy, chunk=chunk, prefill="chunked", positions=positions)
    exact = run_policy(ref, ids, kv_size=C, policy=policy, chunk=chunk, positions=positions)
    assert np.abs(want["logits"] - exact["logits"]).max() > 10 * EXACT_TOL  # the modes differ here
    with _engine(path, policy=policy, kv_size=C, chunk=chunk, prefill="chunked", positions=positions) as e:
        got_logits = []
        for s in range(0, len(ids), chunk):
            part = ids[s:s + chunk]
            got_logits.append(e.eval(part, all_logits=True))
            t = s + len(part) - 1
            got = [e.kv_positions(l).tolist() for l in range(3)]
            assert got == _kept_after(want["victims"], t, 3), f"after step {t}"
    np.testing.assert_allclose(np.concatenate(got_logits), want["logits"], atol=EXACT_TOL, rtol=0)


@pytest.mark.parametrize("policy", ["tova", "h2o", "tova_ema"])
def test_exact_ties_go_by_position(tmp_path, policy):
    """Equal keys score equally wherever their slots fall in the kernels' blocks, so ties go by
    position (spec section 4: the smallest position among equal scores is evicted). A model whose
    RoPE does not turn (frequency factors 1e30) fed one token over and over has every key of its
    first layer equal (the next layers' differ in their last bits: near ties, float noise);
    before, the key in a block's remainder scored one ulp apart and tova kept the oldest tokens."""
    path = tmp_path / "norope.gguf"
    write_llama_gguf(path, seed=11, n_head=4, n_head_kv=2, weight_type="F32",
                     extra_tensors={"rope_freqs.weight": np.full(8, 1e30, np.float32)})
    ids, C = [17] * 21, 8
    # The reference reads one token per forward pass, as the engine does here: a matrix product of
    # several equal rows (BLAS) need not give equal rows (OpenBLAS's AVX2 kernels round the rows
    # of a tile's remainder differently), and the keys would then not tie in the reference.
    want = run_policy(LlamaRef(str(path)), ids, kv_size=C, policy=policy, chunk=1)["kept"]
    for kv_type in ("f32", "f16"):
        with _engine(path, policy=policy, kv_size=C, kv_type=kv_type, float_activations=True) as e:
            for t in ids:
                e.eval([t])
            assert e.kv_positions(0).tolist() == list(want[0]), kv_type
    if policy == "tova":
        assert list(want[0]) == list(range(21 - C, 21))  # the newest: the oldest lost every tie


@pytest.mark.parametrize("policy", ["sink", "tova"])
def test_cache_index_positions_match_reference(policy_model, policy):
    """positions='cache_index': every row rotates the kept keys by their rank and the query by the
    largest (spec section 6); the same kept sets and logits as the reference's row-by-row walk,
    through prefill chunks and single-token decode."""
    path, ref = policy_model
    ids = _tokens(50, 384, seed=13)
    C = 12
    want = run_policy(ref, ids, kv_size=C, policy=policy, positions="cache_index")
    plain = run_policy(ref, ids, kv_size=C, policy=policy)
    assert np.abs(plain["logits"][C + 1:] - want["logits"][C + 1:]).max() > 0.05  # it matters
    with _engine(path, policy=policy, kv_size=C, chunk=7, positions="cache_index") as e:
        got = [e.eval(ids[:35], all_logits=True)]
        got += [e.eval([t], all_logits=True) for t in ids[35:]]
        assert [e.kv_positions(l).tolist() for l in range(3)] == _kept_after(want["victims"], 49, 3)
    np.testing.assert_allclose(np.concatenate(got), want["logits"], atol=EXACT_TOL, rtol=0)


def test_decode_after_prefill_matches_reference(policy_model):
    """A prompt longer than kv_size read in chunks of 7, then single-token decode: the kept sets
    and logits follow the reference at every decode step."""
    path, ref = policy_model
    ids = _tokens(60, 384, seed=9)
    want = run_policy(ref, ids, kv_size=10, policy="tova")
    with _engine(path, policy="tova", kv_size=10, chunk=7) as e:
        e.eval(ids[:40])
        for t in range(40, 60):
            lg = e.eval([ids[t]])
            np.testing.assert_allclose(lg, want["logits"][t], atol=EXACT_TOL, rtol=0)
            got = [e.kv_positions(l).tolist() for l in range(3)]
            assert got == _kept_after(want["victims"], t, 3)


def test_linear_rope_scaling(tmp_path):
    """rope.scaling.type=linear, factor 4: positions are divided by the factor (the reference
    reads the same keys); the same weights without the keys give different logits."""
    scaled, plain = tmp_path / "linear.gguf", tmp_path / "plain.gguf"
    write_llama_gguf(scaled, seed=2, extra_kv={"llama.rope.scaling.type": "linear",
                                               "llama.rope.scaling.factor": 4.0})
    write_llama_gguf(plain, seed=2)
    ref = LlamaRef(str(scaled))
    assert ref.hp.rope_linear_factor == 4.0
    ids = _tokens(24, 384, seed=4)
    with _engine(scaled, policy="full", n_ctx=32, float_activations=True) as e:
        got = e.eval(ids, all_logits=True)
    with _engine(plain, policy="full", n_ctx=32, float_activations=True) as e:
        unscaled = e.eval(ids, all_logits=True)
    np.testing.assert_allclose(got, ref.forward(ids), atol=EXACT_TOL, rtol=0)
    assert np.abs(unscaled - got).max() > 0.1


def test_yarn_rope_scaling(tmp_path):
    """rope.scaling.type=yarn (as Qwen2.5 GGUFs carry it for long context), factor 8 over an
    original context of 64: the reference implements Hugging Face's YaRN definition (ramp over
    the pair index, cos/sin scaled by 0.1 ln 8 + 1); positions run past the original context."""
    scaled = tmp_path / "yarn.gguf"
    write_llama_gguf(scaled, seed=5, arch="qwen2", context_length=512,
                     extra_kv={"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 8.0,
                               "qwen2.rope.scaling.original_context_length": 64})
    ref = LlamaRef(str(scaled))
    assert ref.hp.rope_yarn == (8.0, 64, 32.0, 1.0)
    ids = _tokens(100, 384, seed=6)
    with _engine(scaled, policy="full", n_ctx=128, float_activations=True) as e:
        got = e.eval(ids, all_logits=True)
    np.testing.assert_allclose(got, ref.forward(ids), atol=EXACT_TOL, rtol=0)
    plain = tmp_path / "plain.gguf"
    write_llama_gguf(plain, seed=5, arch="qwen2", context_length=512)
    with _engine(plain, policy="full", n_ctx=128, float_activations=True) as e:
        assert np.abs(e.eval(ids, all_logits=True) - got).max() > 0.1


def test_rope_frequency_factors(tmp_path):
    """Llama 3.1-style `rope_freqs.weight`: each pair's frequency is divided by its factor."""
    factors = np.linspace(1.0, 8.0, 8).astype(np.float32)  # head_dim 16: 8 pairs
    path = tmp_path / "freqs.gguf"
    write_llama_gguf(path, seed=7, extra_tensors={"rope_freqs.weight": factors})
    ref = LlamaRef(str(path))
    assert ref.rope_freqs is not None
    ids = _tokens(40, 384, seed=8)
    with _engine(path, policy="full", n_ctx=64, float_activations=True) as e:
        got = e.eval(ids, all_logits=True)
    np.testing.assert_allclose(got, ref.forward(ids), atol=EXACT_TOL, rtol=0)
    bad = tmp_path / "bad_freqs.gguf"
    write_llama_gguf(bad, seed=7, extra_tensors={"rope_freqs.weight": np.zeros(8, np.float32)})
    with pytest.raises(tova.GGUFError, match="rope_freqs.weight.*must be positive"):
        tova.Engine(bad)


def test_llama_with_attention_biases(tmp_path):
    """A llama converted with attention_bias (q, k, v and output biases): used, as llama.cpp does
    (before, they were dropped: logits off by up to 12 of a spread of 21)."""
    rng = np.random.default_rng(5)
    q_dim, kv_dim, E = 4 * 16, 2 * 16, 64  # (write_llama_gguf's defaults: 4 heads, 2 KV heads)
    biases = {}
    for l in range(2):
        for name, n in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim), ("attn_output", E)):
            biases[f"blk.{l}.{name}.bias"] = rng.normal(0, 0.5, n).astype(np.float32)
    path = tmp_path / "bias.gguf"
    write_llama_gguf(path, seed=9, extra_tensors=biases)
    ref = LlamaRef(str(path))
    ids = _tokens(20, 384, seed=3)
    with _engine(path, policy="full", n_ctx=64, float_activations=True) as e:
        got = e.eval(ids, all_logits=True)
    np.testing.assert_allclose(got, ref.forward(ids), atol=EXACT_TOL, rtol=0)
    bad = tmp_path / "ffn_bias.gguf"
    write_llama_gguf(bad, seed=9, extra_tensors={"blk.0.ffn_down.bias": np.zeros(E, np.float32)})
    with pytest.raises(tova.GGUFError, match="blk.0.ffn_down.bias': feed-forward biases .* not supported"):
        tova.Engine(bad)


def test_gemma3_pattern_and_local_rope_base_from_the_file(tmp_path):
    """Gemma 3 files that state the sliding-window pattern and the local layers' RoPE base (newer
    converters): both are used (before, 6 and 10000 whatever the file said)."""
    path = tmp_path / "gemma3_keys.gguf"
    write_gemma3_gguf(path, seed=4, n_layer=4, sliding_window=6,
                      extra_kv={"gemma3.attention.sliding_window_pattern": 2,
                                "gemma3.rope.freq_base_swa": 5000.0})
    ref = LlamaRef(str(path))
    assert ref.hp.swa_layers == (True, False, True, False) and ref.hp.rope_base_swa == 5000.0
    ids = _tokens(20, 512, seed=2)
    with _engine(path, policy="full", n_ctx=64, float_activations=True) as e:
        got = e.eval(ids, all_logits=True)
        assert len(e.kv_positions(0)) == 5 and len(e.kv_positions(1)) == 20
    np.testing.assert_allclose(got, ref.forward(ids), atol=EXACT_TOL, rtol=0)


def test_files_tova_does_not_run_say_why(tmp_path):
    """A split GGUF part, a mixture-of-experts llama and fused q/k/v: refused naming the reason,
    not as a missing tensor."""
    split = tmp_path / "m-00001-of-00002.gguf"
    write_llama_gguf(split, seed=1, extra_kv={"split.no": 0, "split.count": 2, "split.tensors.count": 10})
    with pytest.raises(tova.GGUFError, match=r"part 1 of 2 of a split GGUF model.*llama-gguf-split --merge"):
        tova.Engine(split)
    moe = tmp_path / "moe.gguf"
    write_llama_gguf(moe, seed=1, extra_kv={"llama.expert_count": 8, "llama.expert_used_count": 2})
    with pytest.raises(tova.GGUFError, match=r"mixture-of-experts model \(llama.expert_count = 8\)"):
        tova.Engine(moe)
    fused = tmp_path / "fused.gguf"
    write_llama_gguf(fused, seed=1, extra_tensors={"blk.0.attn_qkv.weight": np.zeros((128, 64), np.float32)})
    data = bytearray(fused.read_bytes())
    i = data.find(b"blk.0.attn_q.weight")  # (renamed away: q, k and v only in the fused matrix)
    data[i:i + 19] = b"blk.0.attn_X.weight"
    fused.write_bytes(bytes(data))
    with pytest.raises(tova.GGUFError, match=r"attn_qkv.weight' holds q, k and v in one matrix"):
        tova.Engine(fused)


def test_unknown_architecture_lists_supported(tmp_path):
    import gguf
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(tova.GGUFError, match=r"unsupported architecture 'mamba' \(supported: llama, qwen2, gemma3\)"):
        tova.Engine(path)


def test_missing_tensor_and_wrong_shape(tmp_path):
    import gguf
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=1)
    data = bytearray(path.read_bytes())
    i = data.find(b"blk.1.ffn_up.weight")
    data[i:i + 19] = b"blk.1.ffn_XX.weight"
    path.write_bytes(bytes(data))
    with pytest.raises(tova.GGUFError, match="required tensor 'blk.1.ffn_up.weight' is missing"):
        tova.Engine(path)


def test_random_block_models_load_and_run(tmp_path):
    """The fast writer behind bench/synthetic_shapes.py (random blocks, no float weights): every
    quant type it writes loads, and a mixed K-quant model (the Qwen2.5-1.5B shape's mix, small)
    gives finite logits; the file holds exactly the blocks of its shapes."""
    from reference.synthetic import random_blocks

    rng = np.random.default_rng(0)
    for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        raw, qt = random_blocks(3, 256, t, rng)
        assert raw.dtype == np.uint8 and qt is not None and raw.shape[0] == 3
    path = tmp_path / "shape.gguf"
    m = write_llama_gguf(path, arch="qwen2", n_vocab=600, n_embd=256, n_head=4, n_head_kv=2, n_ff=512,
                         n_layer=2, tied_output=True, fast_random=True,
                         weight_type={"default": "Q4_K", "token_embd": "Q6_K", "attn_v": "Q6_K",
                                      "ffn_down": "Q6_K"})
    assert m.tensor_types["blk.0.ffn_down.weight"] == "Q6_K" and m.tensor_types["blk.1.attn_q.weight"] == "Q4_K"
    with tova.Engine(path, n_threads=1, policy="tova", kv_size=16) as e:
        logits = e.eval(list(range(3, 40)), all_logits=True)
        assert logits.shape == (37, 600) and np.isfinite(logits).all()
        assert e.model_info["quant"] in ("Q4_K", "Q6_K")
