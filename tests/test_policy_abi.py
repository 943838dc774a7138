"""The policy ABI keeps what cpp/include/tova/policy_plugin.h promises, for a C plugin (loaded by
the CLI) and a Python tova.Policy: on_insert for every token written, select only when slots must
go (every step with TOVA_POLICY_EVERY_STEP / every_step, then with n_evict == 0), on_evict for
every eviction, probs only for a policy that asked for them (and then a distribution per head),
reset_seq / reset_sequence when a sequence is cleared (reset for a version 1 plugin, or a Python
policy that overrides only reset)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import tova

REPO = Path(__file__).resolve().parents[1]
N_LAYER = 30  # SmolLM2-135M
NEEDS_PROBS, EVERY_STEP = 1, 2
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def recorder_lib(tmp_path_factory) -> Path:
    lib = tmp_path_factory.mktemp("plugin") / "librecorder.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-I", str(REPO / "cpp" / "include"),
                    str(REPO / "tests" / "plugins" / "abi_recorder.c"), "-o", str(lib), "-lm"], check=True)
    return lib


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "text.txt"
    p.write_text("The quick brown fox jumps over the lazy dog while the farmer sleeps. " * 40)
    return p


def _run_plugin(smollm2_path, lib, text_file, tmp_path, flags, version, *, windows=3, ctx=64, kv=16):
    out = tmp_path / f"counts-{flags}-{version}.txt"
    from tova._cli import binary

    r = subprocess.run([str(binary()), "perplexity", "-m", str(smollm2_path), "-f", str(text_file),
                        "--policy-plugin", str(lib), "--policy-args", f"{flags}:{version}:{out}",
                        "--kv-size", str(kv), "-c", str(ctx), "--chunks", str(windows), "-t", "1",
                        "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    counts = dict(line.split() for line in out.read_text().splitlines())
    ppl = float(r.stdout.split("PPL = ")[1].split()[0]) if "PPL = " in r.stdout else \
        float(r.stderr.split("PPL = ")[1].split()[0])
    return {k: int(v) for k, v in counts.items()}, ppl


@pytest.mark.parametrize("flags, version", [(0, 2), (NEEDS_PROBS, 2), (EVERY_STEP, 2),
                                            (NEEDS_PROBS | EVERY_STEP, 2), (0, 1)])
def test_c_plugin_abi_promises(smollm2_path, recorder_lib, text_file, tmp_path, flags, version):
    windows, ctx, kv = 3, 64, 16
    c, _ = _run_plugin(smollm2_path, recorder_lib, text_file, tmp_path, flags, version,
                       windows=windows, ctx=ctx, kv=kv)
    written = windows * ctx * N_LAYER
    evicted = windows * (ctx - kv) * N_LAYER
    assert c["inserts"] == written and c["bad_new_slot"] == 0  # on_insert: every token, its slot
    assert c["evict_asked"] == evicted and c["evict_told"] == evicted  # on_evict: every eviction
    if flags & EVERY_STEP:
        assert c["selects"] == written and c["selects_zero"] == windows * kv * N_LAYER
    else:
        assert c["selects"] == evicted and c["selects_zero"] == 0
    if flags & NEEDS_PROBS:
        assert c["probs_null"] == 0 and c["probs_set"] == c["selects"] and c["probs_bad_sum"] == 0
    else:
        assert c["probs_set"] == 0 and c["probs_null"] == c["selects"]
    # One clear per window: reset_seq(0) for version 2, reset() for a version 1 plugin.
    assert (c["reset_seqs"], c["resets"]) == ((windows, 0) if version == 2 else (0, windows))
    assert c["bad_seq"] == 0


def test_c_plugin_probs_flag_changes_nothing_but_the_view(smollm2_path, recorder_lib, text_file, tmp_path):
    """Skipping the probabilities for a policy that does not read them leaves the text's
    perplexity exactly as it was."""
    _, a = _run_plugin(smollm2_path, recorder_lib, text_file, tmp_path, 0, 2)
    _, b = _run_plugin(smollm2_path, recorder_lib, text_file, tmp_path, NEEDS_PROBS | EVERY_STEP, 2)
    assert a == b


class Recorder(tova.Policy):
    """Oldest-first eviction that counts the engine's calls (layer 0 only)."""

    name = "py-recorder"

    def __init__(self, needs_probs: bool, every_step: bool) -> None:
        self.needs_probs = needs_probs
        self.every_step = every_step
        self.n = dict(inserts=0, selects=0, selects_zero=0, evict_asked=0, evict_told=0, probs=0,
                      no_probs=0, bad_sum=0, resets=0)
        self.reset_seqs: list = []
        self.seqs_seen: set = set()

    def on_insert(self, layer, slot, view):
        if layer == 0:
            self.n["inserts"] += 1
            assert slot == view.new_slot and view.pos[slot] == view.t

    def select(self, layer, view):
        if layer == 0:
            self.n["selects"] += 1
            self.n["selects_zero"] += view.n_evict == 0
            self.n["evict_asked"] += view.n_evict
            self.seqs_seen.add(view.seq)
            try:
                rows = view.probs.sum(axis=1)
                self.n["probs"] += 1
                self.n["bad_sum"] += int(np.any(np.abs(rows - 1) > 1e-3))
            except ValueError:
                self.n["no_probs"] += 1
        if view.n_evict == 0:
            return [0, 0, -5]  # ignored: nothing must go
        pos = view.pos.astype(np.int64).copy()
        pos[(pos < 0) | (view.protect != 0)] = np.iinfo(np.int64).max
        return np.argsort(pos, kind="stable")[: view.n_evict].tolist()

    def on_evict(self, layer, slots, view):
        if layer == 0:
            self.n["evict_told"] += len(slots)

    def reset(self):
        self.n["resets"] += 1


