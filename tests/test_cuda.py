"""The CUDA backend against the CPU backend (marker ``cuda``).

On a machine without a usable NVIDIA GPU (or a build without TOVA_CUDA) every test here but the
last is skipped with a reason that says so: they did not run. ``bench/cuda_check.sh`` runs them
on a GPU machine; ``tests/cuda_sim.sh`` runs them on the CPU simulator of the device (cuda/sim),
which CI does. Both sides take the same arithmetic: ``float_activations=True`` (float inputs times dequantized
weights) in most tests; the default 8-bit activations and integer products in
``test_cuda_int8_activations_equal_cpu``.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import tova
from tova._cli import binary
from reference.synthetic import write_gemma3_gguf, write_llama_gguf

HAVE_GPU = tova.cuda_device_count() > 0
needs_gpu = pytest.mark.skipif(
    not HAVE_GPU, reason=f"no CUDA GPU usable here (CUDA backend built: {tova.cuda_built()}): these tests did not run here "
           "(bench/cuda_check.sh runs them on a GPU, tests/cuda_sim.sh on the CPU simulator of cuda/sim)")

# The quant types of the four real models (and the rest of the table the kernels handle).
WEIGHT_TYPES = ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
TOL = 2e-3  # float sums in another order, and expf / tanhf of the device


def _pair(path, **kw):
    cpu = tova.Engine(path, float_activations=True, n_threads=2, **kw)
    gpu = tova.Engine(path, device="cuda", float_activations=True, **kw)
    return cpu, gpu


def _ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


def _same_positions_every_step(cpu, gpu, ids, prompt: int, n_layer: int, what) -> None:
    """Prefill ids[:prompt] on both, then one token at a time: every layer's kept positions agree
    after every step."""
    cpu.eval(ids[:prompt])
    gpu.eval(ids[:prompt])
    for t in ids[prompt:]:
        cpu.eval([t])
        gpu.eval([t])
        for layer in range(n_layer):
            assert cpu.kv_positions(layer).tolist() == gpu.kv_positions(layer).tolist(), (what, layer)


@pytest.mark.cuda
@needs_gpu
def test_cuda_kernels_equal_their_cpu_twins():
    """Each kernel on random inputs (every weight type by the three matrix kernels, odd row
    counts, 1/3/11/70 input rows; embedding, RMS norm, SiLU/GELU gating, add; the policies'
    steps; K/V writes, demotions and keys rotated by rank, byte for byte; the attention over the
    same stored K/V in every kind of key and value, two tiers, cache_index) against the CPU's."""
    assert tova._core._cuda_kernel_check() == []


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_cuda_logits_equal_cpu(tmp_path, weight_type):
    """Every weight type the kernels handle (rows of 3 blocks for the 32-element types, 1-2 for
    the k-quants): prefill and token-by-token logits equal the CPU's."""
    path = tmp_path / "m.gguf"
    n_ff = 512 if weight_type.endswith("_K") else 96
    write_llama_gguf(path, seed=3, weight_type=weight_type, n_embd=256 if weight_type.endswith("_K") else 64,
                     n_ff=n_ff, n_head=4, n_head_kv=2)
    cpu, gpu = _pair(path, policy="full", n_ctx=128, chunk=16)
    with cpu, gpu:
        ids = _ids(40, cpu.n_vocab)
        want = cpu.eval(ids, all_logits=True)
        got = gpu.eval(ids, all_logits=True)
        np.testing.assert_allclose(got, want, atol=TOL * max(1.0, float(np.abs(want).max())), rtol=0)
        for t in _ids(24, cpu.n_vocab, seed=1):
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=TOL * max(1.0, float(np.abs(want).max())),
                                       rtol=0)


INT8_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"]


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("weight_type", INT8_TYPES)
def test_cuda_int8_activations_equal_cpu(tmp_path, weight_type):
    """The default path (float_activations=False) on both backends: inputs quantized to 8 bits
    (q8_0 / q8_1 / q8_K, the same quants and scales) and integer products. Chunks of 16 rows, so
    that the prompt takes the integer kernel too (from TOVA_CUDA_TILED_FROM rows the tiled float
    kernel takes it). Logits within 4 % of their largest magnitude, the same greedy tokens and kept
    positions. Not closer: a value on a rounding boundary of the 8-bit quantizer, where the two
    backends' float inputs differ in their last bits, takes the neighbouring level, and this small
    random model amplifies one such step (Q6_K, as numpy 2.4.6 and gguf 0.19.0 write it: prompt
    rows 0-30 of 40 within 2e-6, then 2.3 % in row 31 and up to 1.6 % in the rows after it, which
    attend to its K/V). A wrong kernel is off by far more, and the quantizer itself is checked
    byte for byte elsewhere (the kernel checks). The norms feeding the products quantize what they
    write in the same kernel (the kernel check compares its bytes with the quantizer's)."""
    path = tmp_path / "m.gguf"
    k = weight_type.endswith("_K")
    write_llama_gguf(path, seed=29, weight_type=weight_type, n_embd=256 if k else 64, n_ff=512 if k else 96,
                     n_head=4, n_head_kv=2)
    cpu = tova.Engine(path, n_threads=2, policy="tova", kv_size=24, chunk=16)
    gpu = tova.Engine(path, device="cuda", policy="tova", kv_size=24, chunk=16)
    with cpu, gpu:
        ids = _ids(40, cpu.n_vocab, seed=29)
        want = cpu.eval(ids, all_logits=True)
        tol = 4e-2 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(gpu.eval(ids, all_logits=True), want, atol=tol, rtol=0)
        for t in _ids(16, cpu.n_vocab, seed=30):
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=tol, rtol=0)
            for layer in range(2):
                assert cpu.kv_positions(layer).tolist() == gpu.kv_positions(layer).tolist(), layer
        # The norms before q/k/v and before gate/up quantized what they wrote for the product
        # (one kernel, cuda::rms_norm_act): 2 layers x 2 a step, 16 steps and 3 prompt chunks.
        assert gpu._e._backend_counters()["cuda_norms_quantized"] >= 4 * (16 + 3)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("weight_type", ["Q4_K", "Q6_K", "Q8_0", "F16"])
