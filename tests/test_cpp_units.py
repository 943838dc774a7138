"""The C++ unit-test binary (cpp/tests/test_main.cpp), built by CMake without Python: proves the
core builds standalone and runs its own unit tests. .ci/run builds it first and points
TOVA_CPP_TESTS at it; otherwise this test configures and builds it (a few minutes)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _binary(tmp_path_factory) -> Path:
    env = os.environ.get("TOVA_CPP_TESTS")
    if env and Path(env).is_file():
        return Path(env)
    build = tmp_path_factory.mktemp("cmake-build")
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-DTOVA_BUILD_TESTS=ON"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "tova_tests"], check=True,
                   capture_output=True)
    return build / "tova_tests"


def test_cpp_unit_tests(tmp_path_factory):
    r = subprocess.run([str(_binary(tmp_path_factory))], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    passed, failed = int(last.split()[0]), int(last.split()[2])
    assert failed == 0 and passed > 100, last
