"""``python -m tova``: the package's entry points behave as the native program does."""
from __future__ import annotations

import importlib
import signal
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["tova.__main__", "tova.server.__main__"])
def test_importing_the_entry_modules_runs_nothing(module):
    """Documentation tools and stub checkers import every module: that must not run the CLI
    (which replaced the process) or the server."""
    code = f"import importlib; importlib.import_module({module!r}); print('imported')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "imported\n"


def test_python_m_tova_stops_when_its_reader_goes(smollm2_path):
    """Python ignores SIGPIPE, and an ignored signal stays ignored across exec: the native
    program must get it back, so that `python -m tova run ... | head` stops as `tova run` does."""
    p = subprocess.Popen([sys.executable, "-m", "tova", "run", "-m", str(smollm2_path), "-t", "1",
                          "-n", "100000", "--ignore-eos", "-p", "Once upon a time"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    assert p.stdout.read(5)
    p.stdout.close()
    try:
        rc = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail("python -m tova run went on generating after its reader had gone")
    assert rc == -signal.SIGPIPE