def test_cuda_tiled_prefill(tmp_path, monkeypatch, weight_type):
    """Prompt chunks of 64 rows (and the logits of all of them) take the tiled matrix product
    (TOVA_CUDA_TILED_FROM, default 32 rows): logits equal the CPU's, and those of the warp-per-row
    kernels (TOVA_CUDA_TILED_FROM=0)."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=19, weight_type=weight_type, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    ids = _ids(100, 384, seed=19)
    monkeypatch.setenv("TOVA_CUDA_TILED_FROM", "0")
    rowwise = tova.Engine(path, device="cuda", float_activations=True, policy="tova", kv_size=80, chunk=64)
    monkeypatch.delenv("TOVA_CUDA_TILED_FROM")
    cpu, gpu = _pair(path, policy="tova", kv_size=80, chunk=64)
    with cpu, gpu, rowwise:
        want = cpu.eval(ids, all_logits=True)
        tol = TOL * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(gpu.eval(ids, all_logits=True), want, atol=tol, rtol=0)
        np.testing.assert_allclose(rowwise.eval(ids, all_logits=True), want, atol=tol, rtol=0)
        for t in _ids(4, 384, seed=20):
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=tol, rtol=0)


@pytest.mark.cuda
@needs_gpu
def test_cuda_launch_shapes(tmp_path, monkeypatch):
    """Matrix rows split among 2 or 4 warps (the default where a product has few rows for the
    device; here planned for an H100's 132 multiprocessors, TOVA_CUDA_ROW_SPLIT=132) and rows of
    up to 160 slots attended in runs of 64 (3 runs) give the CPU's logits and kept positions, and
    those of one warp a row and one attention block per row (TOVA_CUDA_ROW_SPLIT=0,
    TOVA_CUDA_ATTN_RUNS=1); a bad setting is a clear error."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=23, weight_type="Q4_K", n_embd=512, n_ff=1024, n_head=8, n_head_kv=2)
    monkeypatch.setenv("TOVA_CUDA_ROW_SPLIT", "0")
    monkeypatch.setenv("TOVA_CUDA_ATTN_RUNS", "1")
    plain = tova.Engine(path, device="cuda", float_activations=True, policy="tova", kv_size=160, chunk=16)
    monkeypatch.setenv("TOVA_CUDA_ATTN_RUNS", "17")
    with pytest.raises(ValueError, match="TOVA_CUDA_ATTN_RUNS"):
        tova.Engine(path, device="cuda")
    monkeypatch.delenv("TOVA_CUDA_ATTN_RUNS")
    monkeypatch.setenv("TOVA_CUDA_ROW_SPLIT", "many")
    with pytest.raises(ValueError, match="TOVA_CUDA_ROW_SPLIT"):
        tova.Engine(path, device="cuda")
    monkeypatch.setenv("TOVA_CUDA_ROW_SPLIT", "132")
    cpu, gpu = _pair(path, policy="tova", kv_size=160, chunk=16)
    with cpu, gpu, plain:
        ids = _ids(200, cpu.n_vocab, seed=23)
        want = cpu.eval(ids, all_logits=True)
        tol = TOL * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(gpu.eval(ids, all_logits=True), want, atol=tol, rtol=0)
        np.testing.assert_allclose(plain.eval(ids, all_logits=True), want, atol=tol, rtol=0)
        for t in _ids(8, cpu.n_vocab, seed=24):
            got, got_plain, w = gpu.eval([t]), plain.eval([t]), cpu.eval([t])
            np.testing.assert_allclose(got, w, atol=tol, rtol=0)
            np.testing.assert_allclose(got_plain, w, atol=tol, rtol=0)
            for layer in range(2):
                assert gpu.kv_positions(layer).tolist() == plain.kv_positions(layer).tolist() == \
                    cpu.kv_positions(layer).tolist(), layer


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("policy", ["tova", "tova_ema", "h2o", "sink", "window"])
def test_cuda_keeps_the_cpu_positions(tmp_path, policy):
    """With eviction (kv_size 24, 120 tokens), the kept positions of every layer are the CPU's at
    every step (probabilities copied back to the host policies)."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=4, weight_type="Q4_K", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=3)
    cpu, gpu = _pair(path, policy=policy, kv_size=24, chunk=8)
    with cpu, gpu:
        _same_positions_every_step(cpu, gpu, _ids(120, cpu.n_vocab, seed=2), 40, 3, policy)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("policy", ["tova", "h2o", "tova_ema"])
@pytest.mark.parametrize("prefill", ["exact", "chunked"])
def test_cuda_runs_builtin_policies_on_the_device(tmp_path, monkeypatch, policy, prefill):
    """The built-in tova, h2o and tova_ema run on the device (state kept there, only the victims'
    slots come back): the kept positions equal, bit for bit and at every step, those of the
    host's policy fed the device's head mean (TOVA_CUDA_VICTIMS=0), and the CPU backend's:
    exact prefill (one victim a row), chunked prefill (up to a chunk's worth at once), sinks
    (protected), several sequences in one step."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=15, weight_type="Q8_0", n_embd=64, n_head=4, n_head_kv=2, n_layer=3)
    kw = dict(policy=policy, kv_size=12, n_sink=3, prefill=prefill, chunk=8)
    ids = _ids(70, 384, seed=15)
    monkeypatch.setenv("TOVA_CUDA_VICTIMS", "0")
    host = tova.Engine(path, device="cuda", float_activations=True, **kw)
    monkeypatch.delenv("TOVA_CUDA_VICTIMS")
    cpu, dev = _pair(path, **kw)
    with cpu, dev, host:
        for e in (cpu, dev, host):
            e.eval(ids[:30])
        for t in ids[30:]:
            for e in (cpu, dev, host):
                e.eval([t])
            for layer in range(3):
                kept = dev.kv_positions(layer).tolist()
                assert kept == host.kv_positions(layer).tolist() == cpu.kv_positions(layer).tolist(), layer
                assert all(p in kept for p in range(3))  # the sinks stay
        d, h = dev._e._backend_counters(), host._e._backend_counters()
        assert d["cuda_victims_selected"] >= 3 * 40 and h["cuda_victims_selected"] == 0
        # One int a victim back instead of a float a kept slot (13 here) and row.
        assert 0 < 4 * d["cuda_policy_bytes_to_host"] < h["cuda_policy_bytes_to_host"]
    prompts = [_ids(n, 384, seed=n) for n in (9, 23, 40)]
    with tova.Engine(path, device="cuda", n_seq=3, **kw) as e:
        alone = [e.generate(p, max_tokens=10, temperature=0, ignore_eos=True) for p in prompts]
        assert e.generate_batch(prompts, max_tokens=10, temperature=0, ignore_eos=True) == alone


@pytest.mark.cuda
@needs_gpu
def test_cuda_llama_attention_biases(tmp_path):
    """A llama with q, k, v and output biases (attention_bias): the device adds them as the CPU
    does, in the prompt's products and in captured decode steps."""
    rng = np.random.default_rng(6)
    biases = {f"blk.{l}.{name}.bias": rng.normal(0, 0.5, n).astype(np.float32)
              for l in range(2) for name, n in (("attn_q", 64), ("attn_k", 32), ("attn_v", 32),
                                                 ("attn_output", 64))}
    path = tmp_path / "bias.gguf"
    write_llama_gguf(path, seed=9, weight_type="Q8_0", extra_tensors=biases)
    cpu, gpu = _pair(path, policy="tova", kv_size=24, chunk=8)
    with cpu, gpu:
        ids = _ids(30, cpu.n_vocab, seed=4)
        want, got = cpu.eval(ids, all_logits=True), gpu.eval(ids, all_logits=True)
        np.testing.assert_allclose(got, want, atol=TOL * max(1.0, float(np.abs(want).max())), rtol=0)
        for t in _ids(12, cpu.n_vocab, seed=5):
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=TOL * max(1.0, float(np.abs(want).max())),
                                       rtol=0)


@pytest.mark.cuda
@needs_gpu
def test_cuda_gemma3_sliding_layers(tmp_path):
    """Gemma 3's shape (sliding-window layers, GELU, post norms, tied output) on the GPU."""
    path = tmp_path / "g.gguf"
    write_gemma3_gguf(path, seed=5, weight_type="Q4_K", n_embd=256, n_ff=512, head_dim=64)
    cpu, gpu = _pair(path, policy="tova", kv_size=32, chunk=8)
    with cpu, gpu:
        ids = _ids(60, cpu.n_vocab, seed=3)
        want, got = cpu.eval(ids, all_logits=True), gpu.eval(ids, all_logits=True)
        np.testing.assert_allclose(got, want, atol=TOL * max(1.0, float(np.abs(want).max())), rtol=0)


@pytest.mark.cuda
@needs_gpu
def test_cuda_batched_sequences(tmp_path):
    """Several sequences in one step through the scheduler: each equals its run alone."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=6, weight_type="Q8_0", n_embd=64, n_head=4, n_head_kv=2)
    prompts = [_ids(n, 384, seed=n) for n in (5, 17, 33)]
    with tova.Engine(path, device="cuda", policy="tova", kv_size=16, n_seq=3) as e:
        alone = [e.generate(p, max_tokens=12, temperature=0, ignore_eos=True) for p in prompts]
        assert e.generate_batch(prompts, max_tokens=12, temperature=0, ignore_eos=True) == alone


class _Follow(tova.Policy):
    """TOVA's choice (lowest head mean, then oldest) computed from this engine's probabilities and
    recorded with the gap to the next candidate; with a leader, the leader's choice is what it
    returns, so that two engines keep the same cache whatever float noise says."""
    name = "follow"

    def __init__(self, leader: "_Follow | None" = None):
        super().__init__()
        self.leader = leader
        self.calls: list[tuple[int, list[int], float]] = []  # (layer, own choice, relative gap)
        self.returned = 0

    def select(self, layer, view):
        pos, mean = view.pos, view.probs_mean
        ok = np.where((pos >= 0) & (view.protect == 0))[0]
        order = ok[np.lexsort((pos[ok], mean[ok]))]
        k = view.n_evict
        own = order[:k].tolist()
        nxt = float(mean[order[k]]) if len(order) > k else np.inf
        last = float(mean[order[k - 1]])
        self.calls.append((layer, own, (nxt - last) / max(abs(nxt), 1e-30)))
        if self.leader is None:
            return own
        choice = self.leader.calls[self.returned][1]
        assert self.leader.calls[self.returned][0] == layer
        self.returned += 1
        return choice


@pytest.mark.cuda
@pytest.mark.model
@needs_gpu
@pytest.mark.parametrize("policy", ["full", "tova"])
def test_cuda_smollm2_256_steps(smollm2_path, policy):
    """SmolLM2 itself: 256 greedy decode steps after a prompt (the CPU's tokens fed to both), the
    logits within tolerance of the CPU backend's at every step. With eviction (tova, kv_size 128:
    it evicts from step 121 on) the GPU follows the CPU's choices, so that the caches stay equal
    and the logits comparable; the GPU's own choice must equal the CPU's at every call except
    at a near tie (the CPU's two candidates within 1e-3 of each other, where float noise in the
    probabilities decides, and either is TOVA). TOVA_CUDA_STEPS sets fewer steps (the simulator
    runs 8 in CI, about 35 s each there, with kv_size 8 so that it evicts from its first steps)."""
    import os
    steps = int(os.environ.get("TOVA_CUDA_STEPS", "256"))
    if policy == "full":
        cpu, gpu = _pair(smollm2_path, policy="full", n_ctx=steps + 64, chunk=32)
        lead = follow = None
    else:
        lead = _Follow()
        follow = _Follow(leader=lead)
        kv = 128 if steps >= 200 else 8
        cpu = tova.Engine(smollm2_path, float_activations=True, n_threads=2, policy=lead, kv_size=kv, chunk=32)
        gpu = tova.Engine(smollm2_path, device="cuda", float_activations=True, policy=follow, kv_size=kv, chunk=32)
    with cpu, gpu:
        ids = cpu.tokenize("The history of the printing press begins")
        a, b = cpu.eval(ids), gpu.eval(ids)
        worst = 0.0
        for _ in range(steps):
            worst = max(worst, float(np.abs(a - b).max()))
            t = int(a.argmax())
            a = cpu.eval([t])
            b = gpu.eval([t])
        assert worst < 0.05, worst
        if lead is not None:
            assert len(follow.calls) == len(lead.calls) > steps // 4
            differ = [(c, g) for c, g in zip(lead.calls, follow.calls) if c[1] != g[1]]
            assert all(c[2] < 1e-3 for c, _ in differ), differ[:3]
            assert len(differ) <= max(2, len(lead.calls) // 100), (len(differ), len(lead.calls))


class _PyTova(tova.Policy):
    """TOVA written in Python: the plugin path (probabilities copied to the host for it)."""
    name = "pytova"

    def select(self, layer, view):
        pos, mean = view.pos, view.probs_mean
        ok = np.where((pos >= 0) & (view.protect == 0))[0]
        return ok[np.lexsort((pos[ok], mean[ok]))[: view.n_evict]].tolist()


@pytest.mark.cuda
@needs_gpu
def test_cuda_python_policy_keeps_the_cpu_positions(tmp_path):
    """A Python policy with device="cuda": the same kept positions as on the CPU, every step."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=7, weight_type="Q4_0", n_embd=64, n_head=4, n_head_kv=2, n_layer=2)
    cpu, gpu = _pair(path, policy=_PyTova(), kv_size=16, chunk=8)
    with cpu, gpu:
        _same_positions_every_step(cpu, gpu, _ids(60, cpu.n_vocab, seed=4), 20, 2, "python policy")


@pytest.mark.cuda
@needs_gpu
def test_cuda_c_plugin_and_cli(tmp_path):
    """The CLI on the GPU: the example C plugin (oldest first) writes the built-in window's text,
    and `tova bench --device cuda --json` gives the fields bench/cuda_check.sh reports."""
    import json
    import os
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=8, weight_type="Q8_0", n_embd=64, n_head=4, n_head_kv=2)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = tmp_path / "liboldest.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-I", os.path.join(repo, "cpp", "include"),
                    os.path.join(repo, "examples", "policy_plugin", "oldest_first.c"), "-o", str(lib)], check=True)
    common = [str(binary()), "run", "-m", str(path), "-p", "abc", "-n", "24", "--temp", "0", "--ignore-eos",
              "--kv-size", "8", "--device", "cuda"]
    a = subprocess.run([*common, "--policy", "window"], capture_output=True, text=True, timeout=600)
    b = subprocess.run([*common, "--policy-plugin", str(lib)], capture_output=True, text=True, timeout=600)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout and len(a.stdout) > 0
    r = subprocess.run([str(binary()), "bench", "-m", str(path), "--device", "cuda", "-p", "16", "-n", "8", "-r", "1",
                        "--policy", "tova", "--kv-size", "8", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {row["n_prompt"] for row in rows} == {16, 0}
    for row in rows:
        assert row["avg_ts"] > 0 and row["weight_bytes"] > 0 and row["policy"] == "tova" and row["kv_size"] == 8


@pytest.mark.cuda
@needs_gpu
def test_cuda_hands_back_the_head_mean_alone(tmp_path):
    """A policy declaring TOVA_POLICY_MEAN_ONLY (as the built-ins do) gets only probs_mean from
    the GPU (the device averages the heads, one float per slot comes back, and it sums to 1);
    without the flag it gets every head's probabilities. The CPU hands both either way."""
    import os
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=12, weight_type="Q8_0", n_embd=64, n_head=4, n_head_kv=2)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 12)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = tmp_path / "librecorder.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-I", os.path.join(repo, "cpp", "include"),
                    os.path.join(repo, "tests", "plugins", "abi_recorder.c"), "-o", str(lib), "-lm"], check=True)

    def counts(device: str, flags: int) -> dict:
        out = tmp_path / f"{device}-{flags}.txt"
        r = subprocess.run([str(binary()), "perplexity", "-m", str(path), "-f", str(text), "--device", device,
                            "--policy-plugin", str(lib), "--policy-args", f"{flags}:2:{out}", "--kv-size", "12",
                            "-c", "48", "--chunks", "2", "-t", "1", "--no-progress"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return {k: int(v) for k, v in (line.split() for line in out.read_text().splitlines())}

    NEEDS_PROBS, MEAN_ONLY = 1, 4
    gpu_mean, gpu_all = counts("cuda", NEEDS_PROBS | MEAN_ONLY), counts("cuda", NEEDS_PROBS)
    cpu_mean = counts("cpu", NEEDS_PROBS | MEAN_ONLY)
    assert gpu_mean["probs_mean_only"] > 0 and gpu_mean["probs_set"] == 0 and gpu_mean["probs_bad_sum"] == 0
    assert gpu_all["probs_set"] > 0 and gpu_all["probs_mean_only"] == 0 and gpu_all["probs_bad_sum"] == 0
    assert cpu_mean["probs_set"] > 0 and cpu_mean["probs_mean_only"] == 0
    assert gpu_mean["selects"] == gpu_all["selects"] == cpu_mean["selects"]


@pytest.mark.cuda
@needs_gpu
def test_cuda_threads_share_an_engine_and_the_device(tmp_path):
    """Six threads on one GPU engine (batched by its scheduler; prompts in chunks of 8, so that
    steps without logits, captured as graphs, are driven by one thread and the next step by
    another) and a second GPU engine in another thread at the same time: each caller gets the
    text it gets alone."""
    import threading
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=13, weight_type="Q4_K", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    prompts = [_ids(n, 384, seed=n) for n in (3, 8, 13, 21, 30, 34)]
    kw = dict(max_tokens=10, temperature=0.8, top_k=20)
    with tova.Engine(path, device="cuda", policy="tova", kv_size=16, n_seq=3, chunk=8) as e, \
            tova.Engine(path, device="cuda", policy="h2o", kv_size=12) as other:
        alone = [e.generate(p, seed=i, **kw) for i, p in enumerate(prompts)]
        other_alone = other.generate(prompts[0], seed=99, **kw)
        got, errors = {}, []
        jobs = [(e, p, i) for i, p in enumerate(prompts)] + [(other, prompts[0], 99)]
        barrier = threading.Barrier(len(jobs))

        def worker(k):
            engine, prompt, seed = jobs[k]
            try:
                barrier.wait()
                got[k] = engine.generate(prompt, seed=seed, **kw)
            except BaseException as ex:  # noqa: BLE001 - reported below
                errors.append(ex)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        assert [got[k] for k in range(len(prompts))] == alone
        assert got[len(prompts)] == other_alone


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("policy", ["tova", "h2o", "window", "full"])
def test_cuda_unchanged_steps_relaunch_their_graph(tmp_path, monkeypatch, policy):
    """A decode step whose operations and arguments are those of the last one relaunches its
    graph as it is, with no capture: once a cache is full every step is (the token, its angles,
    the slot written and the slots attended travel in uploaded bytes), and while a cache grows
    (policy "full") the attention's bound and upload grow in steps of 64 slots. The logits equal,
    bit for bit, those of steps captured anew every time (TOVA_CUDA_REPLAY=0) and of operations
    issued directly (TOVA_CUDA_GRAPHS=0), and the CPU's within TOL; so do the kept positions.
    Steps of another sequence in between (another fill, other K/V: the attention rows say where,
    uploaded as data) relaunch the same graphs, and must still read their own cache. The full
    cache crosses 64 slots (a new bound) on the way."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=21, weight_type="Q4_K", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=2)
    kw = dict(policy=policy, n_seq=2, **({} if policy == "full" else {"kv_size": 8}))
    engines = {"cpu": tova.Engine(path, float_activations=True, n_threads=2, **kw)}
    for name, env in (("replay", {}), ("capture", {"TOVA_CUDA_REPLAY": "0"}), ("direct", {"TOVA_CUDA_GRAPHS": "0"})):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            engines[name] = tova.Engine(path, device="cuda", float_activations=True, **kw)
    ids = _ids(90, engines["cpu"].n_vocab, seed=21)
    try:
        for e in engines.values():
            e.eval(ids[:50])
        before = engines["replay"]._e._backend_counters()
        for i, t in enumerate(ids[50:84]):
            seq = 1 if i in (20, 21, 22) else 0  # three steps of sequence 1 (a 1-, 2-, 3-token cache)
            logits = {name: e.eval([t], seq=seq) for name, e in engines.items()}
            assert np.array_equal(logits["replay"], logits["capture"]), i
            assert np.array_equal(logits["replay"], logits["direct"]), i
            want = logits["cpu"]
            np.testing.assert_allclose(logits["replay"], want, atol=TOL * max(1.0, float(np.abs(want).max())), rtol=0)
            for layer in range(2):
                kept = engines["cpu"].kv_positions(layer, seq=seq).tolist()
                assert all(e.kv_positions(layer, seq=seq).tolist() == kept for e in engines.values()), (i, layer)
        c = {k: v - before.get(k, 0) for k, v in engines["replay"]._e._backend_counters().items()}
        # 34 steps; captured: the first, the full cache's step to 65 slots, a few more where a
        # sequence's shape changed (and segments of steps that host waits cut apart).
        assert c["cuda_graphs_replayed"] >= 34 - 8, c
        assert engines["capture"]._e._backend_counters()["cuda_graphs_replayed"] == 0
        assert engines["direct"]._e._backend_counters()["cuda_graphs_launched"] == 0
    finally:
        for e in engines.values():
            e.close()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("n,chunk", [(600, 600), (1500, 64)])
def test_cuda_long_prompts_start_the_staging_arena_over(tmp_path, n, chunk):
    """A prompt whose uploads fill the staging arena (one chunk of 600 rows; or 1500 tokens in
    chunks of 64, the attention's slot lists growing) makes the arena wait for the device and
    start over while the queries' and keys' rotation, whose angles it holds, has not been issued
    yet (it waits for the K/V write): the rotation is issued before the arena starts over. Every
    row's logits equal the CPU's. (Before: the rotation read freed memory, a crash.)"""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=3, weight_type="F32", n_embd=64, n_ff=96, n_head=4, n_head_kv=2, context_length=2048)
    kw = dict(policy="full", n_ctx=n + 64, chunk=chunk)
    cpu, gpu = _pair(path, **kw)
    with cpu, gpu:
        ids = _ids(n, cpu.n_vocab, seed=n)
        want = cpu.eval(ids, all_logits=True)
        np.testing.assert_allclose(gpu.eval(ids, all_logits=True), want, atol=TOL * max(1.0, float(np.abs(want).max())),
                                   rtol=0)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("float_activations", [False, True])
def test_cuda_products_run_the_norm_or_quantizer_after_them(tmp_path, monkeypatch, float_activations):
    """A decode step's product runs what takes its output next in its own kernel's last block
    (cuda::Tail): the residual add and norm after the attention's output product and after the
    down product (quantized there for the next product on the 8-bit path), and, on the 8-bit
    path, the quantizer of the gated product's output for the down product. The attention's
    kernel combines a row's runs, runs TOVA's step (head mean, victims) and, on the 8-bit path,
    quantizes its output for the next product in the row's last block (cuda::AttnPost); the
    product of q, k and v stores the keys and values, rotated with the queries
    (cuda::WriteRope), in its last block. The logits equal, bit for bit, those of the same
    kernels launched apart (TOVA_CUDA_TAILS=0), and so do the kept positions; a step has 8
    launches a layer fewer on the 8-bit path (6 with float activations), but one: the last
    layer's down product is followed by an add, not a norm. Batches of 3 sequences (up to 4 rows take the products'
    tails) and of 6 (those launched apart) generate the same texts."""
    path = tmp_path / "m.gguf"
    n_layer = 3
    write_llama_gguf(path, arch="qwen2", seed=31, weight_type="Q4_K", n_embd=256, n_ff=512, n_head=4, n_head_kv=2,
                     n_layer=n_layer)
    kw = dict(policy="tova", kv_size=8, n_seq=6, float_activations=float_activations)
    with monkeypatch.context() as m:
        m.setenv("TOVA_CUDA_TAILS", "0")
        apart = tova.Engine(path, device="cuda", **kw)
    fused = tova.Engine(path, device="cuda", **kw)
    with apart, fused:
        ids = _ids(28, fused.n_vocab, seed=31)
        apart.eval(ids[:12])
        fused.eval(ids[:12])
        for i, t in enumerate(ids[12:]):
            before = {e: e._e._backend_counters() for e in (apart, fused)}
            assert np.array_equal(apart.eval([t]), fused.eval([t])), i
            for layer in range(n_layer):
                assert apart.kv_positions(layer).tolist() == fused.kv_positions(layer).tolist(), (i, layer)
        step = {e: {k: v - before[e].get(k, 0) for k, v in e._e._backend_counters().items()} for e in (apart, fused)}
        saved = (3 if float_activations else 4) * n_layer - 1  # with the K/V writes
        assert step[fused]["cuda_stores_in_products"] == n_layer
        assert step[fused]["cuda_tails"] == saved, step[fused]
        # (the attention output quantized for the product after it, a layer; the products: all but one)
        assert step[fused]["cuda_tails_quantized"] == (0 if float_activations else 4 * n_layer - 1), step[fused]
        assert step[apart].get("cuda_tails", 0) == 0
        assert step[fused]["cuda_ropes_in_writes"] == n_layer and step[apart]["cuda_ropes_in_writes"] == 0
        # and the attention's combine, head-mean and (8-bit path) quantizer kernels, and the
        # rotation (done by the K/V writes)
        attn = (3 if float_activations else 4) * n_layer
        assert step[apart]["cuda_graph_nodes"] - step[fused]["cuda_graph_nodes"] == saved + attn, step
        prompts = [_ids(n, fused.n_vocab, seed=n) for n in (3, 9, 14, 5, 11, 7)]
        for batch in (prompts[:3], prompts):
            texts = fused.generate_batch(batch, max_tokens=8, temperature=0, ignore_eos=True)
            assert texts == apart.generate_batch(batch, max_tokens=8, temperature=0, ignore_eos=True)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.skipif(not tova._core._cuda_simulated(),
                    reason="breaks captures on purpose, which only the simulator can (tests/cuda_sim.sh runs it)")
@pytest.mark.parametrize("policy,every", [("full", 3), ("tova", 3), ("tova", 1)])
def test_cuda_broken_captures_issue_their_steps_directly(tmp_path, monkeypatch, policy, every):
    """A capture that the driver invalidates for another thread's call (a device-wide wait, a
    free: seen on real drivers, and what the simulator does) is not an error of the step: its
    recording is issued directly, and the next step is captured anew (never the graph of an
    older recording relaunched). The simulator breaks every `every`-th capture on purpose
    (TOVA_SIM_BREAK_CAPTURES), at its first operation or at its end in turn. Logits equal, bit
    for bit, those of operations issued directly; kept positions too. Steps of two rows now and
    then change the step's shape (and "full" crosses 64 slots): changed steps are captured, some
    of those captures break, and the steps after them must not relaunch the old graph."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=23, weight_type="Q4_K", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_layer=2)
    kw = dict(policy=policy, **({} if policy == "full" else {"kv_size": 8}))
    with monkeypatch.context() as m:
        m.setenv("TOVA_CUDA_GRAPHS", "0")
        direct = tova.Engine(path, device="cuda", **kw)
    broken = tova.Engine(path, device="cuda", **kw)
    ids = _ids(80, direct.n_vocab, seed=23)
    try:
        for e in (direct, broken):
            e.eval(ids[:50])
        before = broken._e._backend_counters()
        with monkeypatch.context() as m:
            m.setenv("TOVA_SIM_BREAK_CAPTURES", str(every))
            at, steps = 50, 0
            while at < len(ids):
                n = 2 if steps % 8 == 5 else 1  # a step of two rows now and then: the next is changed too
                want, got = direct.eval(ids[at:at + n]), broken.eval(ids[at:at + n])
                assert np.array_equal(got, want), at
                for layer in range(2):
                    assert broken.kv_positions(layer).tolist() == direct.kv_positions(layer).tolist(), (at, layer)
                at, steps = at + n, steps + 1
        c = {k: v - before.get(k, 0) for k, v in broken._e._backend_counters().items()}
        assert c["cuda_graphs_uncaptured"] >= 1, c
        if every == 1:  # every capture broken: every step issued directly
            assert c["cuda_graphs_uncaptured"] >= steps and c["cuda_graphs_launched"] == 0, c
        else:  # whole captures in between: graphs launched and relaunched still
            assert c["cuda_graphs_launched"] >= steps - c["cuda_graphs_uncaptured"], c
            assert c["cuda_graphs_replayed"] >= steps - 12, c
    finally:
        direct.close()
        broken.close()


@pytest.mark.cuda
@needs_gpu
def test_cuda_steps_survive_engines_made_and_freed_beside_them(tmp_path, monkeypatch):
    """One engine generates (every step captured: TOVA_CUDA_REPLAY=0) while another thread makes
    and frees small engines on the same GPU (allocations, frees, waits): the text is the one it
    gets alone, and no call fails. A free may invalidate the generating thread's capture on a
    real driver (the simulator always does when the two meet); that step is then issued
    directly. Whether they meet depends on timing (on an idle 2-core machine about one capture
    in six, on a loaded one maybe none): what a broken capture does is shown deterministically by
    test_cuda_broken_captures_issue_their_steps_directly; this test shows that nothing fails
    around it."""
    import threading
    path, small = tmp_path / "m.gguf", tmp_path / "s.gguf"
    write_llama_gguf(path, seed=13, weight_type="Q4_K", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    write_llama_gguf(small, seed=14, weight_type="Q8_0", n_embd=64, n_head=4, n_head_kv=2)
    with monkeypatch.context() as m:
        m.setenv("TOVA_CUDA_REPLAY", "0")
        e = tova.Engine(path, device="cuda", policy="tova", kv_size=16)
    ids = _ids(20, 384, seed=1)
    kw = dict(max_tokens=30, temperature=0, ignore_eos=True)
    with e:
        alone = e.generate(ids, **kw)
        stop, made, errors = threading.Event(), [0], []

        def churn():
            while not stop.is_set():
                try:
                    with tova.Engine(small, device="cuda", kv_size=8) as x:
                        x.eval([1, 2])
                    made[0] += 1
                except BaseException as ex:  # noqa: BLE001 - reported below
                    errors.append(ex)
                    return

        t = threading.Thread(target=churn)
        t.start()
        try:
            got = [e.generate(ids, **kw) for _ in range(2)]
        finally:
            stop.set()
            t.join(timeout=600)
        assert not errors, errors
        assert got == [alone, alone]
        assert made[0] > 0


@pytest.mark.cuda
@needs_gpu
def test_cuda_steps_without_logits_on_other_threads(tmp_path):
    """A prompt read in chunks of 8, one scheduler step per thread: the steps that end without
    logits (captured as a graph) are issued before the step returns, so that the next step, on
    another thread, does not meet a capture it did not begin (which CUDA refuses)."""
    import threading
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=14, weight_type="Q8_0", n_embd=64, n_head=4, n_head_kv=2)
    ids = _ids(30, 384, seed=14)
    with tova.Engine(path, device="cuda", policy="window", kv_size=64, chunk=8) as e:
        want = e.generate(ids, max_tokens=6, temperature=0, ignore_eos=True)
        handle = e.submit(ids, max_tokens=6, temperature=0, ignore_eos=True)
        for _ in range(3):  # chunks 1-3 of the prompt, no logits, each step on a new thread
            t = threading.Thread(target=e._e.step)  # the core's "one scheduler step"
            t.start()
            t.join()
        assert handle.result() == want


@pytest.mark.cuda
@needs_gpu
def test_cuda_qwen2_biases_and_f32_kv(tmp_path):
    """qwen2's shape (q/k/v biases, NeoX RoPE) with K/V stored in f32 on the device."""
    path = tmp_path / "q.gguf"
    write_llama_gguf(path, seed=9, weight_type="Q6_K", n_embd=256, n_ff=512, n_head=4, n_head_kv=1, arch="qwen2",
                     tied_output=True)
    cpu, gpu = _pair(path, policy="tova", kv_size=20, chunk=8, kv_type="f32")
    with cpu, gpu:
        ids = _ids(50, cpu.n_vocab, seed=5)
        want, got = cpu.eval(ids, all_logits=True), gpu.eval(ids, all_logits=True)
        tol = TOL * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=tol, rtol=0)
        for t in _ids(10, cpu.n_vocab, seed=6):
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=tol, rtol=0)


