"""Locating and running the native ``tova`` program that ships inside the package."""
from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import _core


def binary() -> Path:
    """Path of the ``tova`` executable built with this package (next to the compiled module),
    else the one on PATH."""
    here = Path(_core.__file__).resolve().parent / "bin" / "tova"
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which("tova")
    if found:
        return Path(found)
    raise FileNotFoundError("the tova executable was not found next to tova._core nor on PATH")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tova ARGS`` runs ``tova ARGS`` (replacing this process); ``serve`` runs here."""
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":  # the HTTP server is Python (tova[server])
        from .server.cli import main as serve

        return serve(args[1:])
    exe = str(binary())
    env = dict(os.environ)
    # The program asks this interpreter to resolve model names (tova.models).
    env.setdefault("TOVA_PYTHON", sys.executable)
    # Python starts with SIGPIPE (and SIGXFSZ) ignored, and an ignored signal stays ignored
    # across exec: `python -m tova run ... | head` would then generate to the end.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    os.execve(exe, [exe, *args], env)
    return 0  # not reached