class SeqRecorder(Recorder):
    def reset_sequence(self, seq):
        self.reset_seqs.append(seq)


@pytest.mark.parametrize("needs_probs, every_step", [(False, False), (True, False), (False, True),
                                                     (True, True)])
def test_python_policy_abi_promises(smollm2_path, needs_probs, every_step):
    kv = 16
    p = SeqRecorder(needs_probs, every_step)
    with tova.Engine(smollm2_path, policy=p, kv_size=kv, n_seq=2, n_threads=1) as e:
        ids = e.tokenize("one two three four five six seven eight nine ten " * 4)
        n = len(ids)
        e.eval(ids, seq=0)
        e.eval(ids[:20], seq=1)
        e.reset(1)
        e.reset(0)
    written, evicted = n + 20, (n - kv) + (20 - kv)
    c = p.n
    assert c["inserts"] == written
    assert c["evict_asked"] == evicted and c["evict_told"] == evicted
    if every_step:
        assert c["selects"] == written and c["selects_zero"] == 2 * kv
    else:
        assert c["selects"] == evicted and c["selects_zero"] == 0
    if needs_probs:
        assert c["probs"] == c["selects"] and c["no_probs"] == 0 and c["bad_sum"] == 0
    else:
        assert c["probs"] == 0 and c["no_probs"] == c["selects"]
    assert p.seqs_seen == {0, 1}
    assert p.reset_seqs == [1, 0] and c["resets"] == 0  # reset_sequence overrides reset


def test_python_policy_with_only_reset_gets_reset(smollm2_path):
    p = Recorder(False, False)
    with tova.Engine(smollm2_path, policy=p, kv_size=16, n_seq=2, n_threads=1) as e:
        e.eval(e.tokenize("a b c d e f g h i j k l m n o p q r s t u v w x y z"), seq=1)
        e.reset(1)
        e.reset(0)
        assert p.n["resets"] == 2
        # A generation in a sequence starts from an empty one: the policy hears of it.
        e.generate("Hi", max_tokens=2, temperature=0)
        assert p.n["resets"] >= 3