# Key / value types of a quantized cache (keys never q3_0), and mixed with the float types.
KV_TYPE_PAIRS = [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q4_1", "q4_1"), ("q5_0", "q5_0"), ("q5_1", "q5_1"),
                 ("q8_0", "q3_0"), ("f16", "q4_0"), ("q4_0", "f32")]


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("kv_k,kv_v", KV_TYPE_PAIRS)
@pytest.mark.parametrize("hadamard", [True, False])
def test_cuda_quantized_kv_equals_cpu(tmp_path, kv_k, kv_v, hadamard):
    """K/V stored quantized on the device (the CPU's bytes, rotated or not; keys scored by the
    CPU's integer products): prefill and token-by-token logits equal the CPU's, tova (on the
    device) keeps the CPU's positions in every layer at every step, and a sequence's K/V takes
    the CPU's bytes."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=16, weight_type="Q8_0", n_embd=256, n_ff=128, n_head=4, n_head_kv=2, n_layer=2)
    cpu, gpu = _pair(path, policy="tova", kv_size=24, chunk=8, kv_type_k=kv_k, kv_type_v=kv_v,
                     kv_hadamard=hadamard)
    with cpu, gpu:
        ids = _ids(50, cpu.n_vocab, seed=16)
        want, got = cpu.eval(ids[:36], all_logits=True), gpu.eval(ids[:36], all_logits=True)
        tol = TOL * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=tol, rtol=0)
        for t in ids[36:]:
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=tol, rtol=0)
            for layer in range(2):
                assert cpu.kv_positions(layer).tolist() == gpu.kv_positions(layer).tolist(), layer
        assert gpu.kv_bytes_per_seq == cpu.kv_bytes_per_seq


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("policy", ["tova", "h2o", "window"])
@pytest.mark.parametrize("kv_k,kv_v,lo", [("q8_0", "q8_0", "q4_0"), ("f16", "f16", "q4_0/q3_0"),
                                          ("q8_0", "q4_1", "q4_0/q3_0")])
def test_cuda_two_kv_tiers(tmp_path, policy, kv_k, kv_v, lo):
    """Two KV tiers on the device (kv_lo_type, kv_hi_size): slots moved down to the lower types as
    the CPU moves them (the kernel check compares their bytes), the two tiers' scores under one
    softmax and their sums apart. The kept positions and the demotions equal the CPU's at every
    step. The logits agree within a 3-4 bit quantum's effect: the K/V rows entering the
    quantizers differ between the backends in their last float bits (products summed in another
    order), so a value on a rounding boundary may take the neighbouring level."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=17, weight_type="Q8_0", n_embd=256, n_ff=128, n_head=4, n_head_kv=2, n_layer=2)
    cpu, gpu = _pair(path, policy=policy, kv_size=24, chunk=4, kv_type_k=kv_k, kv_type_v=kv_v, kv_lo_type=lo,
                     kv_hi_size=10)
    with cpu, gpu:
        ids = _ids(60, cpu.n_vocab, seed=17)
        want, got = cpu.eval(ids[:30], all_logits=True), gpu.eval(ids[:30], all_logits=True)
        tol = 2e-2 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=tol, rtol=0)
        for t in ids[30:]:
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=tol, rtol=0)
            for layer in range(2):
                assert cpu.kv_positions(layer).tolist() == gpu.kv_positions(layer).tolist(), layer
        assert gpu.stats["demotions"] == cpu.stats["demotions"] > 0
        assert gpu.kv_bytes_per_seq == cpu.kv_bytes_per_seq


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("arch,kv_type,prefill",
                         [(a, t, "exact") for a in ("llama", "qwen2") for t in ("f32", "f16", "q8_0", "q4_0")]
                         + [("gemma3", "f32", "exact"), ("gemma3", "q8_0", "exact"), ("llama", "f32", "chunked"),
                            ("qwen2", "q8_0", "chunked"), ("gemma3", "f32", "chunked")])
