"""Gemma 3 270M and Qwen2.5-Coder 0.5B / 1.5B against llama.cpp (shared/reference, made with an
f32 KV cache and llama.cpp's 8-bit activations; tova runs the same way: f32 cache, default 8-bit
activations).

Tolerances, and why (shared/reference/README.md measures llama.cpp against itself; the same
constants as test_generate_reference.py for SmolLM2):
- tokenization must match exactly;
- after each prompt the top-1 token must match, and the reference's top-10 logits, taken relative
  to the top-1 logit (softmax ignores a common shift), must be within 0.75 of ours: llama.cpp
  differs from itself by 1.1-3.6 per logit between its own configurations; measured here the
  largest difference is 0.44 (Gemma 3), 0.27 (Qwen 0.5B), 0.27 (Qwen 1.5B);
- the full last-position distribution: KL(llama.cpp || tova) < 0.02 (llama.cpp's own
  configuration changes give 2.5e-3-1.2e-2 per position). Measured: Gemma 3 0.0105 and 0.0072,
  Qwen 0.5B 6e-4 and 8e-4, Qwen 1.5B 1.3e-3. Gemma's is the larger because both programs round
  its activations to 8 bits: against a float64 numpy forward pass (tests/reference/llama_ref.py)
  llama.cpp is at KL 0.0053 / 0.0046 and tova at 0.0045 / 0.0048, on opposite sides; tova with
  float_activations=True equals that float64 pass to KL 1e-12;
- greedy continuations (32 tokens) equal llama.cpp's, or first diverge at a step where
  llama.cpp's own top two logits are within 0.5 of each other (its self-noise; the README's rule).
  Measured divergences: Gemma 3 at gaps 0.015, 0.032, 0.023, 0.044 (four of six prompts; at the
  first, tova picks llama.cpp's third token, 0.21 below its top), Qwen 0.5B at 0.042 and 0.205,
  Qwen 1.5B at 0.084; all other continuations are equal in full.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import tova

pytestmark = pytest.mark.model

TOP10_TOL = 0.75
KL_TOL = 0.02
NEAR_TIE = 0.5

MODELS = ["gemma3", "qwen05", "qwen15"]


@pytest.fixture(scope="module", params=MODELS)
def family(request, reference_dir):
    """(name, engine, reference cases) for one model; llama.cpp's reference ran with a full f32
    cache: the same here."""
    name = request.param
    path = request.getfixturevalue(f"{name}_path")
    ref = json.loads((reference_dir / f"{name}_greedy.json").read_text("utf-8"))
    with tova.Engine(path, policy="full", n_ctx=256, kv_type="f32", n_threads=2) as e:
        yield name, e, ref


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def test_reference_is_for_this_file(family, reference_dir):
    """The reference was made from exactly this GGUF (sha256 in the greedy file and models.json)."""
    name, e, ref = family
    models = json.loads((reference_dir / "models.json").read_text("utf-8"))
    shas = {m["sha256"] for m in models.values()}
    assert ref["model_sha256"] in shas
    assert bool(e.model_info["add_bos"]) == ref["add_bos"]


def test_prompt_tokenization_matches(family):
    name, e, ref = family
    for case in ref["cases"]:
        assert e.tokenize(case["prompt"]) == case["prompt_ids"], case["prompt"]


def test_qwen15_tokenizes_like_qwen05_reference(qwen15_path, reference_dir):
    """There is no qwen15_tokenize.json: the README says the 1.5B shares the 0.5B's tokenizer, so
    the 1.5B file's own vocabulary must reproduce llama.cpp's tokenizations made with the 0.5B."""
    data = json.loads((reference_dir / "qwen05_tokenize.json").read_text("utf-8"))
    with tova.Engine(qwen15_path, policy="full", n_ctx=16, n_threads=1) as e:
        for case in data["cases"]:
            assert e.tokenize(case["text"]) == case["ids"], case["text"]
            assert e.tokenize(case["text"], special=True) == case["ids_special"], case["text"]


def test_last_logits_agree(family, reference_dir):
    name, e, ref = family
    for case in ref["cases"]:
        e.reset()
        logits = e.eval(case["prompt_ids"])
        top = case["last_top10"]
        assert int(np.argmax(logits)) == top[0][0], case["prompt"]
        t0, v0 = top[0]
        diffs = [abs((float(logits[t]) - float(logits[t0])) - (v - v0)) for t, v in top]
        assert max(diffs) < TOP10_TOL, (name, case["prompt"], diffs)
        npy = case.get("last_logits_npy")
        if npy:
            full = np.load(reference_dir / npy)
            assert full.shape == logits.shape
            lp, lq = _log_softmax(full), _log_softmax(logits)
            kl = float((np.exp(lp) * (lp - lq)).sum())
            assert kl < KL_TOL, (name, case["prompt"], kl)


def test_greedy_continuations(family):
    """32 greedy tokens per prompt (argmax, EOS not honoured, as the reference was made)."""
    name, e, ref = family
    n_same, n_steps = 0, 0
    for case in ref["cases"]:
        n_steps += len(case["gen_ids"])
        e.reset()
        logits = e.eval(case["prompt_ids"])
        for s, want in enumerate(case["gen_ids"]):
            tok = int(np.argmax(logits))
            if tok != want:
                ref_top = case["last_top10"] if s == 0 else case["step_top5"][s - 1]
                gap = ref_top[0][1] - ref_top[1][1]
                assert gap < NEAR_TIE, (
                    f"{name} {case['prompt']!r}: diverged at step {s} (ours {tok}, llama.cpp "
                    f"{want}) where llama.cpp's top-two gap is {gap:.3f} >= {NEAR_TIE}")
                # Our pick must itself be a near-tie in llama.cpp's logits (among its top 5,
                # within NEAR_TIE of its top): Gemma's first prompt has a three-way tie there.
                theirs = dict((t, v) for t, v in ref_top)
                assert tok in theirs and ref_top[0][1] - theirs[tok] < NEAR_TIE, (
                    name, case["prompt"], s, tok, ref_top)
                break  # after a legitimate flip the rest of the continuation differs
            n_same += 1
            logits = e.eval([tok])
    # Which near ties flip depends on the CPU kernel tier's rounding (Qwen 1.5B: 2 of 3
    # continuations equal in full with the scalar and AVX-512 kernels, none with AVX2, which
    # flips at steps 10, 22 and 23, each on a gap under 0.15): at least a quarter of all steps
    # equal llama.cpp's before the flips.
    assert n_same >= n_steps // 4, (name, n_same, n_steps)


def test_gemma3_layer_layout(gemma3_path):
    """The settings Gemma 3 fixes outside the GGUF metadata: every 6th layer global (5, 11, 17 of
    18), the others sliding with the metadata's window of 512 keys (the query itself included,
    so 511 kept between steps, llama.cpp masking key p when q - p >= 512); the global layers take
    the policy's kv_size."""
    with tova.Engine(gemma3_path, policy="tova", kv_size=1024, n_threads=1) as e:
        info = e.model_info
        assert info["n_swa"] == 512 and info["n_layer"] == 18
        layers = e.stats["kv_layers"]
        assert [L["layer"] for L in layers if not L["sliding"]] == [5, 11, 17]
        assert {L["capacity"] for L in layers if L["sliding"]} == {511}
        assert {L["capacity"] for L in layers if not L["sliding"]} == {1024}


