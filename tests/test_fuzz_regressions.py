"""The fuzz targets' inputs replayed in the normal suite (no libFuzzer needed): the seed corpus
and every input a fuzzing run failed on (tests/fuzz/regressions/TARGET/, kept after the fix),
each through the target's own entry point linked with tests/fuzz/replay_main.cpp. A regression
crashes the replay (a non-zero exit, a signal) instead of passing."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("model_load", "tokenizer", "chat", "policy")


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory) -> Path:
    """Where the fuzz_replay_* binaries are: beside TOVA_CPP_TESTS (.ci/run builds them there),
    else built here."""
    env = os.environ.get("TOVA_CPP_TESTS")
    if env and all((Path(env).parent / f"fuzz_replay_{t}").is_file() for t in TARGETS):
        return Path(env).parent
    build = tmp_path_factory.mktemp("cmake-replay")
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DTOVA_BUILD_TESTS=ON"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", *[f"fuzz_replay_{t}" for t in TARGETS]],
                   check=True, capture_output=True)
    return build


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_inputs_replay(replay_dir, target):
    inputs = [d for d in (REPO / "tests" / "fuzz" / "corpus" / target, REPO / "tests" / "fuzz" / "regressions" / target)
              if d.is_dir()]
    n = sum(1 for d in inputs for f in d.iterdir() if f.is_file())
    assert n > 0, f"no inputs for {target}"
    r = subprocess.run([str(replay_dir / f"fuzz_replay_{target}"), *map(str, inputs)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert f"replayed {n} inputs" in r.stdout