def test_cuda_cache_index_positions(tmp_path, arch, kv_type, prefill):
    """Positions "cache_index" on the device: keys stored unrotated (quantized and
    Hadamard-rotated where the type says so) are decoded, rotated back and rotated by their rank
    before each attention, the query by the largest rank (normal and NeoX RoPE; Gemma 3's two
    RoPEs, global and sliding layers): logits equal the CPU's, and the kept positions at every
    step. With quantized keys the logits agree within a
    quantum's effect (see test_cuda_two_kv_tiers: keys unrotated by RoPE meet the quantizer with
    other last bits than the CPU's and may take the neighbouring level). Chunked prefill too: the
    rows of a chunk in one pass, each ranking the keys it sees."""
    path = tmp_path / "m.gguf"
    if arch == "gemma3":
        write_gemma3_gguf(path, seed=18, weight_type="Q8_0", n_embd=256, n_ff=512, head_dim=64)
    else:
        write_llama_gguf(path, seed=18, weight_type="Q8_0", n_embd=256, n_ff=96, n_head=4, n_head_kv=2, arch=arch)
    n_layer = 6 if arch == "gemma3" else 2
    cpu, gpu = _pair(path, policy="tova", kv_size=20, chunk=8, kv_type=kv_type, positions="cache_index",
                     prefill=prefill)
    with cpu, gpu:
        ids = _ids(44, cpu.n_vocab, seed=18)
        want, got = cpu.eval(ids[:28], all_logits=True), gpu.eval(ids[:28], all_logits=True)
        tol = (TOL if kv_type in ("f32", "f16") else 2e-2) * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=tol, rtol=0)
        for t in ids[28:]:
            np.testing.assert_allclose(gpu.eval([t]), cpu.eval([t]), atol=tol, rtol=0)
            for layer in range(n_layer):
                assert cpu.kv_positions(layer).tolist() == gpu.kv_positions(layer).tolist(), layer


