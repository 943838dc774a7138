"""TOVA_TEST_SHARD (tests/conftest.py): n processes with k = 0..n-1 run a selection once between
them, each test in exactly one, after the marker and keyword filters; a malformed value is
refused. Runs pytest on a small suite of its own with this conftest."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = '''
import pytest

@pytest.mark.parametrize("i", range(7))
def test_plain(i):
    pass

@pytest.mark.slow
@pytest.mark.parametrize("i", range(5))
def test_marked(i):
    pass
'''


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  slow: marked\n")
    return tmp_path


def _collect(where: Path, shard: str | None, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TOVA_TEST_SHARD", None)
    if shard is not None:
        env["TOVA_TEST_SHARD"] = shard
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=where)


def _ids(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_shards_split_the_selection_once(suite):
    every = _ids(_collect(suite, None))
    assert len(every) == 12
    for n in (2, 3, 5):
        parts = [_ids(_collect(suite, f"{k}/{n}")) for k in range(n)]
        assert sorted(sum(parts, [])) == sorted(every)  # each test in exactly one part
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("select", [["-m", "slow"], ["-m", "not slow"], ["-k", "marked and not 3"]])
def test_shards_split_after_the_filters(suite, select):
    kept = _ids(_collect(suite, None, *select))
    assert 2 <= len(kept) < 12
    parts = [_ids(_collect(suite, f"{k}/2", *select)) for k in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(kept)
    assert abs(len(parts[0]) - len(parts[1])) <= 1


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"])
def test_a_malformed_shard_is_refused(suite, bad):
    r = _collect(suite, bad)
    assert r.returncode != 0
    assert "TOVA_TEST_SHARD" in r.stderr + r.stdout, r.stderr
