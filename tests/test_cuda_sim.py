"""The CPU simulator of the CUDA device (cuda/sim), on which ``tests/cuda_sim.sh`` runs the CUDA
tests without a GPU: its own checks (tests/cuda_sim/sim_selftest.cu) show that it computes
reductions and shuffles right, records and replays stream captures as CUDA graphs, and reports
what a GPU would refuse or get wrong. Marker ``cuda``;
outside a simulator build (``TOVA_CUDA_SIM``) it is skipped, saying so."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import tova


@pytest.mark.cuda
@pytest.mark.skipif(not tova._core._cuda_simulated(),
                    reason="not a simulator build (TOVA_CUDA_SIM): tests/cuda_sim.sh runs this")
def test_simulator_checks_itself():
    exe = Path(tova._core.__file__).resolve().parent / "bin" / "tova_cuda_sim_selftest"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith("0 failed"), r.stdout + r.stderr
    assert int(last.split()[0]) >= 40, last