@pytest.mark.cuda
@needs_gpu
def test_cuda_refuses_what_it_lacks_by_name(tmp_path):
    """What the CUDA backend does not implement is an error naming it, not a crash: a head size
    beyond its kernels' 256."""
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, seed=10, n_embd=512, n_head=1, n_head_kv=1)
    with pytest.raises(ValueError, match="head_dim"):
        tova.Engine(path, device="cuda", kv_size=16)


def test_cuda_unavailable_is_a_clear_error(tmp_path):
    """Asking for the GPU where there is none (or in a build without CUDA) raises, naming it."""
    if HAVE_GPU:
        pytest.skip("a GPU is usable here: the error path cannot be shown")
    path = tmp_path / "m.gguf"
    write_llama_gguf(path)
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        tova.Engine(path, device="cuda")
    with pytest.raises(ValueError, match="disagree"):
        tova.Engine(path, device="cuda", backend="cpu")
    with pytest.raises((ValueError, RuntimeError), match="(?i)cuda"):
        tova._core._cuda_kernel_check()
    r = subprocess.run([str(binary()), "run", "-m", str(path), "-p", "hi", "-n", "2", "--device", "cuda"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "cuda" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cuda_check_stops_without_a_gpu(tmp_path):
    """bench/cuda_check.sh, the GPU session's one command, stops at once where no GPU answers
    (a build without CUDA, or a driver older than the toolkit, under which every CUDA test would
    skip and look green), saying so in its report; an unknown stage is refused."""
    if HAVE_GPU:
        pytest.skip("a GPU is usable here: the stop cannot be shown")
    import os
    import sys
    script = Path(__file__).resolve().parents[1] / "bench" / "cuda_check.sh"
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(script), "tests", "speed"], capture_output=True, text=True, timeout=120, env=env)
    report = (tmp_path / "report.md").read_text()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no usable GPU" in report and "nothing else runs" in report, report
    assert "## tests" not in report and "## speed" not in report, report
    r = subprocess.run(["bash", str(script), "tests", "nope"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "unknown stage 'nope'" in r.stdout, r.stdout
