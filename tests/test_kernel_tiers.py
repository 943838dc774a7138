"""Every kernel tier this CPU runs, on the real models: the reference checks of
test_generate_reference.py (SmolLM2: Q4_1, Q8_0) and of test_families_reference.py (Gemma 3 and
Qwen2.5-0.5B: Q5_0, Q8_0, Q4_K, Q6_K) pass with the kernels forced to each lower tier
(TOVA_CPU_KERNELS), as they do with the best one in the main run. The kernel unit tests
(test_quant.py) compare the tiers on random data; this checks them end to end.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tova import _core

pytestmark = [pytest.mark.model, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
LOWER_TIERS = [t for t in _core.cpu_tiers() if t != _core.kernel_isa()]


def run_under(tier: str, *args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """(the tier a fresh process reports under TOVA_CPU_KERNELS=tier, pytest *args run under it)"""
    env = {**os.environ, "TOVA_CPU_KERNELS": tier}
    isa = subprocess.run([sys.executable, "-c", "from tova import _core; print(_core.kernel_isa())"],
                         env=env, capture_output=True, text=True)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                           env=env, capture_output=True, text=True, cwd=HERE.parent)
    return isa, tests


@pytest.mark.parametrize("tier", LOWER_TIERS)
def test_smollm2_reference_under_tier(tier, smollm2_path):
    # The scalar tier (plain loops) takes the tokenization, the logits after every prompt and the
    # greedy continuations; its prefill-equals-decode and generate-API checks (half of its time
    # here) test no kernel that those do not: its prompt products call the vec_dot per pair of
    # rows (kernels_cpu.cpp, gemm_by_pairs).
    select = ["-k", "not prefill_equals and not generate_api"] if tier == "scalar" else []
    isa, r = run_under(tier, str(HERE / "test_generate_reference.py"), *select)
    assert isa.stdout.strip() == tier, isa.stderr
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-500:]


@pytest.mark.parametrize("tier", LOWER_TIERS)
def test_family_references_under_tier(tier, gemma3_path, qwen05_path):
    # The tokenizer and layout tests do not touch the kernels; the logits and greedy ones do. The
    # scalar tier (plain loops, 3 minutes of CI for both) takes the logits after every prompt
    # alone: its greedy decoding is SmolLM2's above, and a prompt's products already call the
    # vec_dot a step's take, once per pair of rows (kernels_cpu.cpp, gemm_by_pairs).
    checks = "last_logits_agree" if tier == "scalar" else "(last_logits_agree or greedy_continuations)"
    isa, r = run_under(tier, str(HERE / "test_families_reference.py"), "-k", f"{checks} and not qwen15")
    assert isa.stdout.strip() == tier, isa.stderr
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout, r.stdout[-500:]