def test_gemma3_sliding_layers_keep_their_window_under_small_kv_size(tmp_path):
    """Spec §6 and issue 6: sliding-window layers keep exactly their window whatever kv_size is;
    kv_size and the policy bound only the global layers. A synthetic Gemma 3 (window 8, five
    sliding layers and a global one) read through TOVA with kv_size 4 must give the logits of
    the spec's numpy reference (which keeps the window there) within the float32 summation-order
    tolerance of test_synthetic_models.py (2e-3; float_activations and an f32 cache)."""
    from reference.kv_policy_ref import run_policy
    from reference.llama_ref import LlamaRef
    from reference.synthetic import write_gemma3_gguf

    path = tmp_path / "gemma3.gguf"
    write_gemma3_gguf(path, seed=3, sliding_window=8)
    ids = np.random.default_rng(1).integers(3, 512, size=30).tolist()
    want = run_policy(LlamaRef(str(path)), ids, kv_size=4, policy="tova")
    with tova.Engine(path, policy="tova", kv_size=4, kv_type="f32", float_activations=True,
                     chunk=7, n_threads=2) as e:
        got = e.eval(ids, all_logits=True)
        kept = [len(e.kv_positions(l)) for l in range(6)]
    # n_swa - 1 = 7 kept between steps on the sliding layers (the query makes 8 visible), 4 on
    # the global one.
    assert kept == [7, 7, 7, 7, 7, 4]
    np.testing.assert_allclose(got, want["logits"], atol=2e-3, rtol=0)


def _with_linear_rope_scaling(src, dst, factor: float) -> None:
    """Copy of a GGUF with `ARCH.rope.scaling.{type,factor}` = linear, factor added (F32 tensors)."""
    import gguf

    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vt = f.types[0]
        w.add_key_value(name, f.contents(), vt,
                        sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    w.add_string(f"{arch}.rope.scaling.type", "linear")
    w.add_float32(f"{arch}.rope.scaling.factor", factor)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gemma3_rope_scaling_applies_to_global_layers_only(tmp_path):
    """Gemma 3 4B and larger carry linear RoPE scaling (factor 8): it stretches the global
    layers' positions only, the sliding layers keep base 10000 unscaled (Hugging Face applies
    rope_scaling to the global rotary embedding alone; llama.cpp fixes the sliding layers'
    frequency scale at 1). A synthetic Gemma 3 with that metadata against the numpy reference,
    which scales the global layers only; tolerance 2e-3 as in test_synthetic_models.py."""
    from reference.llama_ref import LlamaRef
    from reference.synthetic import write_gemma3_gguf

    plain, scaled = tmp_path / "g3.gguf", tmp_path / "g3_scaled.gguf"
    write_gemma3_gguf(plain, seed=3, sliding_window=8)
    _with_linear_rope_scaling(plain, scaled, 8.0)
    ref = LlamaRef(str(scaled))
    assert ref.hp.rope_linear_factor == 8.0
    ids = np.random.default_rng(1).integers(3, 512, size=30).tolist()
    want = ref.forward(ids)
    with tova.Engine(scaled, policy="full", n_ctx=64, kv_type="f32", float_activations=True,
                     chunk=7, n_threads=2) as e:
        got = e.eval(ids, all_logits=True)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
    # and the scaling matters: the unscaled model's logits are far from these
    assert np.abs(LlamaRef(str(plain)).forward(ids) - want).max() > 0.1
